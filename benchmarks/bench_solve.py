"""Solving across 10 plain hosts with live availability: concurrent checks vs one by one.

Needs the testbed (`scripts/testbed up`; `eval "$(scripts/testbed env)"`) and the fake
nvidia-smi the integration tests install (run tests/integration/test_solve_testbed.py
once). Prints the median wall time of each approach and their ratio; no pass/fail.

    python benchmarks/bench_solve.py [--hosts 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import dispatch.aio as dx
from dispatch.placement import (
    ClusterConfig,
    DispatchConfig,
    HardwareRequest,
    PlainHostConfig,
    SshAvailability,
    solve_or_raise,
)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    fleet = [f"fleet{i:02d}" for i in range(1, args.hosts + 1)]
    cfg = DispatchConfig(
        clusters={"t": ClusterConfig("/tmp/r", "/tmp/w")},
        hosts={h: PlainHostConfig(h, "t", chips={"h200": 1}) for h in fleet},
    )
    request = HardwareRequest("h200", 1)
    # Priority puts the hosts in reverse order; each has one free (fake) H200.
    worst = DispatchConfig(clusters=cfg.clusters, hosts=cfg.hosts, priority=fleet[::-1])
    async with dx.Pool():
        await solve_or_raise(request, cfg, check_availability=True)  # connect everything
        conc, seq = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            await solve_or_raise(request, worst, check_availability=True)
            conc.append(time.perf_counter() - t)
            t = time.perf_counter()
            # The naive solver: check hosts one by one (all of them, as when only the last
            # one in priority order has a free GPU).
            for name in worst.ordered_hosts():
                await SshAvailability().plain_free_gpus(worst.hosts[name].ssh, 30.0)
            seq.append(time.perf_counter() - t)
    c, s = statistics.median(conc), statistics.median(seq)
    print(f"hosts={args.hosts} rounds={args.rounds}")
    print(f"concurrent solve (dispatch): {c * 1000:8.1f} ms")
    print(f"one host at a time:          {s * 1000:8.1f} ms")
    print(f"ratio sequential/concurrent: {s / c:8.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
