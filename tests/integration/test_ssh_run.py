"""run / run_many / is_reachable against the testbed's real sshd (MaxSessions 10, MaxStartups
10:30:100 left at OpenSSH defaults), logged in as the non-root user."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import dispatch.aio as dx
from dispatch.errors import InvalidValueError
from dispatch.ssh import Pool, current_pool

from ..conftest import Testbed

HOSTILE = [
    "it's",
    'say "hi"',
    "a; touch /tmp/dispatch-pwned-run",
    "$(touch /tmp/dispatch-pwned-run)",
    "`touch /tmp/dispatch-pwned-run`",
    "line1\nline2",
    "  two  spaces  ",
    "ünïcödé ✓ 日本",
    "*",
    "$HOME",
    "\\",
    "",
    "-n",
]


@pytest.fixture
async def pool(testbed: Testbed) -> AsyncIterator[Pool]:
    async with Pool() as p:
        yield p


async def test_pool_fixture_is_current(pool: Pool) -> None:
    assert current_pool() is pool


async def test_run_happy_path(testbed: Testbed, pool: Pool) -> None:
    r = await dx.run("echo out; echo err >&2; exit 3", testbed.plain)
    assert (r.returncode, r.stdout, r.stderr, r.may_have_run) == (3, "out\n", "err\n", False)
    assert not r.ok
    who = await dx.run(["id", "-un"], testbed.plain)
    assert who.ok and who.stdout.strip() == testbed.user
    who2 = await dx.run("id -un", testbed.plain2)
    assert who2.stdout.strip() == testbed.user2
    killed = await dx.run("kill -TERM $$", testbed.plain)
    assert killed.returncode == 143 and "signal TERM" in killed.stderr


async def test_user_at_host_colon_port(testbed: Testbed, pool: Pool) -> None:
    host = f"{testbed.user2}@127.0.0.1:{testbed.ssh_port}"
    r = await dx.run(["id", "-un"], host, login_shell=False)
    assert r.ok, r.stderr
    assert r.stdout.strip() == testbed.user2
    assert pool.stats()[host].connects == 1


async def test_login_shell_by_default(testbed: Testbed, pool: Pool) -> None:
    login = await dx.run("shopt -q login_shell && echo login || echo plain", testbed.plain)
    assert login.stdout == "login\n"
    plain = await dx.run(
        "shopt -q login_shell && echo login || echo plain", testbed.plain, login_shell=False
    )
    assert plain.stdout == "plain\n"


async def test_stdin_and_binary_output(testbed: Testbed, pool: Pool) -> None:
    r = await dx.run("cat; printf '\\377\\376'", testbed.plain, input="héllo\n")
    assert r.ok and r.stdout == "héllo\n\ufffd\ufffd"
    big = await dx.run("head -c 300000 /dev/urandom", testbed.plain)
    assert big.ok and len(big.stdout) > 0
    closed = await dx.run("cat; echo done", testbed.plain)  # stdin is at EOF, never hangs
    assert closed.stdout == "done\n"


async def test_hostile_list_arguments_pass_literally(testbed: Testbed, pool: Pool) -> None:
    r = await dx.run(["printf", "%s\\0", *HOSTILE], testbed.plain)
    assert r.ok, r.stderr
    assert r.stdout.split("\0")[:-1] == HOSTILE
    check = await dx.run("ls /tmp/dispatch-pwned-run", testbed.plain)
    assert check.returncode != 0  # nothing was executed by the hostile arguments


async def test_timeout_kills_remote_process_tree(testbed: Testbed, pool: Pool) -> None:
    marker = f"{random.randint(10_000, 99_999)}.{random.randint(100, 999)}"
    cmd = f"sleep {marker} & sh -c 'sleep {marker}' & sleep {marker}; echo never"
    r = await dx.run(cmd, testbed.plain, timeout=1.5)
    assert r.returncode == -1
    assert "timed out" in r.stderr and r.stdout == ""
    left = await dx.run(["pgrep", "-f", f"sleep {marker}"], testbed.plain, login_shell=False)
    assert left.returncode == 1, f"still running: {left.stdout}"
    assert (await dx.run("echo ok", testbed.plain)).ok  # the pool is still usable


async def test_cancelled_run_kills_remote_command(testbed: Testbed, pool: Pool) -> None:
    marker = f"{random.randint(10_000, 99_999)}.{random.randint(100, 999)}"
    task = asyncio.ensure_future(dx.run(f"echo started; sleep {marker}", testbed.plain))
    probe = ["pgrep", "-f", f"sleep {marker}"]
    deadline = asyncio.get_running_loop().time() + 15
    while not (await dx.run(probe, testbed.plain, login_shell=False)).ok:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    while (await dx.run(probe, testbed.plain, login_shell=False)).ok:
        assert asyncio.get_running_loop().time() < deadline, "remote command survived cancel"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("then", ["await", "leave-pool"])
async def test_cancelled_run_is_killed_before_cancel_completes(testbed: Testbed, then: str) -> None:
    """The kill is done when the cancelled task ends, even if the pool closes right after
    (the docs' ``async with Pool(): ... task.cancel()`` pattern)."""
    marker = f"{random.randint(10_000, 99_999)}.{random.randint(100, 999)}"
    probe = ["pgrep", "-f", f"sleep {marker}"]
    async with Pool() as p:
        task = asyncio.ensure_future(dx.run(f"echo started; sleep {marker}", testbed.plain))
        deadline = asyncio.get_running_loop().time() + 15
        while not (await dx.run(probe, testbed.plain, login_shell=False)).ok:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        task.cancel()
        if then == "await":
            with pytest.raises(asyncio.CancelledError):
                await task
            left = await dx.run(probe, testbed.plain, login_shell=False)
            assert left.returncode == 1, f"still running right after cancel: {left.stdout}"
    assert p.closed
    async with Pool():
        left = await dx.run(probe, testbed.plain, login_shell=False)
    assert left.returncode == 1, f"survived the pool closing: {left.stdout}"
    assert task.cancelled()


async def test_run_many_one_bad_host_spoils_nothing(testbed: Testbed, pool: Pool) -> None:
    hosts = [testbed.plain, testbed.plain2, "nobody-here@" + testbed.plain, testbed.plain]
    res = await dx.run_many(["hostname"], hosts)
    assert list(res) == hosts[:3]
    assert res[testbed.plain].ok and res[testbed.plain2].ok
    bad = res["nobody-here@" + testbed.plain]
    assert bad.returncode == 255 and "Permission denied" in bad.stderr


async def test_is_reachable(testbed: Testbed, pool: Pool) -> None:
    assert await dx.is_reachable(testbed.plain)
    assert not await dx.is_reachable("nobody-here@" + testbed.plain, timeout=5)


async def test_100_concurrent_runs_respect_channel_caps(testbed: Testbed) -> None:
    async with Pool(max_channels_per_connection=8, max_connections_per_host=4) as pool:
        results = await asyncio.gather(
            *(dx.run("sleep 0.2; echo ok", testbed.plain) for _ in range(100))
        )
        assert [r.stdout for r in results] == ["ok\n"] * 100, [r for r in results if not r.ok][:3]
        st = pool.stats()[testbed.plain]
        assert st.peak_channels_per_connection <= 8
        assert st.peak_connections <= 4
        assert st.connects <= 4  # single flight: not one connection per call
        assert st.open_channels == 0


async def test_100_concurrent_first_calls_share_one_connection(testbed: Testbed) -> None:
    async with Pool(max_channels_per_connection=8, max_connections_per_host=1) as pool:
        results = await asyncio.gather(*(dx.run("true", testbed.plain) for _ in range(100)))
        assert all(r.ok for r in results)
        assert pool.stats()[testbed.plain].connects == 1


async def test_fleet_cold_fan_out_all_succeed(testbed: Testbed) -> None:
    assert len(testbed.fleet) == 50
    async with Pool() as pool:
        res = await dx.run_many("echo $USER", testbed.fleet)
        bad = {h: r for h, r in res.items() if not r.ok}
        assert not bad, list(bad.items())[:3]
        assert all(r.stdout == f"{testbed.user}\n" for r in res.values())
        warm = await dx.run_many("true", testbed.fleet)
        assert all(r.ok for r in warm.values())
        assert sum(s.connects for s in pool.stats().values()) == 50


async def test_idle_connections_close(testbed: Testbed) -> None:
    async with Pool(idle_timeout=0.2) as pool:
        assert (await dx.run("true", testbed.plain)).ok
        assert pool.stats()[testbed.plain].open_connections == 1
        deadline = asyncio.get_running_loop().time() + 10
        while pool.stats()[testbed.plain].open_connections:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert (await dx.run("true", testbed.plain)).ok  # reconnects lazily
        assert pool.stats()[testbed.plain].connects == 2


async def test_proxyjump_through_pooled_jump_host(testbed: Testbed, tmp_path: object) -> None:
    from pathlib import Path

    cfg = Path(str(tmp_path)) / "config"
    cfg.write_text(
        f"Include {testbed.ssh_config}\n"
        "Host jumped\n"
        "    ProxyJump plain\n"
        f"    User {testbed.user2}\n"
    )
    # The testbed config's `Host *` block supplies HostName/Port/keys for both hops.
    async with Pool(ssh_config=cfg) as pool:
        r = await dx.run("id -un", "jumped")
        assert r.ok, r.stderr
        assert r.stdout.strip() == testbed.user2
        assert pool.stats()["plain"].open_connections == 1  # the jump host is pooled


async def test_failed_second_proxyjump_hop_unpins_the_first(
    testbed: Testbed, tmp_path: Path
) -> None:
    cfg = tmp_path / "config"
    cfg.write_text(
        f"Include {testbed.ssh_config}\n"
        "Host jumped2\n"
        f"    ProxyJump {testbed.plain},nobody-here@{testbed.plain}\n"
    )
    async with Pool(ssh_config=cfg) as pool:
        r = await dx.run("true", "jumped2", timeout=60)
        assert r.returncode == 255
        assert f"nobody-here@{testbed.plain}" in r.stderr and "Permission denied" in r.stderr, r
        # the first hop stays pooled but no longer pinned: the idle reaper may close it
        assert [c.pins for c in pool._slots[testbed.plain].conns] == [0]


async def test_bad_arguments_fail_clearly_naming_the_value(
    testbed: Testbed, pool: Pool, tmp_path: Path
) -> None:
    # A host string that cannot be an SSH destination never reaches a (wildcard) config.
    for bad in ("plain:abc", "plain:", ":22022", "user@", "pl ain", ""):
        res = await dx.run("true", bad)
        assert res.returncode == 255 and f"invalid SSH host {bad!r}" in res.stderr, (bad, res)
    assert testbed.plain + ":abc" not in pool.stats()
    with pytest.raises(InvalidValueError, match="hosts must be a list"):
        await dx.run_many("true", testbed.plain)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="command is empty"):
        await dx.run([], testbed.plain)
    with pytest.raises(InvalidValueError, match="input must be bytes or str, not int"):
        await dx.run("cat", testbed.plain, input=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="must be a str, not NoneType"):
        await dx.run("true", None)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="data must be bytes or str, not int"):
        await dx.write_file(testbed.plain, "~/x", 5)  # type: ignore[arg-type]
    for bad_local in (None, "", b"f"):
        with pytest.raises(InvalidValueError, match="local_path must be a str or Path"):
            await dx.copy_to(bad_local, testbed.plain, "~/x")  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError, match="local_path must be a str or Path"):
            await dx.copy_from(testbed.plain, "~/x", bad_local)  # type: ignore[arg-type]
    local = tmp_path / "f"
    local.write_text("x")
    for timeout in (0, -1, True):
        with pytest.raises(InvalidValueError, match=f"not {timeout!r}"):
            await dx.copy_to(local, testbed.plain, "~/x", timeout=timeout)
        with pytest.raises(InvalidValueError, match=f"not {timeout!r}"):
            await dx.copy_from(testbed.plain, "~/x", tmp_path / "g", timeout=timeout)
        with pytest.raises(InvalidValueError, match=f"not {timeout!r}"):
            await dx.run("true", testbed.plain, timeout=timeout)
    assert not (tmp_path / "g").exists()
