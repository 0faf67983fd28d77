"""A three-stage SLURM pipeline chained with ``afterok`` dependencies, waited on concurrently.

    prepare ──> train ──> evaluate
         └────> lint   (a side branch that also needs prepare)

All four jobs are submitted at once; SLURM starts each one only after its parent
COMPLETED (``--dependency=afterok:ID``). The script then waits for every job at the same
time, from threads (the blocking API is thread-safe and all waits share one squeue poller
per host), and prints each final state as it arrives.

Usage::

    python examples/job_pipeline.py                   # host $DISPATCH_TESTBED_SLURM or "slurm"
    python examples/job_pipeline.py --host mycluster --partition cpu
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed

import dispatch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("DISPATCH_TESTBED_SLURM", "slurm"))
    parser.add_argument("--partition", default=os.environ.get("DISPATCH_TESTBED_CPU_PARTITION"))
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between queue checks")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after (s)")
    args = parser.parse_args()

    # A scratch directory in the remote home: the stages hand data to each other through it.
    run_dir = f"dispatch-pipeline-{uuid.uuid4().hex[:8]}"
    mkdir = dispatch.run(["mkdir", "-p", run_dir], args.host)
    if not mkdir.ok:
        print(f"cannot reach {args.host}: {mkdir.stderr.strip()}")
        return 1
    home = dispatch.run("pwd", args.host).stdout.strip()
    workdir = f"{home}/{run_dir}"

    def job(name: str, command: str, after: int | None = None) -> dispatch.SlurmJob:
        return dispatch.SlurmJob(
            name=f"pipeline-{name}",
            command=command,
            partition=args.partition,
            time="5:00",
            workdir=workdir,
            output=f"{workdir}/{name}.out",
            dependency=f"afterok:{after}" if after is not None else None,
        )

    def submit(j: dispatch.SlurmJob) -> int:
        result = dispatch.submit(j, args.host)
        if result.job_id is None:
            raise SystemExit(f"submit {j.name} failed: {result.ssh_result.stderr.strip()}")
        print(f"submitted {j.name:<18} job {result.job_id}")
        return result.job_id

    start = time.monotonic()
    # Each stage fails if its input is missing, so running out of order would show.
    total = "awk '{s+=$1} END {print s}' data.txt > model.txt"
    prepare = submit(job("prepare", "seq 1 100 > data.txt"))
    train = submit(job("train", f"test -s data.txt && {total}", prepare))
    evaluate = submit(
        job("evaluate", 'test -s model.txt && echo "model says $(cat model.txt)"', train)
    )
    lint = submit(job("lint", 'test -s data.txt && echo "$(wc -l < data.txt) lines"', prepare))
    jobs = {"prepare": prepare, "train": train, "evaluate": evaluate, "lint": lint}

    # Wait for all four at once; report in the order they finish.
    states: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {
            pool.submit(dispatch.wait, job_id, args.host, args.poll, args.timeout): name
            for name, job_id in jobs.items()
        }
        for future in as_completed(futures):
            name = futures[future]
            info = future.result()
            state = info.main.state if info.main else "UNKNOWN"
            states[name] = state
            took = time.monotonic() - start
            print(f"{name:<9} job {jobs[name]} finished: {state} after {took:.1f}s")

    for name in ("evaluate", "lint"):
        result = dispatch.run(["cat", f"{run_dir}/{name}.out"], args.host)
        print(f"{name} output: {result.stdout.strip()}")
    dispatch.run(["rm", "-rf", run_dir], args.host)
    ok = all(s.startswith("COMPLETED") for s in states.values())
    print("pipeline", "succeeded" if ok else "failed")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
