"""Load, short variants (the long soak lives in benchmarks/soak.py).

Behaviour, not speed: every command succeeds, the pool never exceeds its own per-host
connection and channel caps (read from ``Pool.stats()``), and repeated calls leak neither
file descriptors nor connections, with bounded RSS growth.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import dispatch
import dispatch.aio as dx
from dispatch._blocking import run_blocking
from dispatch.ssh import current_pool

from ..conftest import Testbed
from ..support import report
from ..support.remote import fd_count, rss_kib, scratch_dir, ssh_out

MAX_CONN = 4
MAX_CHAN = 8

FIGURES = report.section("load")


async def _bounded(n: int, inflight: int, hosts: list[str]) -> tuple[list[dx.RunResult], int]:
    sem = asyncio.Semaphore(inflight)
    peak = 0
    active = 0

    async def one(i: int) -> dx.RunResult:
        nonlocal peak, active
        async with sem:
            active += 1
            peak = max(peak, active)
            try:
                return await dx.run(["echo", str(i)], hosts[i % len(hosts)], timeout=120)
            finally:
                active -= 1

    results = await asyncio.gather(*(one(i) for i in range(n)))
    return list(results), peak


async def test_200_commands_over_fleet_100_in_flight(testbed: Testbed) -> None:
    async with dx.Pool(max_connections_per_host=MAX_CONN,
                       max_channels_per_connection=MAX_CHAN) as pool:
        results, peak = await _bounded(200, 100, testbed.fleet)
        stats = pool.stats()
    failures = [(i, r) for i, r in enumerate(results) if not (r.ok and r.stdout == f"{i}\n")]
    assert not failures, failures[:5]
    assert peak == 100
    assert set(stats) == set(testbed.fleet)
    for host, s in stats.items():
        assert s.peak_connections <= MAX_CONN, (host, s)
        assert s.peak_channels_per_connection <= MAX_CHAN, (host, s)
        assert s.peak_channels <= MAX_CONN * MAX_CHAN, (host, s)
    FIGURES["200 cmds / 50 fleet hosts / 100 in flight"] = (
        f"0 failures; peak conns/host {max(s.peak_connections for s in stats.values())}, "
        f"peak chans/conn {max(s.peak_channels_per_connection for s in stats.values())}")


async def test_100_concurrent_on_one_host_respects_caps(testbed: Testbed) -> None:
    async with dx.Pool(max_connections_per_host=MAX_CONN,
                       max_channels_per_connection=MAX_CHAN) as pool:
        results, peak = await _bounded(100, 100, [testbed.plain])
        s = pool.stats()[testbed.plain]
    assert peak == 100
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    assert s.peak_connections <= MAX_CONN, s
    assert s.peak_channels_per_connection <= MAX_CHAN, s
    assert s.peak_channels <= MAX_CONN * MAX_CHAN, s
    FIGURES["100 concurrent on one host"] = (
        f"100/100 ok; peak conns {s.peak_connections}, peak chans/conn "
        f"{s.peak_channels_per_connection}, refusals {s.channel_refusals}")


async def _stats_of(host: str) -> dx.PoolStats | None:
    return current_pool().stats().get(host)


def test_500_sequential_runs_leak_nothing(testbed: Testbed) -> None:
    """Blocking facade, default pool: fds, connections and RSS stay flat."""
    for _ in range(20):  # warm up: connection, caches, lazy imports
        assert dispatch.run("true", testbed.plain, timeout=30).ok
    gc.collect()
    fd0, rss0 = fd_count(), rss_kib()
    s0 = run_blocking(_stats_of(testbed.plain))
    assert s0 is not None
    for i in range(500):
        res = dispatch.run(["echo", str(i)], testbed.plain, timeout=30)
        assert res.ok and res.stdout == f"{i}\n", res
    gc.collect()
    fd1, rss1 = fd_count(), rss_kib()
    s1 = run_blocking(_stats_of(testbed.plain))
    assert s1 is not None
    assert fd1 <= fd0 + 2, f"fds grew {fd0} -> {fd1}"
    assert s1.open_connections == s0.open_connections == 1, (s0, s1)
    assert s1.connects == s0.connects, "reconnected during sequential runs"
    assert rss1 - rss0 < 10 * 1024, f"RSS grew {rss1 - rss0} KiB"
    FIGURES["500 sequential runs"] = (
        f"fds {fd0}->{fd1}, connections {s0.open_connections}->{s1.open_connections}, "
        f"RSS +{rss1 - rss0} KiB")


async def test_100_copy_to_leak_nothing(testbed: Testbed, tmp_path: Path) -> None:
    src = tmp_path / "payload.bin"
    src.write_bytes(b"x" * 4096)
    with scratch_dir(testbed, testbed.plain, "dispatch-load") as remote:
        async with dx.Pool() as pool:
            for i in range(10):
                assert (await dx.copy_to(src, testbed.plain, f"{remote}/warm{i}")).ok
            gc.collect()
            fd0, rss0 = fd_count(), rss_kib()
            c0 = pool.stats()[testbed.plain]
            for i in range(100):
                res = await dx.copy_to(src, testbed.plain, f"{remote}/f{i}", timeout=60)
                assert res.ok, res
            gc.collect()
            fd1, rss1 = fd_count(), rss_kib()
            c1 = pool.stats()[testbed.plain]
        names = ssh_out(testbed, testbed.plain, ["ls", "-A", remote]).split()
    assert len([n for n in names if n.startswith("f")]) == 100
    assert len(names) == 110, "stray temp files"
    assert fd1 <= fd0 + 2, f"fds grew {fd0} -> {fd1}"
    assert c1.open_connections == c0.open_connections, (c0, c1)
    assert c1.connects == c0.connects
    assert rss1 - rss0 < 10 * 1024, f"RSS grew {rss1 - rss0} KiB"
    FIGURES["100 copy_to"] = (
        f"fds {fd0}->{fd1}, connections {c0.open_connections}->{c1.open_connections}, "
        f"RSS +{rss1 - rss0} KiB")
