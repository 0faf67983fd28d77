"""Command-session framing and eligibility; the session script run by a local bash.

The framer is fed the exact bytes a session shell writes, split at every possible
boundary; the init script and the per-command line are executed by /bin/bash here,
so the protocol is proven on a real shell, not inspected.
"""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from dispatch.errors import InvalidValueError
from dispatch.ssh.output import MemorySink, check_max_output, check_target, open_sink
from dispatch.ssh.sessions import INIT_SCRIPT, _Framer, command_line, eligible


def _feed(marker: bytes, stream: bytes, step: int) -> tuple[bytes, bytes | None, bool]:
    sink = MemorySink()
    f = _Framer(marker, sink)
    for i in range(0, len(stream), step):
        f.feed(stream[i:i + step])
    return bytes(sink.buf), None if f.trailer is None else bytes(f.trailer), f.done


@pytest.mark.parametrize("output", [
    b"", b"no newline", b"a\x00b\xff\xfe\n", b"x" * 70_000, b"abc:" * 10,
    b"0123456789abcdef0123456789abcdef", "ünï ✓\n".encode(),
])
@pytest.mark.parametrize("step", [1, 3, 31, 32, 33, 4096])
def test_framer_returns_output_byte_exact_at_any_chunking(output: bytes, step: int) -> None:
    marker = secrets.token_hex(16).encode() + b":"
    got, trailer, done = _feed(marker, output + marker + b"3 0\n", step)
    assert (got, trailer, done) == (output, b"3 0", True)


def test_framer_ignores_a_forged_marker_and_flags_late_bytes() -> None:
    marker = secrets.token_hex(16).encode() + b":"
    forged = secrets.token_hex(16).encode() + b":0 0\n"
    got, trailer, _ = _feed(marker, forged + marker[:-1] + b"!" + marker + b"0 0\n", 5)
    assert got == forged + marker[:-1] + b"!" and trailer == b"0 0"
    sink = MemorySink()
    f = _Framer(marker, sink)
    f.feed(marker + b"0 0\nlate")
    assert f.done and f.late and bytes(sink.buf) == b"late"


def test_framer_gives_up_on_an_endless_trailer() -> None:
    marker = b"m" * 33
    f = _Framer(marker, MemorySink())
    f.feed(marker + b"x" * 100)
    assert f.done and f.late


def test_memory_sink_caps_and_flags() -> None:
    s = MemorySink(5)
    s.write(b"abc")
    s.write(memoryview(b"defgh"))
    assert bytes(s.buf) == b"abcde" and s.truncated and s.text() == "abcde"
    assert not MemorySink(5).truncated


def test_output_arguments_are_checked(tmp_path: os.PathLike[str]) -> None:
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(InvalidValueError, match="max_output"):
            check_max_output(bad)
    with pytest.raises(InvalidValueError, match="stdout"):
        check_target("stdout", 42)
    with open(os.path.join(tmp_path, "t.txt"), "w") as text_file, \
            pytest.raises(InvalidValueError, match="binary"):
        check_target("stdout", text_file)
    with pytest.raises(InvalidValueError, match="cannot write"):
        open_sink("stdout", os.path.join(tmp_path, "no", "such", "dir"), None)


@pytest.mark.parametrize(("text", "kw", "ok"), [
    ("squeue -h", {}, True),
    ("echo $$", {}, False),
    ("echo ${$}", {}, False),
    ("setsid sleep 1 &", {}, False),
    ("cat", {"has_input": True}, False),
    ("cat big", {"streamed": True}, False),
    ("x" * 20_000, {}, False),
    ("sleep 1", {"timeout": 1000.0}, False),
    ("sleep 1", {"timeout": 10.0}, True),
])
def test_eligibility(text: str, kw: dict[str, object], ok: bool) -> None:
    args: dict[str, object] = {"has_input": False, "streamed": False, "timeout": None,
                               "max_timeout": 600.0, **kw}
    assert eligible(text, **args) is ok  # type: ignore[arg-type]


def _session(commands: list[tuple[str, str]]) -> tuple[bytes, bytes]:
    """Run the init script and one framed line per (run_id, text) in a local bash."""
    ready = "r" * 32
    lines = INIT_SCRIPT.replace("@READY@", ready)
    for i, (run_id, text) in enumerate(commands):
        lines += command_line(run_id, f"m{i:031d}", text)
    p = subprocess.run(["/bin/bash"], input=lines.encode(), capture_output=True, timeout=30)
    return p.stdout, p.stderr


def test_the_session_script_frames_status_and_isolates_commands() -> None:
    out, err = _session([
        ("a1", "cd /; export X=1; alias ll=ls; umask 077; echo $X; pwd"),
        ("a2", 'echo "${X:-unset}"; pwd | grep -qx / && echo leaked; umask; alias ll'),
        ("a3", "printf 'no newline'; echo e >&2; exit 3"),
        ("a4", 'echo "$DISPATCH_RUN_ID $#"'),
        ("a5", "read line; echo \"[$line]\""),
        ("a6", "if"),
    ])
    assert out.startswith(("r" * 32 + ":1\n").encode()), out
    body = out.split(b"\n", 1)[1]
    assert body == (
        b"1\n/\nm" + b"0" * 31 + b":0 0\n"
        + b"unset\n0022\nm" + b"0" * 30 + b"1:1 0\n"
        + b"no newlinem" + b"0" * 30 + b"2:3 0\n"
        + b"a4 0\nm" + b"0" * 30 + b"3:0 0\n"
        + b"[]\nm" + b"0" * 30 + b"4:0 0\n"
        + b"m" + b"0" * 30 + b"5:2 0\n"
    ), body
    assert err.count(b"\n") >= 6 and b"e\nm" in err and b"syntax error" in err, err


def test_the_session_script_reports_leftover_processes() -> None:
    out, _ = _session([("b1", "sleep 0.5 >/dev/null 2>&1 &"), ("b2", "true")])
    lines = out.split(b"\n")
    assert lines[1].endswith(b":0 1") and lines[2].endswith(b":0 0"), out
