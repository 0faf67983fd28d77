"""Soak: the long variants of tests/integration/test_load.py, against the testbed sshd.

    python benchmarks/soak.py              # 1,000 / 200 in flight, 10,000 runs, 1,000 copies
    python benchmarks/soak.py --scale 0.1  # a tenth of each

Phases (one process, logged in as the non-root test user):
  1. fan-out: N commands spread over the fleet aliases with M in flight (dispatch.aio.run
     on one scoped Pool): failures, peak connections / channels per host vs the caps.
  2. sequential: N blocking dispatch.run calls on one host (default pool, background loop):
     open fds, pool connections and RSS before/after, calls per second.
  3. copies: N dispatch.copy_to of a 64 KiB file on one host: same figures.
Prints a table; exits non-zero if any call failed, fds or connections grew, a cap was
exceeded or RSS grew by 10 MB or more.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dispatch
import dispatch.aio as dx
from dispatch._blocking import run_blocking
from dispatch.ssh import current_pool

ROOT = Path(__file__).resolve().parent.parent
RSS_LIMIT_KIB = 10 * 1024


def _testbed_env() -> dict[str, str]:
    out = subprocess.run([str(ROOT / "scripts" / "testbed"), "env"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    env: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export "):].partition("=")
            parsed = shlex.split(v)
            env[k] = parsed[0] if parsed else ""
    return env


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


async def fanout(n: int, inflight: int, hosts: list[str], max_conn: int,
                 max_chan: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(inflight)
    rss0 = rss_kib()

    async def one(i: int) -> bool:
        async with sem:
            r = await dx.run(["echo", str(i)], hosts[i % len(hosts)], timeout=300)
            return r.ok and r.stdout == f"{i}\n"

    t0 = time.perf_counter()
    async with dx.Pool(max_connections_per_host=max_conn,
                       max_channels_per_connection=max_chan) as pool:
        ok = await asyncio.gather(*(one(i) for i in range(n)))
        stats = pool.stats()
    dt = time.perf_counter() - t0
    peak_conn = max(s.peak_connections for s in stats.values())
    peak_chan = max(s.peak_channels_per_connection for s in stats.values())
    return {
        "phase": f"fan-out {n} cmds / {len(hosts)} hosts / {inflight} in flight",
        "calls": n, "failures": n - sum(ok), "seconds": dt,
        "detail": f"peak conns/host {peak_conn} (cap {max_conn}), peak chans/conn "
                  f"{peak_chan} (cap {max_chan}), RSS +{rss_kib() - rss0} KiB",
        "violations": int(peak_conn > max_conn) + int(peak_chan > max_chan),
    }


async def _stats(host: str) -> dx.PoolStats | None:
    return current_pool().stats().get(host)


def sequential(n: int, host: str) -> dict[str, Any]:
    for _ in range(20):
        dispatch.run("true", host, timeout=60)
    gc.collect()
    fd0, rss0 = fds(), rss_kib()
    s0 = run_blocking(_stats(host))
    failures = 0
    t0 = time.perf_counter()
    for i in range(n):
        r = dispatch.run(["echo", str(i)], host, timeout=60)
        failures += not (r.ok and r.stdout == f"{i}\n")
    dt = time.perf_counter() - t0
    gc.collect()
    fd1, rss1 = fds(), rss_kib()
    s1 = run_blocking(_stats(host))
    assert s0 is not None and s1 is not None
    grew = int(fd1 > fd0) + int(s1.open_connections != s0.open_connections)
    return {
        "phase": f"sequential dispatch.run x{n}", "calls": n, "failures": failures,
        "seconds": dt,
        "detail": f"fds {fd0}->{fd1}, conns {s0.open_connections}->{s1.open_connections} "
                  f"(connects {s0.connects}->{s1.connects}), RSS +{rss1 - rss0} KiB, "
                  f"{n / dt:.0f} calls/s",
        "violations": grew + int(rss1 - rss0 >= RSS_LIMIT_KIB),
    }


def copies(n: int, host: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "payload.bin"
        src.write_bytes(os.urandom(64 * 1024))
        remote = dispatch.run(["mktemp", "-d", "/tmp/dispatch-soak.XXXXXX"], host,
                              timeout=60).stdout.strip()
        try:
            for i in range(10):
                dispatch.copy_to(src, host, f"{remote}/warm{i}", timeout=60)
            gc.collect()
            fd0, rss0 = fds(), rss_kib()
            s0 = run_blocking(_stats(host))
            failures = 0
            t0 = time.perf_counter()
            for i in range(n):
                failures += not dispatch.copy_to(src, host, f"{remote}/f{i % 50}",
                                                 timeout=60).ok
            dt = time.perf_counter() - t0
            gc.collect()
            fd1, rss1 = fds(), rss_kib()
            s1 = run_blocking(_stats(host))
            left = dispatch.run(["sh", "-c", 'ls -A "$1" | wc -l', "sh", remote], host,
                                timeout=60).stdout.strip()
        finally:
            dispatch.run(["rm", "-rf", remote], host, timeout=120)
    assert s0 is not None and s1 is not None
    grew = int(fd1 > fd0) + int(s1.open_connections != s0.open_connections)
    stray = int(left) - 60 if left.isdigit() else -1
    return {
        "phase": f"copy_to 64 KiB x{n}", "calls": n, "failures": failures, "seconds": dt,
        "detail": f"fds {fd0}->{fd1}, conns {s0.open_connections}->{s1.open_connections}, "
                  f"RSS +{rss1 - rss0} KiB, stray remote files {stray}, "
                  f"{n / dt:.0f} copies/s",
        "violations": grew + int(rss1 - rss0 >= RSS_LIMIT_KIB) + int(stray != 0),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every count")
    ap.add_argument("--commands", type=int, default=1000)
    ap.add_argument("--inflight", type=int, default=200)
    ap.add_argument("--sequential", type=int, default=10000)
    ap.add_argument("--copies", type=int, default=1000)
    ap.add_argument("--max-connections", type=int, default=4)
    ap.add_argument("--max-channels", type=int, default=8)
    args = ap.parse_args()

    env = _testbed_env()
    for k, v in env.items():
        os.environ.setdefault(k, v)
    fleet = env["DISPATCH_TESTBED_FLEET"].split()
    host = env["DISPATCH_TESTBED_PLAIN"]

    def sc(x: int) -> int:
        return max(1, int(x * args.scale))

    rows = [
        asyncio.run(fanout(sc(args.commands), min(sc(args.inflight), sc(args.commands)),
                           fleet, args.max_connections, args.max_channels)),
        sequential(sc(args.sequential), host),
        copies(sc(args.copies), host),
    ]
    print(f"{'phase':48} {'calls':>6} {'fail':>5} {'secs':>7}  detail")
    for r in rows:
        print(f"{r['phase']:48} {r['calls']:>6} {r['failures']:>5} {r['seconds']:>7.1f}  "
              f"{r['detail']}")
    bad = sum(r["failures"] + r["violations"] for r in rows)
    print("OK" if bad == 0 else f"FAILED ({bad} failures/violations)")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
