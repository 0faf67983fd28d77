"""Command building (quoting, login shell wrapper), the remote kill script, argument checks.

The wrapper and kill script are executed by a local /bin/sh here: what sshd would hand
to the user's shell is run the same way, so quoting is proven, not just inspected.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time

import pytest

from dispatch._validate import check_seconds
from dispatch.errors import InvalidValueError
from dispatch.results import RunResult, TunnelResult
from dispatch.ssh.commands import (
    check_hosts,
    command_string,
    kill_script,
    wrap_command,
)
from dispatch.ssh.pool import Pool
from dispatch.ssh.tunnel import _bad_args

HOSTILE = [
    "it's",
    'say "hi"',
    "a; touch /tmp/dispatch-pwned",
    "$(touch /tmp/dispatch-pwned)",
    "`touch /tmp/dispatch-pwned`",
    "line1\nline2",
    "  spaces  ",
    "ünïcödé ✓",
    "*",
    "$HOME",
    "\\",
    "",
]


def _sh(command: str, *, shell: str = "/bin/sh") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHELL": shell}
    return subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, text=True, env=env, timeout=20
    )


def test_list_commands_are_quoted_argument_by_argument() -> None:
    assert shlex.split(command_string(["printf", "%s|", *HOSTILE])) == ["printf", "%s|", *HOSTILE]
    assert command_string("echo $HOME") == "echo $HOME"


@pytest.mark.parametrize("login_shell", [True, False])
def test_wrapper_passes_hostile_arguments_literally(login_shell: bool) -> None:
    text = command_string(["printf", "%s\\0", *HOSTILE])
    proc = _sh(wrap_command(text, "abc123", login_shell=login_shell), shell="/bin/bash")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\0")[:-1] == HOSTILE
    assert not os.path.exists("/tmp/dispatch-pwned")


def test_wrapper_keeps_exit_status_stdin_and_tags_environment() -> None:
    wrapped = wrap_command('read x; echo "$x/$DISPATCH_RUN_ID"; exit 7', "tag1", login_shell=False)
    proc = subprocess.run(
        ["/bin/sh", "-c", wrapped], input="in\n", capture_output=True, text=True,
        env={**os.environ, "SHELL": "/bin/sh"}, timeout=20,
    )
    assert proc.returncode == 7
    assert proc.stdout == "in/tag1\n"


def test_kill_script_kills_tagged_tree_only() -> None:
    tagged = subprocess.Popen(
        ["env", "DISPATCH_RUN_ID=killme", "/bin/sh", "-c", "sleep 300 & sleep 300; wait"],
        start_new_session=True,
    )
    other = subprocess.Popen(["env", "DISPATCH_RUN_ID=other", "sleep", "300"])
    try:
        deadline = time.monotonic() + 10
        while _sh("pgrep -f 'sleep 300' | wc -l").stdout.strip() in ("", "0", "1", "2"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc = _sh(kill_script("killme"))
        assert proc.returncode == 0, proc.stderr
        assert tagged.wait(timeout=10) != 0
        assert other.poll() is None  # an untagged process is left alone
        left = _sh("grep -lzxF DISPATCH_RUN_ID=killme /proc/[0-9]*/environ 2>/dev/null").stdout
        assert left == ""
    finally:
        for p in (tagged, other):
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.parametrize("bad", [None, 3, ["ls", 3], b"ls", "a\x00b", [], "", "  \n", ()])
def test_bad_commands_raise(bad: object) -> None:
    with pytest.raises(InvalidValueError):
        command_string(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("local", "remote", "rhost", "fragment"),
    [
        (0, 80, "localhost", "invalid local_port 0"),
        (70000, 80, "localhost", "invalid local_port 70000"),
        ("8080", 80, "localhost", "invalid local_port '8080'"),
        (True, 80, "localhost", "invalid local_port True"),
        (8080, -1, "localhost", "invalid remote_port -1"),
        (8080, 80, "-oProxyCommand=x", "invalid remote_host"),
        (8080, 80, "two words", "invalid remote_host"),
    ],
)
def test_tunnel_argument_checks(
    local: object, remote: object, rhost: object, fragment: str
) -> None:
    msg = _bad_args("host", local, remote, rhost)
    assert msg is not None and fragment in msg
    assert _bad_args("host", 8080, 80, "node12") is None


@pytest.mark.parametrize("bad", [0, -5, True, "30", None])
def test_tunnel_timeout_checked(bad: object) -> None:
    assert _bad_args("host", 8080, 80, "localhost", bad) == (
        f"dispatch: forward_port: invalid timeout {bad!r} (a positive number of seconds)"
    )


def test_result_types() -> None:
    r = RunResult(0, "out", "")
    assert r.ok and not r.may_have_run
    assert not RunResult(255, "", "x", may_have_run=True).ok
    t = TunnelResult(0, 1, ["ssh"], local_port=1)
    assert t.ok and t.stderr == ""


@pytest.mark.parametrize("kw", ["max_channels_per_connection", "max_connections_per_host"])
def test_pool_rejects_bad_limits(kw: str) -> None:
    with pytest.raises(ValueError, match=kw):
        Pool(**{kw: 0})


async def test_named_ssh_config_that_does_not_exist_is_a_clear_error(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dispatch.aio as dx

    missing = f"{tmp_path}/no-such-config"
    async with Pool(ssh_config=missing):
        res = await dx.run("true", "somehost", timeout=10)
    assert res.returncode == 255 and not res.may_have_run
    assert res.stderr == (
        f"ssh: somehost: ssh config {missing} (from Pool(ssh_config=...)) does not exist\n"
    )
    monkeypatch.setenv("DISPATCH_SSH_CONFIG", missing)
    async with Pool():
        res = await dx.run("true", "somehost", timeout=10)
    assert "(from $DISPATCH_SSH_CONFIG) does not exist" in res.stderr


@pytest.mark.parametrize("bad", [0, -1, -0.5, True, "10", float("nan")])
def test_bad_timeouts_raise_naming_the_value(bad: object) -> None:
    with pytest.raises(InvalidValueError, match="timeout must be a positive number") as info:
        check_seconds("timeout", bad, optional=True)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [0, -0.5, True, "10"])
async def test_run_and_transfers_check_their_timeout_before_any_io(bad: object) -> None:
    from dispatch.ssh import copy_from, run, run_many, write_file

    calls = [
        run("true", "nohost", timeout=bad),  # type: ignore[arg-type]
        run_many("true", ["nohost"], timeout=bad),  # type: ignore[arg-type]
        write_file("nohost", "/tmp/x", b"", timeout=bad),  # type: ignore[arg-type]
        copy_from("nohost", "/tmp/x", "/tmp/y", timeout=bad),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(InvalidValueError) as info:
            await call
        assert str(info.value) == f"timeout must be a positive number of seconds, not {bad!r}"


def test_good_timeouts_pass() -> None:
    for ok in (None, 1, 0.25, 3600):
        check_seconds("timeout", ok, optional=True)


@pytest.mark.parametrize("bad", ["plain", b"plain", None, 3, ["plain", None], {1: "a"}])
def test_run_many_hosts_must_be_a_list_of_strings(bad: object) -> None:
    # a bare string would otherwise fan out to hosts 'p', 'l', 'a', 'i', 'n'
    with pytest.raises(InvalidValueError, match="hosts must be"):
        check_hosts(bad)
    assert check_hosts(("a", "b")) == ["a", "b"]
    assert check_hosts(h for h in {"a": 1}) == ["a"]
