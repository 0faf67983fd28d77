"""Riding the user's own OpenSSH ControlMaster to the `mfa` host: no login, no code.

The test starts a real master (`ssh -M`, answered once through SSH_ASKPASS), then runs
commands on `mfa` through dispatch with nobody able to answer a second factor.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import dispatch.aio as dx
from dispatch.ssh import Pool

from ..conftest import ROOT, Testbed
from ..support.realism import Realism, fresh_code

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def realism(testbed: Testbed) -> Realism:
    try:
        return Realism.from_env(testbed.env)
    except KeyError as exc:
        pytest.fail(f"`scripts/testbed env` lacks {exc}: run `scripts/testbed up`", pytrace=False)


def quiet_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "DISPLAY", "WAYLAND_DISPLAY")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def master(
    testbed: Testbed, realism: Realism, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A ControlMaster to `mfa` (started with one code); yields the ssh config naming it.

    Module-scoped (a code per master); the last test stops it.
    """
    import asyncio

    d = tmp_path_factory.mktemp("cm")
    sock = d / "cm"
    config = d / "ssh_config"
    config.write_text(f"Include {testbed.ssh_config}\nHost {realism.mfa}\n"
                      f"    ControlPath {d}/cm\n")
    askpass = d / "askpass"
    askpass.write_text('#!/bin/sh\necho "$DISPATCH_TEST_CODE"\n')
    askpass.chmod(0o700)
    # A private loop, not asyncio.run: that leaves no current loop behind, which
    # pytest-asyncio 0.26 (the minimum) then fails to find for the async tests.
    loop = asyncio.new_event_loop()
    try:
        the_code = loop.run_until_complete(
            fresh_code(realism.otp_secret, realism.otp_usersfile, testbed.user)
        )
    finally:
        loop.close()
    env = quiet_env(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
                    DISPATCH_TEST_CODE=the_code)
    subprocess.run(
        ["ssh", "-F", str(config), "-M", "-o", "ControlPersist=60", "-fN", realism.mfa],
        env=env, stdin=subprocess.DEVNULL, check=True, timeout=30, start_new_session=True,
    )
    try:
        assert sock.is_socket()
        yield config
    finally:
        subprocess.run(["ssh", "-F", str(config), "-O", "exit", realism.mfa],
                       capture_output=True, timeout=30)


def check(config: Path, host: str) -> int:
    return subprocess.run(["ssh", "-F", str(config), "-O", "check", host],
                          capture_output=True, timeout=30).returncode


async def test_run_rides_the_master_without_any_login(
    testbed: Testbed, realism: Realism, master: Path
) -> None:
    before = realism.otp_usersfile.read_text()
    async with Pool(ssh_config=master, kbdint=None) as pool:
        who = await dx.run("whoami; echo to-stderr >&2", realism.mfa)
        cat = await dx.run("cat", realism.mfa, input="through the master\n")
        status = await dx.run("exit 7", realism.mfa)
        many = await dx.run_many("echo many", [realism.mfa])
        stats = pool.stats()
    assert who.returncode == 0, who.stderr
    assert who.stdout == f"{testbed.user}\n" and who.stderr == "to-stderr\n"
    assert cat.stdout == "through the master\n"
    assert status.returncode == 7
    assert many[realism.mfa].stdout == "many\n"
    assert realism.mfa not in stats  # dispatch opened no connection of its own
    assert realism.otp_usersfile.read_text() == before  # and no code was used


async def test_a_timeout_through_the_master_kills_the_remote_command(
    testbed: Testbed, realism: Realism, master: Path
) -> None:
    seconds = 300000 + os.getpid() % 100000  # a sleep nobody else runs
    async with Pool(ssh_config=master, kbdint=None):
        res = await dx.run(f"sleep {seconds}; echo not reached", realism.mfa, timeout=2)
        # "slee[p]" does not match this check's own command line
        left = await dx.run(f"pgrep -f 'slee[p] {seconds}' || true", realism.mfa,
                            login_shell=False)
    assert res.returncode == -1
    assert "timed out after 2s (command)" in res.stderr, res.stderr  # the caller's, as given
    assert "the remote process was killed" in res.stderr, res.stderr
    assert left.ok and left.stdout.strip() == "", left.stdout


def sftp_children() -> list[str]:
    """Command lines of this process's children that run the sftp subsystem (``ssh -s``)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"-s" in argv:
            found.append(" ".join(a.decode() for a in argv))
    return found


async def test_transfers_ride_the_master_without_any_login(
    testbed: Testbed, realism: Realism, master: Path, tmp_path: Path
) -> None:
    before = realism.otp_usersfile.read_text()
    tree = tmp_path / "up"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB, every byte
    remote = f"/tmp/dispatch-cm-{os.getpid()}-{tmp_path.name}"
    async with Pool(ssh_config=master, kbdint=None) as pool:
        up = await dx.copy_to(tree, realism.mfa, remote)
        wrote = await dx.write_file(realism.mfa, f"{remote}/w.txt", b"written\n")
        down = await dx.copy_from(realism.mfa, remote, tmp_path / "down")
        listed = await dx.run(f"stat -c '%a %n' {remote}/w.txt; rm -rf {remote}", realism.mfa)
        stats = pool.stats()
        during = sftp_children()
    after = sftp_children()
    assert (up.returncode, wrote.returncode, down.returncode) == (0, 0, 0), (
        up.stderr + wrote.stderr + down.stderr)
    got = tmp_path / "down"
    assert (got / "a.txt").read_text() == "alpha\n"
    assert (got / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 4096
    assert (got / "w.txt").read_text() == "written\n"
    assert listed.stdout.split()[0] == "600"  # write_file's mode, through the master too
    # the three transfers shared one SFTP session on the master, closed with the pool
    assert len(during) == 1 and after == [], (during, after)
    assert realism.mfa not in stats  # dispatch opened no connection of its own
    assert realism.otp_usersfile.read_text() == before  # and no code was used


def test_blocking_dispatch_run_rides_the_master_in_a_fresh_process(
    testbed: Testbed, realism: Realism, master: Path
) -> None:
    script = f"""
        import dispatch
        r = dispatch.run("whoami", {realism.mfa!r})
        print(r.returncode, r.stdout.strip())
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, capture_output=True,
        text=True, timeout=60, stdin=subprocess.DEVNULL, start_new_session=True,
        env=quiet_env(DISPATCH_SSH_CONFIG=str(master)),
    )
    assert proc.stdout.split() == ["0", testbed.user], proc.stdout + proc.stderr


async def test_control_master_false_never_rides_it(
    testbed: Testbed, realism: Realism, master: Path
) -> None:
    async with Pool(ssh_config=master, kbdint=None, control_master=False):
        res = await dx.run("true", realism.mfa)
    assert res.returncode == 255 and "one-time password" in res.stderr
    assert check(master, realism.mfa) == 0  # still there, just not used


async def test_after_the_master_exits_dispatch_logs_in_itself(
    testbed: Testbed, realism: Realism, master: Path
) -> None:
    async with Pool(ssh_config=master, kbdint=None) as pool:
        assert (await dx.run("true", realism.mfa)).ok
        subprocess.run(["ssh", "-F", str(master), "-O", "exit", realism.mfa],
                       capture_output=True, timeout=30, check=True)
        assert check(master, realism.mfa) != 0
        res = await dx.run("true", realism.mfa)
        stats = pool.stats()[realism.mfa]
    # its own login needs the code, and nobody can answer here: it says so at once
    assert res.returncode == 255
    assert "the server accepted the key and asked for a one-time password" in res.stderr
    assert stats.connect_failures == 1
