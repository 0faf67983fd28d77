"""The client side of the agent: route a blocking call to a running agent, or say LOCAL.

``route`` is what the blocking facade calls before running anything in process: it
costs an ``os.stat`` of the socket when no agent runs, and imports only the standard
library (and `dispatch.results`) when one does, so a CLI call served by the agent never
loads asyncssh. ``DISPATCH_AGENT`` decides: unset (use an agent when one runs),
``auto`` (start one when none runs), ``off`` (never use one).

On a version skew the call runs in process and a WARNING says why, once per process. If
the agent dies during a call, a call that may have had an effect gets a failed result
(``RunResult`` 255 with ``may_have_run=True``; never a hang), a read-only query runs
again in process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable

from .._version import __version__
from . import paths, protocol

TYPE_CHECKING = False  # not typing's: a served CLI call skips importing typing

if TYPE_CHECKING:
    import logging
    from typing import Any, Final, TypeVar

    T = TypeVar("T")

__all__ = [
    "LOCAL",
    "Local",
    "AgentError",
    "route",
    "call",
    "mode",
    "start_agent",
    "stop_agent",
    "agent_status",
]


def _log() -> logging.Logger:
    """The ``dispatch.agent`` logger; `logging` is imported on first use (a served CLI call
    logs nothing and skips its ~5 ms import)."""
    import logging

    return logging.getLogger("dispatch.agent")


ENV = "DISPATCH_AGENT"
HELLO_TIMEOUT = 5.0  # seconds for the handshake; an agent that does not answer is skipped
START_TIMEOUT = 60.0  # seconds a starter waits for a new agent to listen
CLEANUP_WAIT = 20.0  # seconds an interrupted call waits for the agent's cleanup

#: Calls that only read: if the agent dies during one, it runs again in process.
READ_ONLY = frozenset({
    "is_reachable", "status", "queue", "job_info", "wait", "wait_until_running",
    "partitions", "partition_nodes", "node_info", "nodes_info", "available_gpus",
})  # fmt: skip
#: Where each transfer's local path is: (positional index, keyword name).
_LOCAL_PATHS = {"copy_to": (0, "local_path"), "copy_from": (2, "local_path")}


class Local:
    """The type of ``LOCAL``: "no agent served this call; run it in process"."""

    _instance: Local | None = None

    def __new__(cls) -> Local:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "LOCAL"


LOCAL: Final = Local()


class AgentError(RuntimeError):
    """The agent could not be started, stopped or asked (the message says why)."""


class _Lost(Exception):
    """The connection to the agent broke after the call was sent."""


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        _log().warning("%s", message)


def mode() -> str:
    """``DISPATCH_AGENT`` read: "off", "auto" or "use" (the default: use one that runs)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("off", "0", "no", "false", "never"):
        return "off"
    if value in ("auto", "start"):
        return "auto"
    return "use"


# --- connecting ----------------------------------------------------------------------------


