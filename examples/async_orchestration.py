"""Submit 20 SLURM jobs concurrently and wait for all of them, with ``dispatch.aio``.

The pattern for orchestration code that already runs an event loop: one ``Pool`` scoped
with ``async with``, a ``TaskGroup`` (or ``asyncio.gather``) for fan-out, a semaphore to
bound how many submissions are in flight, an overall deadline (``asyncio.timeout``), and
cleanup that cancels whatever was submitted if anything fails, the deadline passes or the
script is interrupted.

Usage::

    python examples/async_orchestration.py              # 20 jobs on $DISPATCH_TESTBED_SLURM
    python examples/async_orchestration.py --jobs 100 --host mycluster --partition cpu
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter

import dispatch.aio as dx


async def submit_all(args: argparse.Namespace, submitted: list[int]) -> list[int]:
    """Submit ``args.jobs`` jobs, at most ``args.concurrency`` at a time; return their ids."""
    limit = asyncio.Semaphore(args.concurrency)

    async def submit_one(i: int) -> int:
        job = dx.SlurmJob(
            name=f"orchestrated-{i:03d}",
            command=f"echo job {i} on $(hostname); sleep {args.sleep}",
            partition=args.partition,
            time="5:00",
        )
        async with limit:
            result = await dx.submit(job, args.host)
        if result.job_id is None:
            raise RuntimeError(f"job {i} was not submitted: {result.ssh_result.stderr.strip()}")
        submitted.append(result.job_id)
        return result.job_id

    # A TaskGroup cancels the remaining submissions as soon as one fails.
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(submit_one(i)) for i in range(args.jobs)]
    return [t.result() for t in tasks]


async def orchestrate(args: argparse.Namespace) -> int:
    submitted: list[int] = []
    # A pool of our own: its connections close when the block ends.
    async with dx.Pool(max_connections_per_host=2):
        start = time.monotonic()
        try:
            async with asyncio.timeout(args.timeout):
                job_ids = await submit_all(args, submitted)
                print(f"submitted {len(job_ids)} jobs in {time.monotonic() - start:.1f}s")
                # All waits share one squeue poller per host: one squeue call per interval,
                # however many jobs are waited on.
                infos = await asyncio.gather(
                    *(dx.wait(j, args.host, poll_interval=args.poll) for j in job_ids)
                )
        except (TimeoutError, ExceptionGroup, asyncio.CancelledError) as exc:
            print(f"giving up ({exc!r}); cancelling {len(submitted)} submitted jobs")
            await asyncio.gather(*(dx.cancel(j, args.host) for j in submitted))
            return 1

    states = Counter((i.main.state if i.main else "UNKNOWN") for i in infos)
    summary = ", ".join(f"{n} {s}" for s, n in states.most_common())
    print(f"{len(job_ids)} jobs finished in {time.monotonic() - start:.1f}s: {summary}")
    return 0 if states.get("COMPLETED", 0) == len(job_ids) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("DISPATCH_TESTBED_SLURM", "slurm"))
    parser.add_argument("--partition", default=os.environ.get("DISPATCH_TESTBED_CPU_PARTITION"))
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds each job sleeps")
    parser.add_argument("--concurrency", type=int, default=8, help="submissions in flight")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between queue checks")
    parser.add_argument("--timeout", type=float, default=600.0, help="overall deadline (s)")
    return asyncio.run(orchestrate(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
