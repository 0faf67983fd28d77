"""Clear errors (unknown host, wrong key, unknown/changed host key, refused) and recovery
(the connection's sshd killed between calls and mid-command) against the real sshd."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import dispatch.aio as dx
from dispatch.errors import HostKeyError
from dispatch.ssh import ConnectError, Pool
from dispatch.ssh.tunnel import _pid_gone

from ..conftest import Testbed
from ..support.faults import fault_pool_kwargs
from ..support.local import free_port as _free_port
from ..support.netns import blackhole_address
from ..support.relay import StallingSSHServer, Tarpit
from ..support.sshconf import Alias


@pytest.fixture
async def pool(testbed: Testbed) -> AsyncIterator[Pool]:
    async with Pool() as p:
        yield p


def _config(tmp_path: Path, testbed: Testbed, body: str, known_hosts: Path | None = None) -> Path:
    kh = known_hosts or testbed.known_hosts
    cfg = tmp_path / "config"
    cfg.write_text(
        body
        + "\nHost *\n"
        f"    UserKnownHostsFile {kh}\n"
        f"    IdentityFile {testbed.client_key}\n"
        "    IdentitiesOnly yes\n"
    )
    return cfg




async def test_unknown_host_name_does_not_resolve(testbed: Testbed, tmp_path: Path) -> None:
    cfg = _config(tmp_path, testbed, "Host ghost\n    HostName ghost.invalid\n")
    async with Pool(ssh_config=cfg, known_hosts=testbed.known_hosts):
        r = await dx.run("true", "ghost")
        assert r.returncode == 255
        assert "Could not resolve hostname ghost.invalid" in r.stderr
        r2 = await dx.run("true", "not-in-config.invalid")
        assert r2.returncode == 255 and "not-in-config.invalid" in r2.stderr


async def test_connection_refused(testbed: Testbed, tmp_path: Path) -> None:
    port = _free_port()
    cfg = _config(tmp_path, testbed, f"Host closed\n    HostName 127.0.0.1\n    Port {port}\n")
    async with Pool(ssh_config=cfg, connect_retries=1, retry_backoff=0.01):
        r = await dx.run("true", "closed")
        assert r.returncode == 255
        assert f"port {port}: Connection refused" in r.stderr


async def test_wrong_key_is_a_clear_auth_error(testbed: Testbed, tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host wrongkey\n"
        f"    HostName 127.0.0.1\n    Port {testbed.ssh_port}\n    User {testbed.user}\n"
        f"    IdentityFile {testbed.wrong_key}\n    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {testbed.known_hosts}\n"
    )
    async with Pool(ssh_config=cfg):
        r = await dx.run("true", "wrongkey")
        assert r.returncode == 255
        assert "Permission denied (publickey)" in r.stderr
        assert str(testbed.wrong_key) in r.stderr


async def test_unknown_host_key(testbed: Testbed, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    async with Pool(known_hosts=empty) as pool:
        r = await dx.run("true", testbed.plain)
        assert r.returncode == 255
        assert "Host key verification failed for plain" in r.stderr
        assert "unknown host key" in r.stderr and str(empty) in r.stderr
        with pytest.raises(HostKeyError, match="known_hosts"):
            await pool.connect(testbed.plain)


async def test_changed_host_key(testbed: Testbed, tmp_path: Path) -> None:
    fake = Path(str(testbed.wrong_key) + ".pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{testbed.ssh_port} {fake[0]} {fake[1]}\n")
    async with Pool(known_hosts=kh):
        r = await dx.run("true", testbed.plain)
        assert r.returncode == 255
        assert "CHANGED" in r.stderr and str(kh) in r.stderr


async def test_config_user_known_hosts_file_is_honoured(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    cfg = _config(
        tmp_path, testbed,
        f"Host viaconfig\n    HostName 127.0.0.1\n    Port {testbed.ssh_port}\n"
        f"    User {testbed.user}\n",
        known_hosts=empty,
    )
    monkeypatch.delenv("DISPATCH_KNOWN_HOSTS", raising=False)
    async with Pool(ssh_config=cfg):
        r = await dx.run("true", "viaconfig")
        assert r.returncode == 255 and str(empty) in r.stderr


async def test_accept_new_host_keys_records_unknown_key(testbed: Testbed, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    async with Pool(known_hosts=kh, accept_new_host_keys=True):
        r = await dx.run("true", testbed.plain)
        assert r.ok, r.stderr
    assert f"[127.0.0.1]:{testbed.ssh_port} ssh-ed25519 " in kh.read_text()


async def test_connect_errors_raise_from_pool_connect(testbed: Testbed, tmp_path: Path) -> None:
    cfg = _config(tmp_path, testbed, "Host ghost\n    HostName ghost.invalid\n")
    async with Pool(ssh_config=cfg) as pool:
        with pytest.raises(ConnectError, match="Could not resolve"):
            await pool.connect("ghost")


async def _session_sshd_pid(host: str) -> int:
    r = await dx.run("echo $PPID", host, login_shell=False)
    assert r.ok, r.stderr
    return int(r.stdout)


async def _wait_gone(pid: int) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not _pid_gone(pid):  # gone or a zombie
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


async def test_reconnects_after_the_connections_sshd_died(testbed: Testbed, pool: Pool) -> None:
    pid = await _session_sshd_pid(testbed.plain)
    os.kill(pid, signal.SIGKILL)  # the per-connection sshd serving our pooled connection
    await _wait_gone(pid)
    r = await dx.run("echo back", testbed.plain)
    assert r.ok and r.stdout == "back\n", r.stderr
    assert pool.stats()[testbed.plain].connects == 2
    assert await _session_sshd_pid(testbed.plain) != pid


async def _mid_command(testbed: Testbed, tmp_name: str, retries: int) -> tuple[object, int]:
    log_file = f"/tmp/dispatch-midcmd-{tmp_name}"
    await dx.run(["rm", "-f", log_file], testbed.plain)
    cmd = f"echo $PPID >> {log_file}; sleep 30"
    task = asyncio.ensure_future(dx.run(cmd, testbed.plain, retries=retries))
    deadline = asyncio.get_running_loop().time() + 10
    pid = 0
    while not pid:
        assert asyncio.get_running_loop().time() < deadline
        out = await asyncio.to_thread(_read_remote_first_line, testbed, log_file)
        pid = int(out) if out else 0
        if not pid:
            await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    result = await asyncio.wait_for(task, 40)
    lines = await asyncio.to_thread(_count_remote_lines, testbed, log_file)
    await dx.run(["rm", "-f", log_file], testbed.plain)
    return result, lines


def _read_remote_first_line(testbed: Testbed, path: str) -> str:
    try:
        # The testbed's sshd runs on this machine: its /tmp is ours, read it directly (a
        # second channel would share the connection we are about to kill).
        with open(path, encoding="utf-8") as fh:
            return fh.readline().strip()
    except FileNotFoundError:
        return ""


def _count_remote_lines(testbed: Testbed, path: str) -> int:
    with open(path, encoding="utf-8") as fh:
        return len(fh.read().splitlines())


async def test_connection_killed_mid_command_is_not_rerun(testbed: Testbed, pool: Pool) -> None:
    result, lines = await _mid_command(testbed, "norerun", retries=0)
    assert result.returncode == 255 and result.may_have_run  # type: ignore[attr-defined]
    assert "may have run" in result.stderr  # type: ignore[attr-defined]
    assert lines == 1  # ran once, not re-run


async def test_connection_killed_mid_command_rerun_only_with_retries(
    testbed: Testbed, pool: Pool
) -> None:
    log_file = f"/tmp/dispatch-midcmd-retry-{os.getpid()}"
    await dx.run(["rm", "-f", log_file], testbed.plain)
    # First attempt: its connection is killed mid-command; the retry runs to completion.
    cmd = (
        f"echo $PPID >> {log_file}; "
        f"if [ $(wc -l < {log_file}) -eq 1 ]; then sleep 30; fi; echo finished"
    )
    task = asyncio.ensure_future(dx.run(cmd, testbed.plain, retries=1))
    deadline = asyncio.get_running_loop().time() + 10
    pid = ""
    while not pid:
        assert asyncio.get_running_loop().time() < deadline
        pid = await asyncio.to_thread(_read_remote_first_line, testbed, log_file)
        if not pid:
            await asyncio.sleep(0.05)
    os.kill(int(pid), signal.SIGKILL)
    result = await asyncio.wait_for(task, 40)
    assert result.ok and result.stdout == "finished\n", result
    assert await asyncio.to_thread(_count_remote_lines, testbed, log_file) == 2
    await dx.run(["rm", "-f", log_file], testbed.plain)


async def test_auth_failure_names_user_at_host_once(testbed: Testbed, pool: Pool) -> None:
    r = await dx.run("true", "nobody-here@" + testbed.plain)
    assert r.returncode == 255
    assert f"ssh: nobody-here@{testbed.plain}: Permission denied (publickey)" in r.stderr, r.stderr
    assert "nobody-here@nobody-here@" not in r.stderr


async def test_connect_timeouts_say_which_phase_stalled(testbed: Testbed, tmp_path: Path) -> None:
    """TCP up then silence (tarpit, a server stuck in user auth) is not "Connection timed
    out" of TCP; an unanswered SYN is."""
    stalling, tarpit = StallingSSHServer(), Tarpit()
    try:
        with blackhole_address() as addr:
            _, kw = fault_pool_kwargs(
                testbed, tmp_path,
                [Alias("stalled", stalling.port), Alias("tarpit", tarpit.port),
                 Alias("blackhole", 22, hostname=addr)],
                connect_timeout=2, known_hosts_extra=[stalling.known_hosts_line])
            async with Pool(**kw):
                res = await dx.run_many("true", ["stalled", "tarpit", "blackhole"])
    finally:
        stalling.stop()
        tarpit.stop()
    for host in ("stalled", "tarpit"):
        r = res[host]
        assert r.returncode == 255 and "SSH handshake/authentication timed out" in r.stderr, r
        assert "TCP connection was established" in r.stderr
    r = res["blackhole"]
    assert r.returncode == 255 and "Connection timed out (TCP connect)" in r.stderr, r
    assert stalling.auth_attempts >= 1
