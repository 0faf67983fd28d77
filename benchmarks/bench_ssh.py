"""SSH core benchmark: dispatch's pooled connections vs the alternatives, side by side.

    python benchmarks/bench_ssh.py            # needs the testbed (scripts/testbed up)

Everything runs against the testbed's real sshd as the non-root user (alias ``plain``):
per-call latency of a login-shell ``true`` (blocking ``dispatch.run``, ``dispatch.aio.run``,
one ``ssh`` process per call, OpenSSH ControlMaster, raw asyncssh ``conn.run`` on one
connection); ``run_many`` over the 50 fleet aliases cold and warm; 100 concurrent
``sleep 0.2`` on one host; SFTP upload of a 50 MB file (dispatch vs raw asyncssh vs
``scp``); memory per open connection (dispatch pool vs a ControlMaster process).
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncssh

ROOT = Path(__file__).resolve().parent.parent
LOGIN_TRUE = 'exec "$SHELL" -l -c true'


from testbed_env import load_testbed_env  # noqa: E402  (benchmarks/ is on sys.path)

load_testbed_env("DISPATCH_TESTBED_FLEET")


import dispatch  # noqa: E402
import dispatch.aio as dx  # noqa: E402
from dispatch._blocking import run_blocking  # noqa: E402
from dispatch.ssh import Pool  # noqa: E402

CONFIG = os.environ["DISPATCH_SSH_CONFIG"]
HOST = os.environ.get("DISPATCH_TESTBED_PLAIN", "plain")
FLEET = os.environ["DISPATCH_TESTBED_FLEET"].split()

rows: list[tuple[str, str, str, str]] = []  # (what, measured, baseline/ratio, target)


def row(what: str, measured: str, ratio: str = "", target: str = "") -> None:
    rows.append((what, measured, ratio, target))
    print(f"  {what}: {measured} {ratio}", file=sys.stderr, flush=True)


def median_ms(fn: Callable[[], object], n: int, warm: int = 3) -> float:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


async def amedian_ms(fn: Callable[[], Awaitable[object]], n: int, warm: int = 3) -> float:
    for _ in range(warm):
        await fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def ssh(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["ssh", "-F", CONFIG, *args], capture_output=True, check=check)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bench_latency(tmp: Path) -> dict[str, float]:
    n = 60
    res: dict[str, float] = {}

    def blocking() -> None:
        assert dispatch.run("true", HOST).ok

    res["blocking"] = median_ms(blocking, n)

    async def noop() -> None:
        return None

    res["facade"] = median_ms(lambda: run_blocking(noop()), 500)

    async def aio_and_raw() -> tuple[float, float]:
        # interleaved, so background noise on the shared machine hits both alike
        conn = await asyncssh.connect(HOST, config=[CONFIG])
        ours: list[float] = []
        raws: list[float] = []
        try:
            async with Pool():
                for i in range(n + 3):
                    t = time.perf_counter()
                    assert (await dx.run("true", HOST)).ok
                    t1 = time.perf_counter()
                    r = await conn.run(LOGIN_TRUE, encoding=None)
                    t2 = time.perf_counter()
                    assert r.exit_status == 0
                    if i >= 3:
                        ours.append(t1 - t)
                        raws.append(t2 - t1)
        finally:
            conn.close()
            await conn.wait_closed()
        return statistics.median(ours) * 1000, statistics.median(raws) * 1000

    res["aio"], res["raw"] = asyncio.run(aio_and_raw())
    res["ssh"] = median_ms(lambda: ssh(HOST, LOGIN_TRUE), 15, warm=1)
    cp = str(tmp / "cm-%C")
    cm = ["-o", "ControlMaster=auto", "-o", f"ControlPath={cp}", "-o", "ControlPersist=120"]
    try:
        res["controlmaster"] = median_ms(lambda: ssh(*cm, HOST, LOGIN_TRUE), n)
        check = ssh(*cm, "-O", "check", HOST, check=False).stderr.decode()
        pid = int(check.split("pid=")[1].split(")")[0]) if "pid=" in check else 0
        res["cm_rss_kib"] = float(rss_kib(pid)) if pid else float("nan")
    finally:
        ssh(*cm, "-O", "exit", HOST, check=False)
    return res


async def bench_fleet() -> tuple[float, int, float, int]:
    async with Pool():
        t = time.perf_counter()
        cold = await dx.run_many("true", FLEET)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        warm = await dx.run_many("true", FLEET)
        warm_s = time.perf_counter() - t
    return cold_s, sum(r.ok for r in cold.values()), warm_s, sum(r.ok for r in warm.values())


async def bench_concurrent() -> tuple[float, int, int, int]:
    async with Pool() as pool:
        assert (await dx.run("true", HOST)).ok  # one warm connection, as in steady use
        t = time.perf_counter()
        results = await asyncio.gather(*(dx.run("sleep 0.2", HOST) for _ in range(100)))
        dt = time.perf_counter() - t
        st = pool.stats()[HOST]
    return dt, sum(r.ok for r in results), st.peak_channels_per_connection, st.peak_connections


def bench_upload(tmp: Path) -> dict[str, float]:
    src = tmp / "upload.bin"
    src.write_bytes(os.urandom(50 * 1024 * 1024))
    mb = src.stat().st_size / 1e6
    res: dict[str, float] = {}

    async def ours() -> float:
        async with Pool():
            await dx.run("true", HOST)
            best = 0.0
            for i in range(3):
                t = time.perf_counter()
                r = await dx.copy_to(src, HOST, f"bench-up-{i}.bin")
                assert r.ok, r.stderr
                best = max(best, mb / (time.perf_counter() - t))
            await dx.run("rm -f bench-up-*.bin", HOST)
        return best

    async def raw(block_size: int, max_requests: int) -> float:
        conn = await asyncssh.connect(HOST, config=[CONFIG])
        best = 0.0
        try:
            async with conn.start_sftp_client() as sftp:
                for i in range(3):
                    t = time.perf_counter()
                    await sftp.put(str(src), f"bench-raw-{i}.bin",
                                   block_size=block_size, max_requests=max_requests)
                    best = max(best, mb / (time.perf_counter() - t))
            await conn.run("rm -f bench-raw-*.bin")
        finally:
            conn.close()
            await conn.wait_closed()
        return best

    res["ours"] = asyncio.run(ours())
    res["raw_tuned"] = asyncio.run(raw(-1, 128))
    res["raw_16k"] = asyncio.run(raw(16384, 128))
    best = 0.0
    for i in range(3):
        t = time.perf_counter()
        subprocess.run(["scp", "-q", "-F", CONFIG, str(src), f"{HOST}:bench-scp-{i}.bin"],
                       check=True)
        best = max(best, mb / (time.perf_counter() - t))
    ssh(HOST, "rm -f bench-scp-*.bin")
    res["scp"] = best
    return res


async def bench_memory(n: int = 20) -> tuple[float, float]:
    """KiB per open pooled connection: tracemalloc (Python heap) and RSS delta."""
    pid = os.getpid()
    gc.collect()
    rss0 = rss_kib(pid)
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    async with Pool(idle_timeout=None) as pool:
        for host in FLEET[:n]:
            await pool.connect(host)
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
        rss1 = rss_kib(pid)
        assert sum(s.open_connections for s in pool.stats().values()) == n
    tracemalloc.stop()
    heap = sum(s.size_diff for s in snap1.compare_to(snap0, "filename")) / 1024 / n
    return heap, (rss1 - rss0) / n


def main() -> None:
    print("dispatch SSH benchmark (testbed sshd, user dispatcher, login-shell `true`)",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        lat = bench_latency(tmp)
        raw = lat["raw"]
        row("raw asyncssh conn.run (1 conn)", f"{raw:.2f} ms", "1.00x", "baseline")
        row("dispatch.aio.run (warm)", f"{lat['aio']:.2f} ms", f"{lat['aio'] / raw:.2f}x raw",
            "<= 1.25x raw")
        row("dispatch.run blocking (warm)", f"{lat['blocking']:.2f} ms",
            f"{lat['blocking'] - lat['aio']:+.2f} ms vs aio", "< +0.5 ms")
        row("blocking facade alone (no-op coroutine)", f"{lat['facade'] * 1000:.0f} us", "",
            "< 500 us")
        row("ssh ControlMaster per call", f"{lat['controlmaster']:.2f} ms",
            f"{lat['controlmaster'] / lat['aio']:.1f}x dispatch", "dispatch faster")
        row("ssh process per call", f"{lat['ssh']:.1f} ms",
            f"{lat['ssh'] / lat['aio']:.1f}x dispatch", ">= 30x")

        cold, cold_ok, warm, warm_ok = asyncio.run(bench_fleet())
        row("run_many 50 fleet aliases, cold", f"{cold:.2f} s ({cold_ok}/50 ok)", "",
            "< 2 s, 50/50")
        row("run_many 50 fleet aliases, warm", f"{warm:.3f} s ({warm_ok}/50 ok)", "",
            "< 0.3 s")

        dt, ok, peak_ch, peak_conn = asyncio.run(bench_concurrent())
        row("100 concurrent `sleep 0.2`, one host", f"{dt:.2f} s ({ok}/100 ok)",
            f"peak {peak_ch} ch/conn, {peak_conn} conns", "< 1.5 s, 100/100")

        up = bench_upload(tmp)
        row("SFTP upload 50 MB: dispatch.copy_to", f"{up['ours']:.0f} MB/s",
            f"{up['ours'] / up['raw_tuned']:.2f}x raw tuned", ">= 0.9x raw tuned")
        row("SFTP upload 50 MB: raw asyncssh (tuned)", f"{up['raw_tuned']:.0f} MB/s", "1.00x", "")
        row("SFTP upload 50 MB: raw asyncssh 16 KiB", f"{up['raw_16k']:.0f} MB/s",
            f"{up['raw_16k'] / up['raw_tuned']:.2f}x raw tuned", "")
        row("scp upload 50 MB", f"{up['scp']:.0f} MB/s",
            f"dispatch {up['ours'] / up['scp']:.2f}x scp", "")

        heap, rss = asyncio.run(bench_memory())
        cm = lat["cm_rss_kib"]
        row("memory per open connection (dispatch)", f"{heap:.0f} KiB heap, {rss:.0f} KiB RSS",
            f"ControlMaster process {cm / 1024:.1f} MiB RSS", "< 150 KiB")

    widths = [max(len(r[i]) for r in [("what", "measured", "ratio", "target"), *rows])
              for i in range(4)]
    line = " | ".join
    header = ("what", "measured", "ratio", "target")
    print(line(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(line(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
