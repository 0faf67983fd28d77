"""Logging in to the `mfa` host (key AND a one-time password) through the library.

A code is good once per 30 s step: every login takes `fresh_code` (the first unused step
of pam_oath's window), so these tests may wait for the next step.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

import dispatch.aio as dx
from dispatch.ssh import Pool
from dispatch.ssh.auth import CannotAnswer

from ..conftest import ROOT, Testbed
from ..support.realism import Realism, fresh_code, totp

pytestmark = pytest.mark.integration

PROMPT = "One-time password (OATH) for `{user}': "
NOBODY = "the server accepted the key and asked for a one-time password"


@pytest.fixture(scope="module")
def realism(testbed: Testbed) -> Realism:
    try:
        return Realism.from_env(testbed.env)
    except KeyError as exc:
        pytest.fail(f"`scripts/testbed env` lacks {exc}: run `scripts/testbed up`", pytrace=False)


async def code(realism: Realism, testbed: Testbed) -> str:
    return await fresh_code(realism.otp_secret, realism.otp_usersfile, testbed.user)


def wrong_code(realism: Realism) -> str:
    near = {totp(realism.otp_secret, time.time() + k * 30) for k in range(-3, 4)}
    return next(c for c in ("000000", "111111", "222222") if c not in near)


def no_terminal_env(**extra: str) -> dict[str, str]:
    """The environment of a process with no way to answer but what ``extra`` sets.

    In process (``DISPATCH_AGENT=off``): an agent some other test left running must not
    answer for it.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "DISPLAY", "WAYLAND_DISPLAY")}
    return {**env, "DISPATCH_AGENT": "off", **extra}


def run_script(
    script: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new session: no controlling terminal, as under cron or CI."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=ROOT,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        start_new_session=True,
    )


async def test_a_pool_callback_answers_the_one_time_password(
    testbed: Testbed, realism: Realism
) -> None:
    the_code = await code(realism, testbed)
    asked: list[tuple[str, str, str, list[tuple[str, bool]]]] = []

    async def answer(
        host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
    ) -> Sequence[str] | None:
        asked.append((host, name, instructions, list(prompts)))
        return [the_code]

    async with Pool(kbdint=answer) as pool:
        first = await dx.run("whoami", realism.mfa)
        again = await dx.run("echo again", realism.mfa)  # the same login: no second code
        connects = pool.stats()[realism.mfa].connects
    assert first.ok and first.stdout == f"{testbed.user}\n", first.stderr
    assert again.stdout == "again\n"
    assert asked == [(realism.mfa, "", "", [(PROMPT.format(user=testbed.user), False)])]
    assert connects == 1


async def test_askpass_answers_without_a_terminal(
    testbed: Testbed, realism: Realism, tmp_path: Path
) -> None:
    seen = tmp_path / "askpass-argv"
    askpass = tmp_path / "askpass"
    askpass.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {seen}\necho "$DISPATCH_TEST_CODE"\n')
    askpass.chmod(0o700)
    env = no_terminal_env(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
                          DISPATCH_TEST_CODE=await code(realism, testbed))
    proc = run_script(f"""
        import dispatch
        r = dispatch.run("whoami", {realism.mfa!r})
        print(r.returncode, r.stdout.strip(), r.stderr.strip())
    """, env)
    assert proc.stdout.split() == ["0", testbed.user], proc.stdout + proc.stderr
    # ssh's prompt: "(host) " + the server's prompt, as the askpass argument
    assert seen.read_text() == f"({realism.mfa}) " + PROMPT.format(user=testbed.user)


