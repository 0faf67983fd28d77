"""Quickstart: run a command over SSH, then submit a SLURM job and wait for it.

Against the testbed (what `make demo` does):

    eval "$(scripts/testbed env)" && python examples/quickstart.py

Against your own machines: point it at two aliases from your ~/.ssh/config (or the file
named by DISPATCH_SSH_CONFIG), a plain host and a SLURM login node:

    DISPATCH_TESTBED_PLAIN=mybox DISPATCH_TESTBED_SLURM=mycluster python examples/quickstart.py
"""

from __future__ import annotations

import os
import sys

import dispatch
from dispatch import SlurmJob


def main() -> int:
    plain = os.environ.get("DISPATCH_TESTBED_PLAIN", "plain")
    slurm = os.environ.get("DISPATCH_TESTBED_SLURM", "slurm")
    partition = os.environ.get("DISPATCH_TESTBED_CPU_PARTITION")  # None: the default one
    config = os.environ.get("DISPATCH_SSH_CONFIG", "~/.ssh/config")
    print(f"ssh config: {config}")

    # 1. A command over SSH: a frozen RunResult, never an exception for a remote failure.
    result = dispatch.run("echo hello from $(hostname) as $(whoami)", plain, timeout=30)
    print(f"[{plain}] exit {result.returncode}: {result.stdout.strip() or result.stderr.strip()}")
    if not result.ok:
        return 1

    # 2. A SLURM job: submit, wait (polling sacct), print its accounting line.
    job = SlurmJob(
        name="quickstart",
        command="echo running on $SLURMD_NODENAME; sleep 1",
        partition=partition,
        time="00:05:00",
    )
    submitted = dispatch.submit(job, slurm, timeout=60)
    if submitted.job_id is None:
        print(f"[{slurm}] submit failed: {submitted.ssh_result.stderr.strip()}")
        return 1
    print(f"[{slurm}] submitted job {submitted.job_id}")

    info = dispatch.wait(submitted.job_id, slurm, poll_interval=1, timeout=300)
    main_row = info.main
    if main_row is None:
        print(f"[{slurm}] no sacct record for job {submitted.job_id}")
        return 1
    print(
        f"[{slurm}] job {main_row.job_id} {main_row.name} partition={main_row.partition} "
        f"state={main_row.state} exit={main_row.exit_code} elapsed={main_row.elapsed} "
        f"nodes={main_row.nodelist}"
    )
    return 0 if main_row.state == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