class _Conn:
    """A handshaken connection to the agent."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.reader = protocol.FrameReader(sock)
        self.pid = pid

    def send(self, message: tuple[Any, ...]) -> None:
        protocol.send_frame(self.sock, protocol.encode(message))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _connect(control: bool = False) -> _Conn | None:
    """Connect and shake hands; None (with the reason logged) when no usable agent answers.

    With ``control`` (status, stop) an agent of another version is usable too.
    """
    path = paths.socket_file()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(HELLO_TIMEOUT)
        try:
            paths.check_runtime_dir(os.path.dirname(path))
        except paths.AgentPathError as exc:
            _warn_once(f"dir:{exc}", f"{exc}; not using the agent")
            sock.close()
            return None
        sock.connect(path)
        uid = protocol.peer_uid(sock)
        if uid != os.getuid():
            _warn_once(
                f"uid:{path}",
                f"dispatch agent: {path} is served by uid {uid}, not by "
                f"us (uid {os.getuid()}); not using it",
            )
            sock.close()
            return None
        conn = _Conn(sock, 0)
        conn.send(("hello", protocol.PROTOCOL, __version__))
        reply = conn.reader.read()
    except (FileNotFoundError, ConnectionRefusedError):
        _log().debug("dispatch agent: no agent listens on %s (stale socket)", path)
        sock.close()
        return None
    except (OSError, EOFError, protocol.ProtocolError) as exc:
        _warn_once(
            f"connect:{type(exc).__name__}",
            f"dispatch agent: {path} did not answer the "
            f"handshake ({exc or type(exc).__name__}); running in process",
        )
        sock.close()
        return None
    if reply[0] == "skew" and control and len(reply) > 2:
        sock.settimeout(None)
        conn.pid = int(reply[2])
        return conn
    if reply[0] == "skew":
        _warn_once(
            f"skew:{reply[1]}",
            f"dispatch agent: version skew: {reply[1]}; running in "
            "process (restart the agent: `dispatch agent stop; dispatch agent start`)",
        )
        sock.close()
        return None
    if reply[0] != "hello":
        _warn_once(
            "hello", f"dispatch agent: unexpected handshake {reply[0]!r}; running in process"
        )
        sock.close()
        return None
    sock.settimeout(None)
    conn.pid = int(reply[3])
    return conn


def _open(start: bool) -> _Conn | None:
    """A connection to the running agent; with ``start``, start one first if none answers."""
    try:
        os.stat(paths.socket_file())
    except OSError:
        if not start:
            return None
    else:
        conn = _connect()
        if conn is not None or not start:
            return conn
    try:
        start_agent()
    except (AgentError, OSError) as exc:
        _warn_once(
            f"start:{exc}", f"dispatch agent: could not start one ({exc}); running in process"
        )
        return None
    return _connect()


# --- calls ---------------------------------------------------------------------------------


def _absolute(value: Any) -> Any:
    """A local path made absolute against this process's cwd (same type); else as given."""
    if isinstance(value, str) and value:
        return os.path.abspath(value)
    if isinstance(value, os.PathLike):
        text = os.fspath(value)
        if isinstance(text, str) and text:
            from pathlib import Path

            return Path(os.path.abspath(text))
    return value


def _prepare(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], Callable[[int, int], object] | None]:
    """Arguments as the agent needs them: absolute local paths, the progress callback apart."""
    kwargs = dict(kwargs)
    progress = kwargs.pop("progress", None)
    where = _LOCAL_PATHS.get(name)
    if where is not None:
        index, keyword = where
        if len(args) > index:
            args = (*args[:index], _absolute(args[index]), *args[index + 1 :])
        elif keyword in kwargs:
            kwargs[keyword] = _absolute(kwargs[keyword])
    return args, kwargs, progress


def _env() -> dict[str, str | None]:
    """The settings of this process that choose the agent's pool (absolute paths)."""
    env: dict[str, str | None] = {}
    for var in ("DISPATCH_SSH_CONFIG", "DISPATCH_KNOWN_HOSTS"):
        value = os.environ.get(var)
        env[var] = os.path.abspath(os.path.expanduser(value)) if value else None
    return env