async def test_askpass_unset_require_needs_a_display(
    testbed: Testbed, realism: Realism, tmp_path: Path
) -> None:
    # SSH_ASKPASS set, SSH_ASKPASS_REQUIRE unset, no DISPLAY: ssh does not run it; neither
    # do we (and nothing else can answer, so it fails at once, saying why).
    askpass = tmp_path / "askpass"
    ran = tmp_path / "ran"
    askpass.write_text(f"#!/bin/sh\ntouch {ran}\necho 000000\n")
    askpass.chmod(0o700)
    proc = run_script(f"""
        import dispatch
        r = dispatch.run("whoami", {realism.mfa!r})
        print(r.returncode); print(r.stderr.strip())
    """, no_terminal_env(SSH_ASKPASS=str(askpass)))
    rc, message = proc.stdout.split("\n", 1)
    assert rc == "255", proc.stdout + proc.stderr
    assert NOBODY in message and "SSH_ASKPASS needs DISPLAY" in message
    assert not ran.exists()


async def test_with_nobody_to_answer_it_fails_at_once_saying_why(
    testbed: Testbed, realism: Realism
) -> None:
    before = realism.otp_usersfile.read_text()
    proc = run_script(f"""
        import time, dispatch
        t = time.monotonic()
        r = dispatch.run("whoami", {realism.mfa!r})
        print(round(time.monotonic() - t, 3)); print(r.returncode); print(r.stderr.strip())
    """, no_terminal_env())
    elapsed, rc, message = proc.stdout.split("\n", 2)
    assert rc == "255", proc.stdout + proc.stderr
    msg = message.strip()
    assert msg.startswith(f"ssh: {testbed.user}@{realism.mfa}: {NOBODY}"), msg
    for how in ("terminal", "SSH_ASKPASS", "Pool(kbdint=...)", "agent", "ControlMaster"):
        assert how in msg, (how, msg)
    assert "no usable key" not in msg and "not accepted" not in msg  # the key WAS accepted
    assert "no terminal and SSH_ASKPASS is not set" in msg
    assert float(elapsed) < 3.0, f"took {elapsed}s (connect timeout is 10 s)"
    assert realism.otp_usersfile.read_text() == before  # no code was spent or tried


async def test_pool_kbdint_none_never_answers(testbed: Testbed, realism: Realism) -> None:
    t = time.monotonic()
    async with Pool(kbdint=None, connect_timeout=10) as pool:
        res = await dx.run("whoami", realism.mfa)
        stats = pool.stats()[realism.mfa]
    assert time.monotonic() - t < 3.0
    assert res.returncode == 255 and NOBODY in res.stderr
    assert "Pool(kbdint=None) turns answering off" in res.stderr
    assert stats.connects == 0 and stats.connect_failures == 1  # not retried


async def test_a_wrong_code_fails_clearly_and_is_not_retried(
    testbed: Testbed, realism: Realism
) -> None:
    calls = 0
    bad = wrong_code(realism)

    async def answer(
        host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
    ) -> Sequence[str] | None:
        nonlocal calls
        calls += 1
        return [bad]

    async with Pool(kbdint=answer, connect_retries=3) as pool:
        res = await dx.run("whoami", realism.mfa, retries=2)
        stats = pool.stats()[realism.mfa]
    assert res.returncode == 255
    assert "accepted the key but refused the one-time password" in res.stderr, res.stderr
    assert PROMPT.format(user=testbed.user).strip() in res.stderr
    assert calls == 1  # one answer, one login attempt: auth failures are never retried
    assert stats.connect_failures == 1


async def test_a_handler_that_cannot_answer_gets_a_truthful_message(
    testbed: Testbed, realism: Realism
) -> None:
    async def cannot(
        host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
    ) -> Sequence[str] | None:
        return None

    async with Pool(kbdint=cannot):
        res = await dx.run("whoami", realism.mfa)
    assert res.returncode == 255
    assert NOBODY in res.stderr and "the kbdint handler gave no answer" in res.stderr


async def test_a_handler_raising_cannot_answer_says_why(
    testbed: Testbed, realism: Realism
) -> None:
    before = realism.otp_usersfile.read_text()

    async def no_reader(
        host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
    ) -> Sequence[str] | None:
        raise CannotAnswer("no badge reader attached")

    async with Pool(kbdint=no_reader) as pool:
        res = await dx.run("whoami", realism.mfa)
        stats = pool.stats()[realism.mfa]
    assert res.returncode == 255
    msg = res.stderr.strip()
    assert msg.startswith(f"ssh: {testbed.user}@{realism.mfa}: {NOBODY}"), msg
    assert "but nothing here can answer it (no badge reader attached)" in msg, msg
    assert "Pool(kbdint=...)" in msg and "raised" not in msg
    assert stats.connects == 0 and stats.connect_failures == 1
    assert realism.otp_usersfile.read_text() == before  # nothing was sent: no code spent


