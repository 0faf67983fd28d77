"""Log in once: the agent on the `mfa` host (key AND a one-time password, pam_oath).

The agent relays the login prompt to the client whose call caused the login; that client
answers it with its own answerer (here ``SSH_ASKPASS`` with ``SSH_ASKPASS_REQUIRE=force``;
no process has a terminal). The askpass program appends a line (its parent's pid and the
prompt) to a counter file each time it is asked and prints a code pam_oath accepts once
(`fresh_code`: the first unused step of its window; a test may wait for the next step).
The agent itself is started without ``SSH_ASKPASS``: only a client can answer.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import ROOT, Testbed
from ..support.faults import kill_all, sshd_pids_serving
from ..support.realism import Realism
from .test_agent import AgentEnv, agent_env, agent_tcp_ports, wait_for

pytestmark = pytest.mark.integration

PY = sys.executable
NO_ANSWER_VARS = ("SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "DISPLAY", "WAYLAND_DISPLAY")


@pytest.fixture(scope="module")
def realism(testbed: Testbed) -> Realism:
    try:
        return Realism.from_env(testbed.env)
    except KeyError as exc:
        pytest.fail(f"`scripts/testbed env` lacks {exc}: run `scripts/testbed up`", pytrace=False)


@pytest.fixture
def agent(testbed: Testbed, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentEnv]:
    # The testbed's config (`ConnectTimeout 10`) as is: the time `fresh_code` may wait
    # for an unused step (~30 s) is answering time, which the connect timeout does not count.
    for var in NO_ANSWER_VARS:  # the agent (started from this env) cannot answer by itself
        monkeypatch.delenv(var, raising=False)
    with agent_env(monkeypatch) as a:
        yield a
        log = a.dir / "agent.log"
        if log.exists():  # shown with a failure
            sys.stderr.write(log.read_text()[-4000:])


class Askpass:
    """An SSH_ASKPASS program that counts how often it is asked and answers a fresh code."""

    def __init__(self, tmp: Path, realism: Realism, user: str) -> None:
        self.program = tmp / "askpass"
        self.counter = tmp / "asked"
        self.program.write_text(textwrap.dedent(f"""\
            #!{PY}
            import asyncio, os, sys
            from pathlib import Path
            sys.path.insert(0, {str(ROOT)!r})
            from tests.support.realism import fresh_code
            with open({str(self.counter)!r}, "a") as f:
                f.write(f"{{os.getppid()}} {{sys.argv[1]}}\\n")
            print(asyncio.run(fresh_code(Path({str(realism.otp_secret)!r}),
                                         Path({str(realism.otp_usersfile)!r}), {user!r})))
        """))  # fmt: skip
        self.program.chmod(0o700)

    def env(self) -> dict[str, str]:
        return {"SSH_ASKPASS": str(self.program), "SSH_ASKPASS_REQUIRE": "force"}

    def asked(self) -> list[tuple[int, str]]:
        """(pid of the process that ran askpass, prompt) per time it was asked."""
        if not self.counter.exists():
            return []
        rows = [line.split(" ", 1) for line in self.counter.read_text().splitlines()]
        return [(int(pid), prompt) for pid, prompt in rows]


def detached(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """A client with no terminal (new session, stdin from /dev/null), as under cron or CI."""
    return subprocess.Popen(
        argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def cli_run(env: dict[str, str], host: str, *cmd: str) -> subprocess.Popen[str]:
    return detached([PY, "-m", "dispatch.cli", "run", host, "--", *cmd], env)


def script_run(env: dict[str, str], host: str) -> subprocess.Popen[str]:
    code = f"import dispatch; r = dispatch.run('true', {host!r}); print(r.returncode, r.stderr)"
    return detached([PY, "-c", code], env)


def test_one_code_serves_ten_cli_calls_and_two_scripts_and_a_lost_connection_asks_once_more(
    agent: AgentEnv, testbed: Testbed, realism: Realism, tmp_path: Path
) -> None:
    askpass = Askpass(tmp_path, realism, testbed.user)
    env = {**agent.env, **askpass.env()}
    pid = agent.start()
    prompt = f"({realism.mfa}) One-time password (OATH) for `{testbed.user}': "

    first = cli_run(env, realism.mfa, "true")
    rc, _, err = finish(first)
    assert rc == 0, err
    # asked once, by the askpass of the client whose call caused the login (not the agent)
    assert askpass.asked() == [(first.pid, prompt)]
    for _ in range(9):
        rc, _, err = finish(cli_run(env, realism.mfa, "true"))
        assert rc == 0, err
    scripts = [script_run(env, realism.mfa) for _ in range(2)]  # at the same time
    for proc in scripts:
        rc, out, err = finish(proc)
        assert (rc, out) == (0, "0 \n"), err
    assert len(askpass.asked()) == 1, askpass.asked()
    row = agent.host_stats(realism.mfa)
    assert (row["connects"], row["open_connections"]) == (1, 1), row
    assert agent.status()["calls_served"] == 12
    (local_port,) = agent_tcp_ports(pid, realism.mfa_port)  # one session on the mfa sshd

    # the server drops the agent's connection: the next call logs in again, asking its client
    sshd = sshd_pids_serving(local_port, realism.mfa_port)
    assert sshd and pid not in sshd
    kill_all(sshd)
    wait_for(lambda: not agent_tcp_ports(pid, realism.mfa_port), "the connection to drop")
    again = cli_run(env, realism.mfa, "echo", "back")
    rc, out, err = finish(again)
    assert (rc, out) == (0, "back\n"), err
    assert askpass.asked()[1:] == [(again.pid, prompt)]
    rc, _, err = finish(script_run(env, realism.mfa))
    assert rc == 0, err
    assert len(askpass.asked()) == 2
    row = agent.host_stats(realism.mfa)
    assert (row["connects"], row["open_connections"]) == (2, 1), row
    assert len(agent_tcp_ports(pid, realism.mfa_port)) == 1


def test_without_agent_or_answerer_the_call_fails_at_once_saying_why(
    agent: AgentEnv, realism: Realism
) -> None:
    env = {k: v for k, v in agent.env.items() if k not in NO_ANSWER_VARS}
    started = time.monotonic()
    rc, out, err = finish(cli_run(env, realism.mfa, "true"), timeout=60)
    elapsed = time.monotonic() - started
    assert not agent.sock.exists()  # no agent ran: the call was in process
    assert rc == 255 and out == "", err
    assert (
        "the server accepted the key and asked for a one-time password (keyboard-interactive), "
        "but nothing here can answer it (no terminal and SSH_ASKPASS is not set)"
    ) in err
    assert "set SSH_ASKPASS" in err and "use the dispatch agent" in err
    assert elapsed < 10, elapsed  # at once: never waiting out the 120 s prompt timeout


def test_a_client_that_cannot_answer_fails_saying_why_and_the_next_one_logs_in(
    agent: AgentEnv, testbed: Testbed, realism: Realism, tmp_path: Path
) -> None:
    agent.start()
    mute = {k: v for k, v in agent.env.items() if k not in NO_ANSWER_VARS}
    rc, out, err = finish(cli_run(mute, realism.mfa, "true"), timeout=60)
    assert rc == 255 and out == "", err
    assert "asked for a one-time password" in err
    assert (
        "the calling process cannot answer it (no terminal and SSH_ASKPASS is not set); "
        "run it in a terminal, or set SSH_ASKPASS"
    ) in err
    row = agent.host_stats(realism.mfa)
    assert (row["connects"], row["open_connections"]) == (0, 0), row
    askpass = Askpass(tmp_path, realism, testbed.user)
    proc = cli_run({**agent.env, **askpass.env()}, realism.mfa, "echo", "in")
    rc, out, err = finish(proc)
    assert (rc, out) == (0, "in\n"), err
    assert [pid for pid, _ in askpass.asked()] == [proc.pid]
    rc, _, err = finish(cli_run(mute, realism.mfa, "true"))  # rides the login: no prompt
    assert rc == 0, err
    assert len(askpass.asked()) == 1
