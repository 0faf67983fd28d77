"""Transfers through the user's OpenSSH ControlMaster vs dispatch's own connection, on a slow link.

    python benchmarks/bench_controlmaster.py [--host wan-plain] [--repeat 10]

Needs the testbed (`wan-plain`: 40 ms RTT by default). Starts a real master to the host
(``ssh -M -fN`` with a ControlPath in a temporary config), then in one process times
``write_file`` of a small file ``--repeat`` times through the master
(``Pool(control_master=True)``) and over dispatch's own pooled connection
(``control_master=False``), each after one warm-up call, and reports milliseconds and
round trips per call. The master carries a shared SFTP session per host, so after the
first transfer both should cost the same round trips (open, write+close, rename).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testbed_env import load_testbed_env

load_testbed_env("DISPATCH_TESTBED_RTT_MS")

import dispatch.aio as dx  # noqa: E402
from dispatch.ssh import Pool  # noqa: E402


async def _per_call(config: Path, host: str, master: bool, n: int) -> tuple[float, float]:
    """(median ms per write_file, ms of the first one) through the master or not."""
    async with Pool(ssh_config=config, control_master=master):
        assert (await dx.run("true", host)).ok
        t = time.perf_counter()
        first = await dx.write_file(host, "/tmp/dispatch-bench-cm", b"warm")
        first_ms = (time.perf_counter() - t) * 1000
        assert first.ok, first.stderr
        times = []
        for _ in range(n):
            t = time.perf_counter()
            res = await dx.write_file(host, "/tmp/dispatch-bench-cm", b"hello")
            times.append((time.perf_counter() - t) * 1000)
            assert res.ok, res.stderr
        await dx.run("rm -f /tmp/dispatch-bench-cm", host)
    return statistics.median(times), first_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="wan-plain")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    rtt = float(os.environ.get("DISPATCH_TESTBED_RTT_MS", "40"))
    with tempfile.TemporaryDirectory() as d:
        config = Path(d) / "config"
        config.write_text(f"Include {os.environ['DISPATCH_SSH_CONFIG']}\n"
                          f"Host {args.host}\n    ControlPath {d}/cm\n")
        subprocess.run(["ssh", "-F", str(config), "-M", "-o", "ControlPersist=120", "-fN",
                        args.host], check=True, timeout=60, stdin=subprocess.DEVNULL)
        try:
            via, via_first = asyncio.run(_per_call(config, args.host, True, args.repeat))
            own, own_first = asyncio.run(_per_call(config, args.host, False, args.repeat))
        finally:
            subprocess.run(["ssh", "-F", str(config), "-O", "exit", args.host],
                           capture_output=True, timeout=30)
    print(f"write_file on {args.host} (RTT {rtt:g} ms), median of {args.repeat}:")
    print(f"  through the ControlMaster  {via:6.1f} ms = {via / rtt:.1f} RTT  "
          f"(first, opening the shared session: {via_first:.0f} ms)")
    print(f"  own connection             {own:6.1f} ms = {own / rtt:.1f} RTT  "
          f"(first, opening its SFTP session: {own_first:.0f} ms)")
    print(f"  ratio master/own: {via / own:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
