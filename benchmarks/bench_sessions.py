"""Command sessions vs exec channels vs the floor, side by side (issue 13).

    python benchmarks/bench_sessions.py [--repeat 200] [--polls 1000] [--json]

Needs the testbed (``scripts/testbed up``). One run prints, for each row, the median wall
time of a warm call:

* ``plain``: ``run('true')`` in a command session (the default), on an exec channel
  (``session=False``) and the floor: raw asyncssh, one ``$SHELL -l`` kept open on one
  channel, ``true`` followed by a sentinel echo (target: sessions <= 2x the floor).
* ``slowlogin`` (a 300 ms login profile): warm ``run``, ``status`` of a held job and
  ``queue``, sessions vs exec (target: within 3x the ``plain`` floor).
* ``wan-plain`` (``DISPATCH_TESTBED_RTT_MS``, 40 ms): the extra round trips of ``run``,
  ``(wan - loopback) / RTT``, sessions vs exec (target <= 1.5).
* processes per 1,000 ``status`` polls on ``slowlogin``: login shells started (one per
  exec channel; one per session started) and every pid the kernel handed out meanwhile
  (``/proc/sys/kernel/ns_last_pid``: the server is this machine; other work on it is
  counted too, so the idle rate over the same time is shown beside it) (target: >= 10x
  fewer shells with sessions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


from testbed_env import load_testbed_env  # noqa: E402  (benchmarks/ is on sys.path)

load_testbed_env("DISPATCH_TESTBED_SLOWLOGIN")

import asyncssh  # noqa: E402

import dispatch.aio as dx  # noqa: E402
from dispatch import SlurmJob  # noqa: E402
from dispatch.ssh.sessions import SESSIONS  # noqa: E402

PLAIN = os.environ.get("DISPATCH_TESTBED_PLAIN", "plain")
SLOW = os.environ.get("DISPATCH_TESTBED_SLOWLOGIN", "slowlogin")
SLURM = os.environ.get("DISPATCH_TESTBED_SLURM", "slurm")
WAN = os.environ.get("DISPATCH_TESTBED_WAN_PLAIN", "wan-plain")
RTT_MS = float(os.environ.get("DISPATCH_TESTBED_RTT_MS", "40"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def amedian(fn: Callable[[], Awaitable[object]], n: int) -> float:
    await fn()  # warm
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


async def floor_ms(n: int, line: bytes) -> float:
    """One login shell on one raw asyncssh channel; ``line`` (ends in the sentinel) per call."""
    conn = await asyncssh.connect(PLAIN, config=[os.environ["DISPATCH_SSH_CONFIG"]],
                                  known_hosts=os.environ["DISPATCH_KNOWN_HOSTS"])
    try:
        proc = await conn.create_process('exec "$SHELL" -l', encoding=None)
        sentinel = b"__floor_sentinel__"

        async def one() -> None:
            proc.stdin.write(line)
            await proc.stdout.readuntil(sentinel + b"\n")

        ms = await amedian(one, n)
        proc.stdin.write_eof()
        proc.close()
        return ms
    finally:
        conn.close()


def run_fn(host: str, session: bool) -> Callable[[], Awaitable[None]]:
    async def go() -> None:
        r = await dx.run("true", host, session=session)
        assert r.ok, r
    return go


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--polls", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    n = a.repeat
    res: dict[str, float] = {}

    log("floor (raw asyncssh, one kept-open login shell)...")
    res["floor"] = await floor_ms(n, b"true; echo __floor_sentinel_\"_\"\n")
    res["floor subshell"] = await floor_ms(
        n, b"( true ) </dev/null & wait $!; echo __floor_sentinel_\"_\"\n")
    async with dx.Pool():
        log("plain: sessions / exec...")
        res["plain session"] = await amedian(run_fn(PLAIN, True), n)
        res["plain exec"] = await amedian(run_fn(PLAIN, False), n)
        log("wan-plain: sessions / exec...")
        k = max(10, n // 10)
        res["wan session"] = await amedian(run_fn(WAN, True), k)
        res["wan exec"] = await amedian(run_fn(WAN, False), k)
        res["plain session (k)"] = await amedian(run_fn(PLAIN, True), k)
        res["plain exec (k)"] = await amedian(run_fn(PLAIN, False), k)

    job = SlurmJob(name="bench-sessions", command="true", output="/dev/null",
                   extra_directives=["--hold"])
    counts: dict[str, dict[str, float]] = {}
    async with dx.Pool():
        log("slurm (no login profile): status / queue in sessions...")
        sub = await dx.submit(job, SLURM)
        assert sub.job_id is not None, sub.ssh_result.stderr
        try:
            jid = sub.job_id

            async def plain_status(job_id: int = jid) -> None:
                assert (await dx.status(job_id, SLURM)).job is not None

            async def plain_queue() -> None:
                assert (await dx.queue(SLURM)).ssh_result.ok

            res["slurm status session"] = await amedian(plain_status, max(10, n // 10))
            res["slurm queue session"] = await amedian(plain_queue, max(10, n // 10))
        finally:
            await dx.cancel(sub.job_id, SLURM)
    for mode in ("session", "exec"):
        async with dx.Pool(command_sessions=mode == "session") as pool:
            sub = await dx.submit(job, SLOW)
            assert sub.job_id is not None, sub.ssh_result.stderr
            try:
                log(f"slowlogin ({mode}): run / status / queue...")
                m = max(10, n // 10)
                res[f"slow run {mode}"] = await amedian(run_fn(SLOW, mode == "session"), m)

                job_id = sub.job_id

                async def status(job_id: int = job_id) -> None:
                    st = await dx.status(job_id, SLOW)
                    assert st.job is not None, st

                async def queue() -> None:
                    q = await dx.queue(SLOW)
                    assert q.ssh_result.ok, q

                res[f"slow status {mode}"] = await amedian(status, m)
                res[f"slow queue {mode}"] = await amedian(queue, m)
                polls = a.polls if mode == "session" else max(50, a.polls // 10)
                log(f"slowlogin ({mode}): {polls} status polls...")
                sp = pool.registry.get(SESSIONS)
                pid0, t0 = _last_pid(), time.monotonic()
                for _ in range(polls):
                    await status()
                pid1, took = _last_pid(), time.monotonic() - t0
                # sessions: every login shell this pool started (warm-up included)
                shells = sp.started if mode == "session" else polls
                counts[mode] = {
                    "polls": polls, "seconds": took,
                    "shells per 1000": shells * 1000 / polls,
                    "pids per 1000": _pids_between(pid0, pid1) * 1000 / polls,
                }
            finally:
                await dx.cancel(sub.job_id, SLOW)
    log("idle pid rate...")
    pid0 = _last_pid()
    await asyncio.sleep(5)
    idle_rate = _pids_between(pid0, _last_pid()) / 5
    for c in counts.values():
        c["idle pids per 1000"] = idle_rate * c["seconds"] * 1000 / c["polls"]

    if a.json:
        print(json.dumps({"ms": res, "processes": counts, "rtt_ms": RTT_MS}, indent=2))
        return
    fl = res["floor"]
    rt_s = (res["wan session"] - res["plain session (k)"]) / RTT_MS
    rt_e = (res["wan exec"] - res["plain exec (k)"]) / RTT_MS
    fs = res["floor subshell"]
    rows = [
        ("plain warm run('true')", res["plain session"], res["plain exec"],
         f"floor {fl:.2f} ms (with a subshell in its own job: {fs:.2f} ms); sessions "
         f"{res['plain session'] / fl:.2f}x / {res['plain session'] / fs:.2f}x "
         f"(target <= 2x), exec {res['plain exec'] / fl:.1f}x"),
        ("slowlogin warm run", res["slow run session"], res["slow run exec"],
         f"{res['slow run session'] / fl:.1f}x the plain floor (target <= 3x)"),
        ("slowlogin status", res["slow status session"], res["slow status exec"],
         f"{res['slow status session'] / fl:.1f}x the plain floor; same call on `slurm` "
         f"(no profile) in a session {res['slurm status session']:.2f} ms"),
        ("slowlogin queue", res["slow queue session"], res["slow queue exec"],
         f"{res['slow queue session'] / fl:.1f}x the plain floor; same call on `slurm` "
         f"(no profile) in a session {res['slurm queue session']:.2f} ms"),
        (f"wan-plain run (rtt {RTT_MS:g} ms)", res["wan session"], res["wan exec"],
         f"extra round trips: sessions {rt_s:.2f} (target <= 1.5), exec {rt_e:.2f}"),
    ]
    print("| call | sessions (ms) | exec channels (ms) | note |")
    print("|---|---:|---:|---|")
    for name, s, e, note in rows:
        print(f"| {name} | {s:.2f} | {e:.2f} | {note} |")
    cs, ce = counts["session"], counts["exec"]
    print()
    print("| per 1,000 status polls (slowlogin) | sessions | exec channels | ratio |")
    print("|---|---:|---:|---:|")
    ratio = ce["shells per 1000"] / max(cs["shells per 1000"], 1e-9)
    print(f"| login shells started | {cs['shells per 1000']:.0f} | {ce['shells per 1000']:.0f} "
          f"| {ratio:.0f}x fewer (target >= 10x) |")
    print(f"| pids handed out on the machine | {cs['pids per 1000']:.0f} | "
          f"{ce['pids per 1000']:.0f} | {ce['pids per 1000'] / max(cs['pids per 1000'], 1):.1f}x |")
    print(f"| of which idle background (same time) | {cs['idle pids per 1000']:.0f} | "
          f"{ce['idle pids per 1000']:.0f} | |")


def _last_pid() -> int:
    return int(Path("/proc/sys/kernel/ns_last_pid").read_text())


def _pids_between(a: int, b: int) -> int:
    """Pids handed out from ``a`` to ``b`` (the counter wraps at pid_max)."""
    return (b - a) % int(Path("/proc/sys/kernel/pid_max").read_text())


if __name__ == "__main__":
    asyncio.run(main())
