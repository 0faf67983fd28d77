"""One event stream per cluster: N jobs watched on one host cost ONE squeue per poller tick.

    python benchmarks/bench_watch.py [--jobs 500] [--seconds 30] [--interval 2] [--json]

Needs the testbed. Submits ``--jobs`` held jobs (``sbatch --hold``, one remote loop), then
for ``--seconds`` keeps on them, in one pool: one `watch` of all of them, one `watch` per
job, and one `wait` per job. It counts the squeue calls the shared poller makes (its
counters, and every ``run`` of squeue) and times one tick's squeue. For comparison it
times per-job polling as submitit-style job handles that each ask about their own job
(``squeue -j ID`` per job per tick) would do, on a sample of ``--sample`` jobs, and
extrapolates to all. Then it cancels the jobs in one ``scancel`` and times how long
until every wait has returned CANCELLED and every watch has ended. The jobs are
cancelled at the end whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


from testbed_env import load_testbed_env  # noqa: E402  (benchmarks/ is on sys.path)

load_testbed_env("DISPATCH_TESTBED_SLURM")


import dispatch.aio as dx  # noqa: E402
from dispatch.slurm import JobEvent, hub, poller, watch  # noqa: E402
from dispatch.slurm.events import WATCH_SQUEUE_ARGS  # noqa: E402
from dispatch.ssh import run as ssh_run  # noqa: E402

HOST = os.environ.get("DISPATCH_TESTBED_SLURM", "slurm")
PARTITION = os.environ.get("DISPATCH_TESTBED_CPU_PARTITION", "cpu")


async def _submit_held(n: int) -> list[int]:
    script = (
        f"for i in $(seq 1 {n}); do sbatch --parsable --hold --partition={shlex.quote(PARTITION)}"
        " --job-name=bench-watch --output=/dev/null --wrap=true || exit 1; done"
    )
    res = await dx.run(script, HOST, timeout=600)
    if not res.ok:
        raise SystemExit(f"submitting {n} held jobs failed: {res.stderr.strip()}")
    ids = [int(line.split(";")[0]) for line in res.stdout.split()]
    assert len(ids) == n, res.stdout
    return ids


async def _cancel(ids: list[int]) -> None:
    for i in range(0, len(ids), 200):
        await dx.run(["scancel", *map(str, ids[i : i + 200])], HOST, timeout=120)


async def _per_job_tick(ids: list[int]) -> float:
    """Wall seconds for one per-job squeue each (all at once, as independent handles)."""
    t = time.perf_counter()
    results = await asyncio.gather(*[
        dx.run(["squeue", "--noheader", "--states=all", "-j", str(j), "-o", "%i %T"], HOST)
        for j in ids
    ])
    assert all(r.ok for r in results), [r.stderr for r in results if not r.ok][:1]
    return time.perf_counter() - t


async def _one_tick(ids: list[int]) -> float:
    """Wall seconds of the shared poller's squeue for every job at once."""
    t = time.perf_counter()
    res = await dx.run([*WATCH_SQUEUE_ARGS, "--states=all",
                        "--jobs=" + ",".join(map(str, ids))], HOST)
    assert res.ok and len(res.stdout.splitlines()) == len(ids), res.stderr
    return time.perf_counter() - t


async def main(args: argparse.Namespace) -> dict[str, object]:
    ids = await _submit_held(args.jobs)
    report: dict[str, object] = {"jobs": len(ids), "interval_s": args.interval,
                                 "seconds": args.seconds}
    try:
        stats = poller.poller_stats(HOST)
        squeue_runs = 0
        real_run = ssh_run  # what the poller calls (dispatch.ssh.run)

        async def counting(cmd: object, host: str, **kw: object) -> object:
            nonlocal squeue_runs
            if isinstance(cmd, list) and cmd and cmd[0] == "squeue":
                squeue_runs += 1
            return await real_run(cmd, host, **kw)  # type: ignore[arg-type]

        setattr(hub, "run", counting)  # noqa: B010  (count the poller's squeue runs)
        events: list[JobEvent] = []

        async def watch_all() -> None:
            async for e in watch(HOST, ids, poll_interval=args.interval):
                events.append(e)

        async def watch_one(j: int) -> int:
            n = 0
            async for _ in watch(HOST, [j], poll_interval=args.interval):
                n += 1
            return n

        t0 = time.perf_counter()
        calls0, runs0 = stats.squeue_calls, squeue_runs
        tasks: list[asyncio.Future[object]] = [asyncio.ensure_future(watch_all())]
        tasks += [asyncio.ensure_future(watch_one(j)) for j in ids]
        waits = [asyncio.ensure_future(dx.wait(j, HOST, poll_interval=args.interval))
                 for j in ids]
        await asyncio.sleep(args.seconds)
        elapsed = time.perf_counter() - t0
        calls = stats.squeue_calls - calls0
        report["watchers"] = len(tasks)
        report["waits"] = len(waits)
        report["squeue_calls"] = calls
        report["squeue_runs_counted"] = squeue_runs - runs0
        report["squeue_per_minute"] = round(calls * 60 / elapsed, 1)
        report["first_sight_events"] = sum(1 for e in events if e.old_state is None)
        tick = [await _one_tick(ids) for _ in range(3)]
        report["tick_squeue_ms"] = round(statistics.median(tick) * 1000, 1)
        sample = ids[: args.sample]
        per_job = await _per_job_tick(sample)
        report["per_job_sample"] = len(sample)
        report["per_job_tick_s_extrapolated"] = round(per_job * len(ids) / len(sample), 2)
        report["per_job_squeue_per_minute"] = round(len(ids) * 60 / args.interval, 1)
        t1 = time.perf_counter()
        await _cancel(ids)
        infos = await asyncio.wait_for(asyncio.gather(*waits), 300)
        await asyncio.wait_for(asyncio.gather(*tasks), 300)
        report["all_over_after_cancel_s"] = round(time.perf_counter() - t1, 1)
        report["waits_cancelled"] = sum(
            1 for i in infos if i.main is not None and i.main.state == "CANCELLED")
        report["squeue_calls_total"] = stats.squeue_calls - calls0
        report["sacct_calls_total"] = stats.sacct_calls
        setattr(hub, "run", real_run)  # noqa: B010
    finally:
        await _cancel(ids)
    return report


def _print(r: dict[str, object]) -> None:
    print(f"{r['jobs']} held jobs on {HOST}: {r['watchers']} watches + {r['waits']} waits, "
          f"poll interval {r['interval_s']} s, {r['seconds']} s")
    print(f"  shared poller: {r['squeue_calls']} squeue calls "
          f"(counted runs: {r['squeue_runs_counted']}) = {r['squeue_per_minute']}/min; "
          f"one tick's squeue for all jobs: {r['tick_squeue_ms']} ms")
    print(f"  per-job polling: {r['per_job_squeue_per_minute']} squeue/min; one tick "
          f"({r['jobs']} calls, extrapolated from {r['per_job_sample']}): "
          f"{r['per_job_tick_s_extrapolated']} s")
    print(f"  after one scancel: all {r['waits_cancelled']} waits CANCELLED and every watch "
          f"over in {r['all_over_after_cancel_s']} s "
          f"(squeue {r['squeue_calls_total']}, sacct {r['sacct_calls_total']} in all)")


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--sample", type=int, default=50, help="per-job polls actually timed")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    async def run() -> dict[str, object]:
        async with dx.Pool():
            return await main(args)

    report = asyncio.run(run())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)


if __name__ == "__main__":
    cli()
