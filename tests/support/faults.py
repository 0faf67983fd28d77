"""Fixtures-as-functions for the fault suite: scoped pools on a fault config, remote dirs
that are full or read-only, and control of the testbed's SLURM daemons."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from ..conftest import ROOT, Testbed
from .sshconf import Alias, FaultConfig, write_fault_config

__all__ = [
    "apoll",
    "daemon_down",
    "fault_pool_kwargs",
    "full_dir",
    "kill_all",
    "readonly_dir",
    "sshd_pids_serving",
    "start_testbed",
]


def fault_pool_kwargs(testbed: Testbed, tmp: Path, aliases: list[Alias],
                      connect_timeout: int = 3, known_hosts_extra: list[str] | None = None,
                      ) -> tuple[FaultConfig, dict[str, Any]]:
    """Write a fault config and return it with the Pool(...) kwargs that select it."""
    cfg = write_fault_config(testbed, tmp, aliases, connect_timeout=connect_timeout,
                             known_hosts_extra=known_hosts_extra)
    return cfg, {"ssh_config": str(cfg.config), "known_hosts": str(cfg.known_hosts)}


async def apoll(cond: Callable[[], Awaitable[bool]], timeout: float,
                interval: float = 0.05) -> bool:
    """Poll an async condition until true or ``timeout``; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if await cond():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


@contextlib.contextmanager
def full_dir(owner: str, size: str = "1m") -> Iterator[Path]:
    """A directory owned by ``owner`` on a tiny tmpfs (mounted here as root; unmounted after)."""
    path = Path(tempfile.mkdtemp(prefix="dispatch-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                   check=True, timeout=30)
    try:
        shutil.chown(path, owner, owner)
        yield path
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(path)], capture_output=True,
                              timeout=30).returncode == 0:
                break
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            path.rmdir()


@contextlib.contextmanager
def readonly_dir() -> Iterator[Path]:
    """A root-owned 0755 directory the test user can read but not write."""
    path = Path(tempfile.mkdtemp(prefix="dispatch-ro-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sshd_pids_serving(local_port: int, server_port: int) -> set[int]:
    """The sshd processes holding the server end of the TCP connection from ``local_port``."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established",
         f"( sport = :{server_port} and dport = :{local_port} )"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


def kill_all(pids: set[int]) -> None:
    """SIGKILL each of ``pids``; one already gone is fine (sshd's session child exits by
    itself once its monitor is killed, so a second kill can find nobody)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pid(testbed: Testbed, name: str) -> int | None:
    try:
        pid = int((testbed.state_dir / "pids" / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def start_testbed(timeout: float = 240) -> None:
    """``scripts/testbed up``: idempotent, restarts only what is down."""
    subprocess.run([str(ROOT / "scripts" / "testbed"), "up"], check=True, timeout=timeout,
                   capture_output=True)


@contextlib.contextmanager
def daemon_down(testbed: Testbed, name: str) -> Iterator[int]:
    """Stop testbed daemon ``name`` (SIGTERM via its pid file) for the block; restart after.

    Other tests share the cluster: the outage lasts only as long as the block, and the
    daemon is brought back by ``scripts/testbed up`` in ``finally``.
    """
    pid = _pid(testbed, name)
    if pid is None:
        raise AssertionError(f"testbed daemon {name} is not running")
    os.kill(pid, 15)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
    try:
        yield pid
    finally:
        start_testbed()