def route(
    afn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T | Local:
    """Run a blocking call in the agent when one serves it, else return ``LOCAL``.

    Args:
        afn: the coroutine function of `dispatch.aio` being called.
        args: its positional arguments.
        kwargs: its keyword arguments.

    Returns:
        The call's result (as the in-process call would return it), or ``LOCAL`` when
        the call is not one the agent serves, no agent runs, or it cannot be used.
    """
    import threading  # loaded already wherever the blocking facade runs

    if threading.current_thread().name == "dispatch-loop":  # in process, this is an error
        return LOCAL
    name = getattr(afn, "__name__", "")
    if name not in protocol.ALLOWED or not getattr(afn, "__module__", "").startswith("dispatch."):
        return LOCAL
    result: T | Local = call(name, args, kwargs)
    return result


def call(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, plain: bool = False
) -> Any:
    """Run the agent-served call ``name`` there; ``LOCAL`` when that is not possible.

    Args:
        name: a name in ``protocol.ALLOWED`` (a function of `dispatch.aio`).
        args: its positional arguments.
        kwargs: its keyword arguments.
        plain: a `RunResult` comes back as ``(returncode, stdout, stderr, may_have_run)``
            (the CLI's fast path: no dataclass machinery to unpickle it).

    Returns:
        The call's result, or ``LOCAL``.

    Raises:
        KeyboardInterrupt: after the agent cancelled the call (its cleanup done).
    """
    how = mode()
    if how == "off" or name not in protocol.ALLOWED:
        return LOCAL
    try:
        os.stat(paths.socket_file())  # the cheap test, before any socket work
    except OSError:
        if how != "auto":
            return LOCAL
    args, kwargs, progress = _prepare(name, args, kwargs)
    try:
        payload = protocol.encode(
            ("call", name, args, kwargs, _env(), progress is not None, plain)
        )
    except Exception as exc:  # a callable or another local object among the arguments
        _log().debug("dispatch agent: %s runs in process (arguments not portable: %s)", name, exc)
        return LOCAL
    conn = _open(start=how == "auto")
    if conn is None:
        return LOCAL
    try:
        try:
            protocol.send_frame(conn.sock, payload)
        except OSError as exc:  # not delivered: the agent never saw the call
            _log().debug("dispatch agent: sending %s failed (%s); running in process", name, exc)
            return LOCAL
        try:
            return _converse(conn, progress)
        except _Lost as exc:
            return _lost(name, args, kwargs, conn.pid, str(exc))
    finally:
        conn.close()


def _converse(conn: _Conn, progress: Callable[[int, int], object] | None) -> Any:
    """Read the agent's frames until the call's result; relay prompts, progress, Ctrl-C."""
    interrupted: BaseException | None = None
    deadline: float | None = None
    while True:
        try:
            if deadline is not None:
                conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
            message = conn.reader.read()
        except (KeyboardInterrupt, SystemExit) as exc:
            if interrupted is not None:  # a second Ctrl-C: stop waiting for the cleanup
                raise interrupted from None
            interrupted = exc
            deadline = time.monotonic() + CLEANUP_WAIT
            with contextlib.suppress(OSError):
                conn.send(("cancel",))
            continue
        except TimeoutError:
            assert interrupted is not None
            _log().warning(
                "dispatch: an interrupted call did not finish its cleanup in the agent within %ss",
                CLEANUP_WAIT,
            )
            raise interrupted from None
        except (EOFError, OSError, protocol.ProtocolError) as exc:
            if interrupted is not None:
                raise interrupted from None
            raise _Lost(str(exc) or type(exc).__name__) from None
        kind = message[0]
        if kind == "progress":
            if progress is not None and interrupted is None:
                progress(message[1], message[2])
        elif kind == "prompt":
            answers: list[str] | None = None
            why: str | None = "the call was interrupted"
            if interrupted is None:
                try:
                    answers, why = _answer(message[2:])
                except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C at the prompt
                    interrupted = exc
                    deadline = time.monotonic() + CLEANUP_WAIT
                    with contextlib.suppress(OSError):
                        conn.send(("cancel",))
            with contextlib.suppress(OSError):
                conn.send(("answer", message[1], answers, why))
        elif interrupted is not None:  # the call ended (cancelled or not): re-raise
            raise interrupted
        elif kind == "result":
            return message[1]
        elif kind == "error":
            raise message[1]
        else:
            raise _Lost(f"unexpected message {kind!r}")


def _answer(prompt: tuple[Any, ...]) -> tuple[list[str] | None, str | None]:
    """Answer a relayed login prompt here (terminal or askpass); never raises but Ctrl-C."""
    from .answer import answer

    try:
        return answer(*prompt)
    except Exception as exc:  # a broken terminal or askpass: the login fails, we do not
        return None, f"answering failed: {type(exc).__name__}: {exc}"


def _lost(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], pid: int, why: str) -> Any:
    """What a call returns when the agent went away while it ran (never a hang)."""
    if name in READ_ONLY:
        _warn_once(
            f"lost:{pid}",
            f"dispatch agent (pid {pid}) went away during {name} ({why}); "
            "running it again in process",
        )
        return LOCAL
    from ..results import RunResult

    def failed(host: object) -> RunResult:
        return RunResult(255, "", (
            f"dispatch: the connection to the dispatch agent (pid {pid}) was lost during "
            f"{name} on {host} ({why}); it may have run (it was not re-run)\n"
        ), may_have_run=True)  # fmt: skip

    if name == "run_many":
        hosts = args[1] if len(args) > 1 else kwargs.get("hosts", [])
        return {h: failed(h) for h in dict.fromkeys(hosts)}
    index = 0 if name in ("copy_from", "write_file") else 1  # where the host argument is
    host = args[index] if len(args) > index else kwargs.get("host", "?")
    if name == "submit":
        from ..slurm import SlurmResult

        return SlurmResult(None, failed(host))
    return failed(host)


