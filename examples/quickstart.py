"""Quickstart: from a config file to "run this project on one H100", end to end.

1. run a command over SSH on a plain host;
2. load the dispatch config and solve for ``1x h100``;
3. pack this project (``git archive`` of HEAD) and submit it to the partition the solver
   chose, with the GPU type it chose;
4. wait for the job and print its accounting line and its output.

Against the testbed (what `make demo` does):

    eval "$(scripts/testbed env)" && python examples/quickstart.py

Against your own machines: write a config like examples/dispatch.yaml naming hosts from
your ~/.ssh/config (or the file named by DISPATCH_SSH_CONFIG), then

    DISPATCH_CONFIG=my-dispatch.yaml DISPATCH_TESTBED_PLAIN=mybox python examples/quickstart.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dispatch
from dispatch import HardwareRequest, SlurmJob

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main() -> int:
    plain = os.environ.get("DISPATCH_TESTBED_PLAIN", "plain")
    config_path = os.environ.get("DISPATCH_CONFIG", str(HERE / "testbed.yaml"))
    print(f"ssh config: {os.environ.get('DISPATCH_SSH_CONFIG', '~/.ssh/config')}")

    # 1. A command over SSH: a frozen RunResult, never an exception for a remote failure.
    result = dispatch.run("echo hello from $(hostname) as $(whoami)", plain, timeout=30)
    print(f"[{plain}] exit {result.returncode}: {result.stdout.strip() or result.stderr.strip()}")
    if not result.ok:
        return 1

    # 2. Where can one H100 run? The solver walks the hosts in priority order and asks
    #    SLURM which partition carries that GRES type (and, if asked, what is free).
    config = dispatch.load_dispatch_config(config_path)
    solved = dispatch.solve_or_raise(
        HardwareRequest("h100", 1), config, check_availability=True
    )
    assert solved.result is not None and solved.host_name is not None
    host = solved.result.ssh
    print(
        f"[solve] 1x h100 -> host {solved.host_name} (ssh {host}), "
        f"partition {solved.partition}, gres type {solved.result.gres_type}"
    )
    if not solved.is_slurm:
        print("[solve] the solver chose a plain host; this example submits to SLURM")
        return 1

    # 3. Ship this project inside the job: its tracked files are extracted on the node
    #    and the command runs in that directory.
    job = SlurmJob(
        name="quickstart",
        command=(
            "echo node=$SLURMD_NODENAME gpus=$CUDA_VISIBLE_DEVICES; "
            "echo shipped files: $(find . -type f | wc -l); ls src/dispatch | head -5"
        ),
        partition=solved.partition,
        gpus_per_node=1,
        gpu_type=solved.result.gres_type,
        time="00:05:00",
        output="dispatch-quickstart-%j.out",
    )
    submitted = dispatch.submit_packed(job, host, repo_path=str(REPO), timeout=120)
    if submitted.job_id is None:
        print(f"[{host}] submit failed: {submitted.ssh_result.stderr.strip()}")
        return 1
    print(f"[{host}] submitted job {submitted.job_id} (packed {REPO.name}, HEAD)")

    # 4. Wait (one shared squeue poller per host) and print what happened.
    info = dispatch.wait(submitted.job_id, host, poll_interval=1, timeout=300)
    main_row = info.main
    if main_row is None:
        print(f"[{host}] no sacct record for job {submitted.job_id}")
        return 1
    print(
        f"[{host}] job {main_row.job_id} {main_row.name} partition={main_row.partition} "
        f"state={main_row.state} exit={main_row.exit_code} elapsed={main_row.elapsed} "
        f"nodes={main_row.nodelist}"
    )
    out = dispatch.run(["cat", f"dispatch-quickstart-{submitted.job_id}.out"], host)
    for line in out.stdout.splitlines():
        print(f"[{host}] job output | {line}")
    return 0 if main_row.state == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
