"""Small helpers for reading state back from the real testbed host in assertions."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..conftest import Testbed

__all__ = ["fd_count", "poll_until", "rss_kib", "scratch_dir", "ssh_out", "until"]

T = TypeVar("T")


def ssh_out(testbed: Testbed, host: str, argv: list[str], timeout: float = 30) -> str:
    """Run ``argv`` on ``host`` with the OpenSSH client (independent of dispatch); stdout."""
    import shlex

    cmd = " ".join(shlex.quote(a) for a in argv)
    for attempt in range(20):  # another suite may be restarting the shared sshd
        proc = subprocess.run([*testbed.ssh_argv(host), cmd], capture_output=True,
                              timeout=timeout, check=False)
        if proc.returncode != 255 or b"Connection refused" not in proc.stderr:
            break
        time.sleep(0.25 * (attempt + 1))
    if proc.returncode != 0:
        raise AssertionError(f"ssh {host} {cmd!r} failed ({proc.returncode}): "
                             f"{proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode("utf-8", errors="surrogateescape")


@contextmanager
def scratch_dir(testbed: Testbed, host: str, prefix: str = "dispatch-faults") -> Iterator[str]:
    """A fresh private directory on ``host`` (removed afterwards)."""
    path = ssh_out(testbed, host, ["mktemp", "-d", f"/tmp/{prefix}.XXXXXX"]).strip()
    try:
        yield path
    finally:
        subprocess.run([*testbed.ssh_argv(host), f"rm -rf -- '{path}'"],
                       capture_output=True, timeout=60, check=False)


def poll_until(cond: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``cond`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


async def until(
    cond: Callable[[], Awaitable[T | None]],
    timeout: float = 30.0,
    *,
    every: float = 0.3,
    what: str = "the condition",
) -> T:
    """Poll the async ``cond`` until it returns something truthy and return that; at the
    deadline fail, naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await cond()
        if value:
            return value
        assert loop.time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(every)


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    """Resident set size of this process, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")
