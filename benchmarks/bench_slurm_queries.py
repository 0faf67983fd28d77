"""Round trips of the SLURM queries over the slow link: each should be ONE remote command.

    python benchmarks/bench_slurm_queries.py [--repeat 5]

Needs the testbed. For each query: median wall time on loopback (``slurm``) and through
the delaying relay (``wan-slurm``), and the extra round trips ``(wan - loopback) / RTT``.
``job_info (running), sequential`` replays what `job_info` did before it asked once: sacct,
then squeue, one after the other. A running job (a 1-CPU ``sleep``) and a held job are
submitted for the measurement and cancelled at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


from testbed_env import load_testbed_env  # noqa: E402  (benchmarks/ is on sys.path)

load_testbed_env("DISPATCH_TESTBED_WAN_SLURM")


import dispatch.aio as dx  # noqa: E402
from dispatch.slurm import SlurmJob, query  # noqa: E402
from dispatch.slurm.arrays import job_ref  # noqa: E402

RTT_MS = float(os.environ["DISPATCH_TESTBED_RTT_MS"])
NETS = {"loopback": os.environ.get("DISPATCH_TESTBED_SLURM", "slurm"),
        "wan": os.environ["DISPATCH_TESTBED_WAN_SLURM"]}
NODES = os.environ.get("DISPATCH_TESTBED_NODES", "node1 node2 node3 node4").split()[:4]
GPU_PARTITION = os.environ.get("DISPATCH_TESTBED_GPU_PARTITION", "gpu")


async def amedian(fn: Callable[[], Awaitable[object]], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


async def bench(n: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    async with dx.Pool():
        slurm = NETS["loopback"]
        sub = await dx.run(["sbatch", "--parsable", "--output=/dev/null", "--time=10",
                            "--job-name=bench-queries", "--wrap=sleep 600"], slurm)
        held = await dx.run(["sbatch", "--parsable", "--output=/dev/null", "--hold",
                             "--job-name=bench-queries", "--wrap=true"], slurm)
        assert sub.ok and held.ok, (sub.stderr, held.stderr)
        running, held_id = int(sub.stdout.split(";")[0]), int(held.stdout.split(";")[0])
        try:
            await dx.wait_until_running(running, slurm, poll_interval=0.5, timeout=120)
            for net, host in NETS.items():
                async def job_info(host: str = host) -> None:
                    info = await dx.job_info(running, host)
                    assert info.main is not None and not info.main.is_finished

                async def job_info_sequential(host: str = host) -> None:
                    ref = job_ref(running)
                    await query.sacct_jobs([ref], host)
                    await query.squeue_jobs([ref], host)

                async def nodes_info(host: str = host) -> None:
                    assert len(await dx.nodes_info(NODES, host)) == len(NODES)

                async def gpus(host: str = host) -> None:
                    await dx.available_gpus(GPU_PARTITION, host)

                async def test_only(host: str = host) -> None:
                    job = SlurmJob(name="b", command="true", partition=GPU_PARTITION, gpus=1)
                    assert (await dx.estimate_start(job, host)).ok

                async def pending(host: str = host) -> None:
                    assert (await dx.estimate_start(held_id, host)).reason is not None

                calls = {
                    "job_info (running)": job_info,
                    "job_info (running), sequential": job_info_sequential,
                    "nodes_info (4 nodes)": nodes_info,
                    "available_gpus": gpus,
                    "estimate_start (job)": test_only,
                    "estimate_start (pending id)": pending,
                }
                await dx.run("true", host)
                for name, fn in calls.items():
                    await fn()
                    ms = await amedian(fn, n)
                    results.setdefault(name, {})[net] = ms
                    print(f"  {name:<32} {net:<9} {ms:8.1f} ms", file=sys.stderr, flush=True)
        finally:
            await dx.cancel(running, slurm)
            await dx.cancel(held_id, slurm)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="repetitions per call (median)")
    args = ap.parse_args()
    results = asyncio.run(bench(args.repeat))
    print(f"Round trip {RTT_MS:g} ms; median of {args.repeat}.\n")
    print("| query | loopback ms | wan ms | extra RTs |\n|---|---|---|---|")
    for name, r in results.items():
        lo, wan = r["loopback"], r["wan"]
        print(f"| {name} | {lo:.0f} | {wan:.0f} | {(wan - lo) / RTT_MS:.1f} |")


if __name__ == "__main__":
    main()
