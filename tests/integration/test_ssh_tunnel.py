"""forward_port / close_tunnel against the real sshd, to an HTTP server started on the host."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import urllib.request
from collections.abc import AsyncIterator

import pytest

import dispatch.aio as dx
from dispatch.ssh import Pool
from dispatch.ssh.tunnel import _pid_gone

from ..conftest import Testbed
from ..support.local import free_port as _free_port


def _get(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
        return bytes(resp.read())


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


@pytest.fixture
async def pool(testbed: Testbed) -> AsyncIterator[Pool]:
    async with Pool() as p:
        yield p


@pytest.fixture
async def http_port(testbed: Testbed, pool: Pool) -> AsyncIterator[int]:
    """A tiny HTTP server on the host's 127.0.0.1 (started with run, killed afterwards)."""
    port = _free_port()
    start = (
        f"cd /tmp; nohup python3 -m http.server {port} --bind 127.0.0.1 "
        ">/dev/null 2>&1 </dev/null & echo $!"
    )
    started = await dx.run(start, testbed.plain, login_shell=False)
    assert started.ok, started.stderr
    pid = started.stdout.strip()
    probe = ["python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}))"]
    deadline = asyncio.get_running_loop().time() + 15
    while not (await dx.run(probe, testbed.plain, login_shell=False)).ok:
        assert asyncio.get_running_loop().time() < deadline, "http.server did not come up"
        await asyncio.sleep(0.05)
    yield port
    await dx.run(["kill", pid], testbed.plain, login_shell=False)


async def test_forward_close_and_reuse(testbed: Testbed, pool: Pool, http_port: int) -> None:
    local = _free_port()
    t = await dx.forward_port(testbed.plain, local, http_port)
    assert t.ok, t.stderr
    assert t.pid == os.getpid() and not t.detached
    assert t.command == ["ssh", "-N", "-L", f"127.0.0.1:{local}:localhost:{http_port}", "plain"]
    assert b"Directory listing" in await asyncio.to_thread(_get, local)
    again = await dx.forward_port(testbed.plain, local, http_port)
    assert again.returncode != 0 and "already forwarded" in again.stderr
    assert await dx.close_tunnel(t)
    assert await asyncio.to_thread(_refused, local)
    assert not await dx.close_tunnel(t)
    # remote_host: forward to an address the host resolves (here its own loopback IP)
    t2 = await dx.forward_port(testbed.plain, local, http_port, remote_host="127.0.0.1")
    assert t2.ok, t2.stderr
    assert b"Directory listing" in await asyncio.to_thread(_get, local)
    assert await dx.close_tunnel(local)


async def test_occupied_and_bad_ports_fail_clearly(
    testbed: Testbed, pool: Pool, http_port: int
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = await dx.forward_port(testbed.plain, port, http_port)
        assert r.returncode != 0 and r.pid is None
        assert f"127.0.0.1:{port} is already in use" in r.stderr
    for local, remote in [(0, http_port), (70000, http_port), (_free_port(), 0), ("80", 80)]:
        bad = await dx.forward_port(testbed.plain, local, remote)  # type: ignore[arg-type]
        assert bad.returncode != 0 and "invalid" in bad.stderr
    nothing = await dx.forward_port(testbed.plain, _free_port(), _free_port())
    assert nothing.returncode != 0 and "is anything listening" in nothing.stderr


async def test_detached_tunnel_outlives_pool_and_dies_with_its_pid(
    testbed: Testbed, http_port: int
) -> None:
    local = _free_port()
    async with Pool():
        t = await dx.forward_port(testbed.plain, local, http_port, detached=True)
    assert t.ok, t.stderr
    assert t.detached and t.pid is not None and t.pid != os.getpid()
    assert t.command[1:3] == ["-m", "dispatch.ssh.tunnel"]
    try:
        # our pool is closed: the helper process holds the tunnel on its own
        assert b"Directory listing" in await asyncio.to_thread(_get, local)
        os.kill(t.pid, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + 10
        while not _pid_gone(t.pid):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        assert await asyncio.to_thread(_refused, local)
    finally:
        if not _pid_gone(t.pid):
            os.kill(t.pid, signal.SIGKILL)


async def test_detached_tunnel_close_and_errors(
    testbed: Testbed, pool: Pool, http_port: int
) -> None:
    local = _free_port()
    t = await dx.forward_port(testbed.plain, local, http_port, detached=True)
    assert t.ok, t.stderr
    assert await dx.close_tunnel(t)
    assert await asyncio.to_thread(_refused, local)
    bad = await dx.forward_port(testbed.plain, _free_port(), _free_port(), detached=True)
    assert bad.returncode != 0 and bad.pid is None and "is anything listening" in bad.stderr


async def test_timeout_while_verifying_frees_the_local_port(
    testbed: Testbed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forward that times out (or is cancelled) after it started listening must not keep
    the local port bound or the connection pinned: a retry on the same port works."""
    import dispatch.ssh.tunnel as tunnel_mod

    real_verify = tunnel_mod._verify
    stalled = asyncio.Event()

    async def stalled_verify(*args: object) -> str | None:
        stalled.set()
        await asyncio.Event().wait()  # a remote side that never answers
        return None

    port = _free_port()
    async with Pool() as pool:
        monkeypatch.setattr(tunnel_mod, "_verify", stalled_verify)
        res = await dx.forward_port(testbed.plain, port, testbed.ssh_port, timeout=0.5)
        assert stalled.is_set() and res.returncode == -1 and "timed out" in res.stderr
        assert _refused(port) and pool.tunnels == {}
        task = asyncio.ensure_future(dx.forward_port(testbed.plain, port, testbed.ssh_port))
        await stalled.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _refused(port) and pool.tunnels == {}
        monkeypatch.setattr(tunnel_mod, "_verify", real_verify)
        ok = await dx.forward_port(testbed.plain, port, testbed.ssh_port, timeout=30)
        assert ok.ok, ok.stderr
        conn_pins = [c.pins for s in pool._slots.values() for c in s.conns]
        assert conn_pins == [1]  # only the live tunnel pins the connection
        assert await dx.close_tunnel(ok)