async def test_an_answer_slower_than_the_connect_timeout_logs_in(
    testbed: Testbed, realism: Realism, tmp_path: Path
) -> None:
    # ConnectTimeout bounds the network steps, not a human (or askpass) answering: an
    # askpass that takes 5 s under ConnectTimeout 3 still logs in, with no traceback.
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host {realism.mfa}\n    ConnectTimeout 3\nHost *\nInclude {testbed.ssh_config}\n"
    )
    asked = tmp_path / "asked"
    askpass = tmp_path / "askpass"
    askpass.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import asyncio, sys, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from tests.support.realism import fresh_code
        with open({str(asked)!r}, "a") as f:
            f.write(sys.argv[1] + "\\n")
        time.sleep(5)
        print(asyncio.run(fresh_code(Path({str(realism.otp_secret)!r}),
                                     Path({str(realism.otp_usersfile)!r}), {testbed.user!r})))
    """))  # fmt: skip
    askpass.chmod(0o700)
    env = no_terminal_env(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
                          DISPATCH_SSH_CONFIG=str(config))
    proc = run_script(f"""
        import time, dispatch
        t = time.monotonic()
        r = dispatch.run("whoami", {realism.mfa!r})
        print(round(time.monotonic() - t, 3), r.returncode, r.stdout.strip(), r.stderr.strip())
    """, env, timeout=150)
    elapsed, rc, *rest = proc.stdout.split()
    assert (rc, rest) == ("0", [testbed.user]), proc.stdout + proc.stderr
    assert float(elapsed) > 5.0  # the answer really came after the 3 s connect timeout
    assert asked.read_text().count("\n") == 1
    assert proc.stderr == "", proc.stderr  # no "Cannot change state of finished Timeout"


async def test_a_second_factor_host_gets_one_connection_for_twenty_concurrent_calls(
    testbed: Testbed, realism: Realism
) -> None:
    the_code = await code(realism, testbed)
    asked = 0

    async def answer(
        host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
    ) -> Sequence[str] | None:
        nonlocal asked
        asked += 1
        return [the_code]

    async with Pool(kbdint=answer) as pool:
        results = await asyncio.gather(
            *(dx.run(f"sleep 0.3; echo {i}", realism.mfa) for i in range(20))
        )
        stats = pool.stats()[realism.mfa]
    assert [r.returncode for r in results] == [0] * 20, [r.stderr for r in results if not r.ok]
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(20)]
    assert asked == 1
    assert (stats.connects, stats.peak_connections) == (1, 1), stats
    # more calls than channels were in flight: the rest waited for a channel of that login
    assert stats.peak_channels_per_connection == pool.max_channels_per_connection, stats


async def test_a_slow_answer_is_bounded_by_kbdint_timeout(
    testbed: Testbed, realism: Realism
) -> None:
    async def slow(
        host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
    ) -> Sequence[str] | None:
        await asyncio.sleep(60)
        return ["123456"]

    t = time.monotonic()
    async with Pool(kbdint=slow, kbdint_timeout=1.0):
        res = await dx.run("whoami", realism.mfa)
    assert time.monotonic() - t < 5.0
    assert res.returncode == 255 and "no answer within 1s" in res.stderr, res.stderr


async def test_plain_hosts_still_log_in_with_the_key_alone(testbed: Testbed) -> None:
    async def never(
        host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
    ) -> Sequence[str] | None:
        raise AssertionError("a key-only host asked for a second factor")

    async with Pool(kbdint=never):
        res = await dx.run("whoami", testbed.plain)
    assert res.ok and res.stdout == f"{testbed.user}\n"
