"""The agent's wire format and client-side argument handling (pure: socketpairs, no agent)."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import threading
from pathlib import Path

import pytest

from dispatch.agent import client, paths, protocol
from dispatch.results import RunResult


def test_frames_round_trip_and_large_ones_arrive_whole() -> None:
    a, b = socket.socketpair()
    with a, b:
        big = RunResult(0, "x" * 5_000_000, "é", may_have_run=True)
        sender = threading.Thread(target=protocol.send_frame,
                                  args=(a, protocol.encode(("result", big))))
        sender.start()
        message = protocol.FrameReader(b).read()
        sender.join()
        assert message == ("result", big)


def test_reader_resumes_a_frame_after_an_interrupt() -> None:
    a, b = socket.socketpair()
    with a, b:
        payload = protocol.encode(("hello", protocol.PROTOCOL, "1.0", 42))
        frame = struct.pack(">I", len(payload)) + payload
        a.sendall(frame[:7])  # header and a part of the body
        reader = protocol.FrameReader(b)
        previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(
            KeyboardInterrupt()))
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(KeyboardInterrupt):
                reader.read()  # blocks on the missing bytes until the "Ctrl-C"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        a.sendall(frame[7:])
        assert reader.read() == ("hello", protocol.PROTOCOL, "1.0", 42)


def test_eof_and_garbage_are_errors_not_hangs() -> None:
    a, b = socket.socketpair()
    with b:
        a.sendall(struct.pack(">I", 10) + b"abc")
        a.close()
        with pytest.raises(EOFError):
            protocol.FrameReader(b).read()
    with pytest.raises(protocol.ProtocolError, match="not a message"):
        protocol.decode(pickle.dumps(["not", "a", "tuple"]))
    with pytest.raises(protocol.ProtocolError, match="exceeds the limit"):
        protocol.header(protocol.MAX_FRAME)


def test_peer_uid_is_ours_on_a_socketpair() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert protocol.peer_uid(a) == os.getuid()


def test_runtime_dir_follows_xdg_and_falls_back_to_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    assert paths.socket_path() == Path("/run/user/1234/dispatch/agent.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert paths.socket_path() == Path(f"/tmp/dispatch-{os.getuid()}/agent.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/dir")  # not absolute: ignored
    assert paths.runtime_dir() == Path(f"/tmp/dispatch-{os.getuid()}")


def test_an_unsafe_runtime_dir_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(paths.AgentPathError, match="is a symlink"):
        paths.check_runtime_dir(link)
    os.chmod(target, 0o750)
    with pytest.raises(paths.AgentPathError, match="has mode 0750; it must be 0700"):
        paths.check_runtime_dir(target)
    os.chmod(target, 0o700)
    paths.check_runtime_dir(target)


def test_local_paths_become_absolute_against_the_callers_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    progress = print
    args, kwargs, cb = client._prepare("copy_to", ("a/b.txt", "h", "r"), {"progress": progress})
    assert args == (str(tmp_path / "a/b.txt"), "h", "r") and kwargs == {} and cb is progress
    args, kwargs, _ = client._prepare("copy_from", ("h", "r"), {"local_path": Path("x")})
    assert kwargs == {"local_path": tmp_path / "x"}
    args, _, _ = client._prepare("run", ("ls a/b", "h"), {})
    assert args == ("ls a/b", "h")  # remote text is never touched


def test_agent_lost_results_say_it_may_have_run() -> None:
    r = client._lost("run", ("sleep 9", "box"), {}, 77, "EOF")
    assert isinstance(r, RunResult) and r.returncode == 255 and r.may_have_run
    assert "dispatch agent (pid 77) was lost during run on box" in r.stderr
    many = client._lost("run_many", ("true", ["a", "b", "a"]), {}, 77, "EOF")
    assert list(many) == ["a", "b"] and all(v.may_have_run for v in many.values())
    assert client._lost("status", (1, "box"), {}, 77, "EOF") is client.LOCAL


def test_mode_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("", "use"), ("auto", "auto"), ("off", "off"), ("0", "off")):
        monkeypatch.setenv("DISPATCH_AGENT", value)
        assert client.mode() == expected


def test_without_an_agent_socket_calls_run_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("DISPATCH_AGENT", raising=False)
    assert client.call("run", ("true", "h"), {}) is client.LOCAL
    assert client.call("forward_port", (), {}) is client.LOCAL  # not served by the agent


def test_plain_run_result_is_the_fields_of_a_run_result_and_leaves_the_rest() -> None:
    from dispatch.results import RunResult

    result = RunResult(3, "out", "err", may_have_run=True)
    assert protocol.plain_run_result(result) == (3, "out", "err", True)
    # what crosses back unpickles without the dataclass machinery: plain builtins only
    assert pickle.loads(protocol.encode(("result", protocol.plain_run_result(result)))) == (
        "result", (3, "out", "err", True))  # fmt: skip
    other = {"host": RunResult(0, "", "")}  # run_many's dict is not flattened
    assert protocol.plain_run_result(other) is other
    assert protocol.plain_run_result(None) is None