# --- lifecycle -----------------------------------------------------------------------------


def start_agent(
    idle_timeout: float | None = None, keepalive: float | None = None
) -> tuple[int, bool]:
    """Start an agent in the background unless one answers already.

    Concurrent starters take turns on a lock beside the socket, so they leave one agent.

    Args:
        idle_timeout: seconds without clients before it exits (None: its default).
        keepalive: seconds between SSH keepalives (None: its default).

    Returns:
        The agent's pid, and whether this call started it.

    Raises:
        AgentError: it could not be started (the message says why; see its log).
    """
    import fcntl
    import subprocess

    paths.ensure_runtime_dir()
    with os.fdopen(os.open(paths.start_lock_path(), os.O_RDWR | os.O_CREAT, 0o600)) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect() if os.path.exists(paths.socket_file()) else None
        if conn is not None:
            conn.close()
            return conn.pid, False
        argv = [sys.executable, "-m", "dispatch.agent.server", "--detach"]
        if idle_timeout is not None:
            argv += ["--idle-timeout", str(idle_timeout)]
        if keepalive is not None:
            argv += ["--keepalive", str(keepalive)]
        read_end, write_end = os.pipe()
        try:
            with open(paths.log_path(), "ab") as logfile:
                os.chmod(paths.log_path(), 0o600)
                proc = subprocess.Popen(
                    [*argv, "--ready-fd", str(write_end)], stdin=subprocess.DEVNULL,
                    stdout=logfile, stderr=logfile, pass_fds=(write_end,), cwd="/",
                    start_new_session=True,
                )  # fmt: skip
            os.close(write_end)
            write_end = -1
            proc.wait(START_TIMEOUT)
            line = _read_line(read_end, START_TIMEOUT)
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
        if line.startswith("ready "):
            return int(line.split()[1]), True
        if line == "running":
            conn = _connect()
            if conn is not None:
                conn.close()
                return conn.pid, False
        raise AgentError(f"the agent did not start: {line or 'it exited'} (see {paths.log_path()})")


def _read_line(fd: int, timeout: float) -> str:
    """The first line written to pipe ``fd`` (until EOF or ``timeout``)."""
    import select

    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _ask(message: tuple[Any, ...]) -> tuple[int, tuple[Any, ...]] | None:
    """Send one control message; the agent's pid and its reply, or None without agent."""
    if not os.path.exists(paths.socket_file()):
        return None
    conn = _connect(control=True)
    if conn is None:
        return None
    try:
        conn.sock.settimeout(HELLO_TIMEOUT)
        conn.send(message)
        return conn.pid, conn.reader.read()
    except (OSError, EOFError, protocol.ProtocolError) as exc:
        raise AgentError(f"the agent (pid {conn.pid}) did not answer: {exc}") from None
    finally:
        conn.close()


def agent_status() -> dict[str, Any] | None:
    """The running agent's status (hosts, connections, sessions, age), or None.

    Returns:
        The status dict the agent reports, or None when no agent answers.
    """
    answer = _ask(("status",))
    return None if answer is None else dict(answer[1][1])


def stop_agent(timeout: float = 30.0) -> int | None:
    """Stop the running agent and wait until it has closed its connections.

    Args:
        timeout: seconds to wait for it to exit.

    Returns:
        The stopped agent's pid, or None when none was running.

    Raises:
        AgentError: it did not exit within ``timeout`` seconds.
    """
    answer = _ask(("stop",))
    if answer is None:
        return None
    pid = answer[0]
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise AgentError(f"the agent (pid {pid}) did not exit within {timeout:g}s")
        time.sleep(0.02)
    return pid


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
