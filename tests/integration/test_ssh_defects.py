"""Issue 16 defects of the ssh layer, against the real testbed sshd (MaxSessions 10).

Each test failed before its fix: timeouts that fill every channel could not kill (item 1),
one missing IdentityFile broke the host (item 5), a missing UserKnownHostsFile entry gave
a fake network error (item 6).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

import dispatch.aio as dx
from dispatch.ssh import Pool

from ..conftest import Testbed
from ..support.sshconf import Alias, write_fault_config


def _marker() -> str:
    return f"{random.randint(10_000, 99_999)}.{random.randint(100, 999)}"


async def _left(host: str, marker: str) -> str:
    """Processes still carrying ``marker``, seen through a fresh pool (fresh connection)."""
    async with Pool():
        r = await dx.run(["pgrep", "-af", f"sleep {marker}"], host, login_shell=False)
    assert r.returncode in (0, 1), r.stderr
    return r.stdout


async def test_timeouts_filling_every_channel_still_kill(testbed: Testbed) -> None:
    marker = _marker()
    async with Pool(max_connections_per_host=4, max_channels_per_connection=8) as pool:

        async def one() -> tuple[float, dx.RunResult]:
            t = time.monotonic()
            r = await dx.run(f"sleep {marker}", testbed.plain, timeout=2, login_shell=False)
            return time.monotonic() - t, r

        results = await asyncio.gather(*(one() for _ in range(32)))
        stats = pool.stats()[testbed.plain]
        # Really full capacity: 4 connections x 8. The peak may read more than 32: it
        # also counts the kill channels opened beyond the cap (Lease.sibling) when a
        # later reservation (the host's background command session) samples it.
        assert stats.peak_channels >= 32 and stats.peak_channels_per_connection >= 8, stats
    slowest = max(t for t, _ in results)
    assert slowest < 6.0, f"a timed-out call took {slowest:.1f}s to return (timeout=2)"
    for _, r in results:
        assert r.returncode == -1 and "timed out after 2s" in r.stderr, r.stderr
        assert "the remote process was killed" in r.stderr, r.stderr
    assert await _left(testbed.plain, marker) == ""


async def test_a_kill_that_could_not_run_is_not_claimed(testbed: Testbed) -> None:
    # A cap of MaxSessions (10) leaves the server no room for a kill channel beside the
    # timed-out commands: the result must say the kill was not confirmed, not claim it.
    marker = _marker()
    try:
        async with Pool(max_connections_per_host=1, max_channels_per_connection=10):
            results = await asyncio.gather(*(
                dx.run(f"sleep {marker}", testbed.plain, timeout=2, login_shell=False)
                for _ in range(10)
            ))
        assert await _left(testbed.plain, marker) != ""  # the processes did survive...
        for r in results:  # ...and no result says otherwise
            assert r.returncode == -1 and "the remote process was killed" not in r.stderr
            assert "killing the remote process could not be confirmed" in r.stderr, r.stderr
    finally:
        async with Pool():
            await dx.run(["pkill", "-f", f"sleep {marker}"], testbed.plain, login_shell=False)


async def test_a_missing_identity_file_is_skipped(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Like `Host *` blocks listing several keys: the first does not exist, the second works.
    # (IdentityFile accumulates over matching blocks: the alias's first, then Host *'s.)
    missing = tmp_path / "no_such_key"
    conf = write_fault_config(
        testbed, tmp_path,
        [Alias("twokeys", testbed.ssh_port, options={"IdentityFile": str(missing)})],
    )
    monkeypatch.setenv("DISPATCH_SSH_CONFIG", str(conf.config))
    async with Pool():
        r = await dx.run(["id", "-un"], "twokeys", login_shell=False)
    assert r.ok and r.stdout.strip() == testbed.user, r.stderr


async def test_a_missing_known_hosts_file_in_the_list_is_ignored(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `UserKnownHostsFile missing real`: ssh ignores the file that does not exist (yet).
    missing = tmp_path / "not_yet" / "known_hosts"
    real = tmp_path / "known_hosts"
    conf = write_fault_config(
        testbed, tmp_path,
        [Alias("twofiles", testbed.ssh_port, options={"UserKnownHostsFile": f"{missing} {real}"})],
    )
    monkeypatch.delenv("DISPATCH_KNOWN_HOSTS", raising=False)  # let the config decide
    async with Pool(ssh_config=conf.config, connect_retries=0):
        r = await dx.run(["id", "-un"], "twofiles", login_shell=False)
    assert r.ok and r.stdout.strip() == testbed.user, r.stderr
    assert not missing.exists()  # nothing was written there


def _alias_config(testbed: Testbed, tmp_path: Path, name: str, **options: str) -> Path:
    conf = write_fault_config(testbed, tmp_path, [Alias(name, testbed.ssh_port, options=options)])
    return conf.config


async def test_config_accept_new_records_an_unknown_key(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kh = tmp_path / "new" / "known_hosts"  # does not exist yet, like a fresh account's
    cfg = _alias_config(testbed, tmp_path, "acceptnew", UserKnownHostsFile=str(kh),
                        StrictHostKeyChecking="accept-new")
    monkeypatch.delenv("DISPATCH_KNOWN_HOSTS", raising=False)
    async with Pool(ssh_config=cfg, connect_retries=0):
        r = await dx.run(["id", "-un"], "acceptnew", login_shell=False)
    assert r.ok, r.stderr
    assert f"[127.0.0.1]:{testbed.ssh_port} " in kh.read_text()


async def test_config_strict_no_does_not_turn_checking_off(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kh = tmp_path / "empty_known_hosts"
    kh.write_text("")
    monkeypatch.delenv("DISPATCH_KNOWN_HOSTS", raising=False)
    cfg = _alias_config(testbed, tmp_path, "strictno", UserKnownHostsFile=str(kh),
                        StrictHostKeyChecking="no")
    async with Pool(ssh_config=cfg, connect_retries=0):
        r = await dx.run(["true"], "strictno", login_shell=False)
    assert r.returncode == 255 and "Host key verification failed" in r.stderr
    assert "StrictHostKeyChecking no is not honoured" in r.stderr
    assert kh.read_text() == ""  # nothing was recorded


async def test_user_known_hosts_file_none_does_not_turn_checking_off(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncssh reads "UserKnownHostsFile none" as "no host key checking at all"; ssh does
    # not (no user file: the key is unknown). Before the fix this connected unverified.
    monkeypatch.delenv("DISPATCH_KNOWN_HOSTS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/known_hosts to fall back on
    cfg = _alias_config(testbed, tmp_path, "nofile", UserKnownHostsFile="none")
    async with Pool(ssh_config=cfg, connect_retries=0):
        r = await dx.run(["true"], "nofile", login_shell=False)
    assert r.returncode == 255 and "Host key verification failed" in r.stderr, r.stderr
