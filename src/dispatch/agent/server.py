"""The agent process: one asyncio loop owning one pool per ssh config, serving a Unix socket.

Started by ``dispatch agent start`` (or a client with ``DISPATCH_AGENT=auto``) as
``python -m dispatch.agent.server --detach``. It holds ``agent.lock`` (flock) for its
whole life, so two starters never leave two agents; it replaces a stale socket file
(there is no listener while it holds the lock); it accepts only peers of its own uid
(``SO_PEERCRED``); and it exits after ``--idle-timeout`` seconds without clients.

Each call runs as a task in the pool's context (``current_pool()`` inside it is the
agent's pool for the caller's ssh config), exactly as the blocking facade runs it in
process, so results, ``may_have_run``, timeouts and the remote kill on cancellation are
the library's own. A client that sends ``cancel`` (Ctrl-C) or goes away cancels its
call's task: its cleanup (killing the remote command) finishes before the reply.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import dataclasses
import fcntl
import itertools
import logging
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..ssh.auth import CannotAnswer, KbdintHandler
from ..ssh.config import default_ssh_config, parse_host, read_host_option
from . import paths, protocol

__all__ = [
    "Agent",
    "ClientCannotAnswer",
    "relay_kbdint",
    "main",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_KEEPALIVE",
]

log = logging.getLogger("dispatch.agent")

DEFAULT_IDLE_TIMEOUT = 1800.0  # seconds without clients before the agent exits
DEFAULT_KEEPALIVE = 30.0  # seconds between SSH keepalives on the agent's connections
_HELLO_TIMEOUT = 10.0
_PROMPT_TIMEOUT = 120.0  # seconds a relayed login prompt may wait for its answer (as in process)
_CLEANUP_WAIT = 20.0  # seconds a cancelled call gets for its cleanup at shutdown
_PROGRESS_EVERY = 0.05  # seconds between relayed progress frames


class ClientCannotAnswer(CannotAnswer):
    """No client can answer a relayed login prompt; the text says why (shown to the caller).

    A `CannotAnswer`, so the failed login reads as in process: "... nothing here can
    answer it (<this text>)".
    """


async def relay_kbdint(
    host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
) -> Sequence[str]:
    """Keyboard-interactive for the agent's pools: ask the client whose call caused the login.

    The client answers as an in-process login would (its terminal, or ``SSH_ASKPASS`` as
    ``SSH_ASKPASS_REQUIRE`` says), so one code typed there serves every later process.

    Args:
        host: the host asking.
        name: the server's name for the challenge.
        instructions: the server's instructions.
        prompts: (prompt text, echo) pairs.

    Returns:
        The client's answers.

    Raises:
        ClientCannotAnswer: no call of a client caused this login, the client cannot
            answer (no terminal, no askpass: the message says so), or it went away.
    """
    client = _caller.get()
    if client is None:
        log.warning("dispatch agent: %s asked for a login code, but no client is waiting", host)
        raise ClientCannotAnswer("dispatch agent: no client's call is waiting for this login")
    return await client.ask(host, name, instructions, prompts)


def _relay_for(ssh_config: Path) -> KbdintHandler:
    """`relay_kbdint` for a pool on ``ssh_config``, which honours ``BatchMode yes`` there
    as the in-process answerer does (no prompts for such a host)."""

    async def relay(
        host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
    ) -> Sequence[str]:
        try:
            alias = parse_host(host).host
        except ValueError:
            alias = host
        batch = read_host_option(ssh_config, alias, "BatchMode")
        if (batch or "").lower() in ("yes", "true"):
            raise ClientCannotAnswer("the ssh config says BatchMode yes (no prompts)")
        return await relay_kbdint(host, name, instructions, prompts)

    return relay


class _PoolHolder:
    """One pool, entered by a task that keeps it open; calls run in a copy of its context."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.ready: asyncio.Future[contextvars.Context] = asyncio.get_running_loop().create_future()
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self._hold())
        self.connected_at: dict[str, tuple[int, float]] = {}  # host -> (connects, when)

    async def _hold(self) -> None:
        async with self.pool:  # makes it current in this task's context
            self.ready.set_result(contextvars.copy_context())
            await self.stop.wait()

    def note_connects(self) -> None:
        """Remember when each host's latest connection was made (for ``status``)."""
        for host, st in self.pool.stats().items():
            seen = self.connected_at.get(host)
            if seen is None or seen[0] != st.connects:
                self.connected_at[host] = (st.connects, time.time())

    async def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self.task, _CLEANUP_WAIT)


class Agent:
    """The agent's state: pools by ssh config, connected clients, counters, idle clock."""

    def __init__(self, *, idle_timeout: float, keepalive: float | None) -> None:
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        self.started = time.time()
        self.pools: dict[tuple[str | None, str | None], _PoolHolder] = {}
        self.clients: set[_Client] = set()
        self.in_flight = 0
        self.served = 0
        self.last_active = time.monotonic()
        self.stopping = asyncio.Event()

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def holder(self, env: dict[str, str | None]) -> _PoolHolder:
        """The pool for a client's ``DISPATCH_SSH_CONFIG``/``DISPATCH_KNOWN_HOSTS`` (made once)."""
        key = (env.get("DISPATCH_SSH_CONFIG"), env.get("DISPATCH_KNOWN_HOSTS"))
        holder = self.pools.get(key)
        if holder is None:
            from ..aio import Pool

            config = Path(key[0]) if key[0] else default_ssh_config()
            pool = Pool(
                ssh_config=key[0],
                known_hosts=key[1],
                keepalive_interval=self.keepalive,
                idle_timeout=None,  # the agent keeps its logins; it exits when idle
                kbdint=_relay_for(config),  # login prompts go to the calling client
                kbdint_timeout=_PROMPT_TIMEOUT,
            )
            holder = self.pools[key] = _PoolHolder(pool)
        return holder

    def status(self) -> dict[str, Any]:
        """What ``dispatch agent status`` shows (plain data: the client imports nothing)."""
        now = time.time()
        pools = []
        for (config, known), holder in self.pools.items():
            hosts = []
            for host, st in sorted(holder.pool.stats().items()):
                when = holder.connected_at.get(host, (0, now))[1]
                row = dataclasses.asdict(st)
                row["connected_for"] = now - when if st.open_connections else None
                hosts.append(row)
            pools.append({"ssh_config": config, "known_hosts": known, "hosts": hosts})
        return {
            "pid": os.getpid(),
            "version": __version__,
            "protocol": protocol.PROTOCOL,
            "socket": str(paths.socket_path()),
            "age": now - self.started,
            "idle_timeout": self.idle_timeout,
            "idle_for": time.monotonic() - self.last_active if not self.clients else 0.0,
            "keepalive": self.keepalive,
            "clients": len(self.clients),
            "calls_in_flight": self.in_flight,
            "calls_served": self.served,
            "pools": pools,
        }

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        try:
            uid = protocol.peer_uid(sock)
        except OSError:
            uid = -1
        if uid != os.getuid():
            log.warning(
                "dispatch agent: refused a connection from uid %d (we are %d)", uid, os.getuid()
            )
            writer.close()
            return
        client = _Client(self, reader, writer)
        self.clients.add(client)
        self.touch()
        try:
            await client.serve()
        finally:
            self.clients.discard(client)
            self.touch()

    async def idle_watch(self) -> None:
        """Set ``stopping`` once no client was connected for ``idle_timeout`` seconds."""
        while not self.stopping.is_set():
            if self.clients:
                self.touch()
                left = self.idle_timeout
            else:
                left = self.last_active + self.idle_timeout - time.monotonic()
                if left <= 0:
                    log.info("dispatch agent: idle for %gs; exiting", self.idle_timeout)
                    self.stopping.set()
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), max(0.05, min(left, 60.0)))

    async def shutdown(self) -> None:
        """Cancel the calls in flight (their cleanup runs), then close every pool."""
        clients = list(self.clients)
        for client in clients:
            client.abort()
        await asyncio.gather(*(c.finished() for c in clients), return_exceptions=True)
        await asyncio.gather(*(h.close() for h in self.pools.values()), return_exceptions=True)


class _Client:
    """One client connection: a handshake, then calls one at a time, status, stop."""

    def __init__(
        self, agent: Agent, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.agent = agent
        self.reader = reader
        self.writer = writer
        self.call: asyncio.Task[None] | None = None
        self.inner: asyncio.Task[Any] | None = None
        self.cancel_requested = False
        self.prompts: dict[int, asyncio.Future[tuple[Sequence[str] | None, str | None]]] = {}
        self._ids = itertools.count(1)
        self._last_progress = 0.0

    # -- frames -----------------------------------------------------------------------------

    async def read(self) -> tuple[Any, ...]:
        head = await self.reader.readexactly(4)
        size = int.from_bytes(head, "big")
        if size >= protocol.MAX_FRAME:
            raise protocol.ProtocolError(f"frame of {size} bytes is too large")
        return protocol.decode(await self.reader.readexactly(size))

    def write(self, message: tuple[Any, ...]) -> None:
        payload = protocol.encode(message)
        self.writer.write(protocol.header(len(payload)))
        self.writer.write(payload)

    async def send(self, message: tuple[Any, ...]) -> None:
        self.write(message)
        await self.writer.drain()

    # -- the conversation -------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            hello = await asyncio.wait_for(self.read(), _HELLO_TIMEOUT)
            if hello[0] != "hello" or len(hello) < 3:
                raise protocol.ProtocolError(f"expected hello, got {hello[0]!r}")
            if hello[1] != protocol.PROTOCOL or hello[2] != __version__:
                why = (
                    f"the agent (pid {os.getpid()}) is dispatch {__version__} speaking "
                    f"protocol {protocol.PROTOCOL}; this process is dispatch {hello[2]} "
                    f"speaking protocol {hello[1]}"
                )
                # Calls are refused; status and stop still work (to stop an old agent).
                await self.send(("skew", why, os.getpid()))
            else:
                await self.send(("hello", protocol.PROTOCOL, __version__, os.getpid()))
            skewed = hello[1] != protocol.PROTOCOL or hello[2] != __version__
            while True:
                message = await self.read()
                if skewed and message[0] not in ("status", "stop"):
                    return
                if not await self.dispatch(message):
                    return
        except (EOFError, asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        except (protocol.ProtocolError, pickle.UnpicklingError) as exc:
            log.warning("dispatch agent: dropping a client: %s", exc)
        finally:
            self.abort()
            await self.finished()
            self.writer.close()

    async def dispatch(self, message: tuple[Any, ...]) -> bool:
        """Act on one message; False ends the conversation."""
        kind = message[0]
        if kind == "call":
            if self.call is not None and not self.call.done():
                raise protocol.ProtocolError("a second call while one is running")
            self.cancel_requested = False
            self.call = asyncio.create_task(self.run_call(*message[1:]))
        elif kind == "cancel":
            self.cancel_requested = True
            if self.inner is not None:
                self.inner.cancel()
        elif kind == "answer":
            fut = self.prompts.pop(message[1], None)
            if fut is not None and not fut.done():
                why = message[3] if len(message) > 3 else None
                fut.set_result((message[2], why))
        elif kind == "status":
            await self.send(("status", self.agent.status()))
        elif kind == "stop":
            log.info("dispatch agent: stop requested")
            await self.send(("stopping", os.getpid()))
            self.agent.stopping.set()
            return False
        else:
            raise protocol.ProtocolError(f"unknown message {kind!r}")
        return True

    def abort(self) -> None:
        """The client went away or the agent stops: cancel the call, answer prompts None."""
        for fut in self.prompts.values():
            if not fut.done():
                fut.set_result((None, "the client went away"))
        self.prompts.clear()
        if self.inner is not None:
            self.inner.cancel()

    async def finished(self) -> None:
        """Wait (bounded) until this client's call ran its cleanup."""
        call = self.call
        if call is not None and not call.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(call), _CLEANUP_WAIT)

    async def run_call(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        env: dict[str, str | None],
        want_progress: bool,
        plain: bool = False,
    ) -> None:
        agent = self.agent
        agent.in_flight += 1
        holder: _PoolHolder | None = None
        try:
            if name not in protocol.ALLOWED:
                raise protocol.ProtocolError(f"{name!r} is not served by the agent")
            from .. import aio

            fn: Callable[..., Any] = getattr(aio, name)
            if want_progress:
                kwargs = {**kwargs, "progress": self.progress}
            holder = agent.holder(env)
            context = (await asyncio.shield(holder.ready)).copy()
            context.run(_caller.set, self)
            self.inner = asyncio.get_running_loop().create_task(
                fn(*args, **kwargs), context=context
            )
            if self.cancel_requested:  # Ctrl-C arrived while the pool was being set up
                self.inner.cancel()
            try:
                value = await self.inner
            except asyncio.CancelledError:
                if not self.cancel_requested or (self.call and self.call.cancelling()):
                    raise
                reply: tuple[Any, ...] = ("cancelled",)
            except Exception as exc:
                reply = ("error", _portable(exc))
            else:
                reply = ("result", protocol.plain_run_result(value) if plain else value)
            try:
                self.write(reply)
            except Exception as exc:  # an unpicklable result
                self.write(
                    (
                        "error",
                        RuntimeError(f"dispatch agent: cannot send the result of {name}: {exc}"),
                    )
                )
            await self.writer.drain()
        except (protocol.ProtocolError, ConnectionError):
            self.writer.close()
        finally:
            self.inner = None
            agent.in_flight -= 1
            agent.served += 1
            agent.touch()
            if holder is not None:
                holder.note_connects()

    def progress(self, done: int, total: int) -> None:
        """The progress callback of a relayed transfer: a frame at most every 50 ms."""
        now = time.monotonic()
        if done < total and now - self._last_progress < _PROGRESS_EVERY:
            return
        self._last_progress = now
        with contextlib.suppress(Exception):
            self.write(("progress", done, total))

    async def ask(
        self, host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
    ) -> Sequence[str]:
        """Relay a keyboard-interactive challenge to this client and wait for its answers.

        Raises:
            ClientCannotAnswer: the client cannot answer (its reason), or went away.
        """
        ident = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Sequence[str] | None, str | None]] = loop.create_future()
        self.prompts[ident] = fut
        try:
            await self.send(("prompt", ident, host, name, instructions, list(prompts)))
            answers, why = await fut  # the pool's kbdint_timeout bounds the wait
        except ConnectionError:
            answers, why = None, "the client went away"
        finally:
            self.prompts.pop(ident, None)
        if answers is None:
            raise ClientCannotAnswer(
                f"the calling process cannot answer it ({why or 'no answer'}); run it in a "
                "terminal, or set SSH_ASKPASS (with SSH_ASKPASS_REQUIRE=force when there is "
                "no DISPLAY)"
            )
        return answers


# The client connection whose call is running in this context: the one a login prompt
# (keyboard-interactive) of a connection opened for that call is relayed to.
_caller: contextvars.ContextVar[_Client | None] = contextvars.ContextVar(
    "dispatch_agent_caller", default=None
)


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling, else a RuntimeError with its type and text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


# --- the process ---------------------------------------------------------------------------


def _bind(path: str) -> socket.socket:
    """Listen on ``path`` (0600), replacing a stale socket file (we hold the lock)."""
    if os.path.lexists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            log.info("dispatch agent: replacing the stale socket %s", path)
            os.unlink(path)
        else:
            raise RuntimeError(f"another process is listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


async def _serve(agent: Agent, sock: socket.socket, ready: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stopping.set)
    server = await asyncio.start_unix_server(agent.serve_connection, sock=sock)
    watch = asyncio.create_task(agent.idle_watch())
    ready()
    log.info(
        "dispatch agent %s: listening on %s (pid %d)", __version__, paths.socket_path(), os.getpid()
    )
    try:
        await agent.stopping.wait()
    finally:
        server.close()
        watch.cancel()
        await agent.shutdown()
        log.info("dispatch agent: stopped")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dispatch.agent.server")
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT)
    parser.add_argument("--keepalive", type=float, default=DEFAULT_KEEPALIVE)
    parser.add_argument("--detach", action="store_true", help="fork into the background")
    parser.add_argument("--ready-fd", type=int, default=None, help="write 'ready PID' here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run an agent until it is stopped or idle; returns the exit status.

    Args:
        argv: command-line arguments (see ``--help``).

    Returns:
        0 when it ran (or another agent already runs), 1 when it could not start.
    """
    args = _parse(argv)
    ready_fd: int | None = args.ready_fd

    def report(line: str) -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, line.encode() + b"\n")
                os.close(ready_fd)
            ready_fd = None

    if args.detach:
        if os.fork() != 0:
            os._exit(0)  # the starter waits for this parent, then reads the ready line
        os.setsid()
    os.environ["DISPATCH_AGENT"] = "off"  # this process serves calls, it never routes them
    for var in ("DISPATCH_SSH_CONFIG", "DISPATCH_KNOWN_HOSTS"):
        os.environ.pop(var, None)  # each call brings its client's
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )  # fmt: skip
    logging.getLogger("asyncssh").setLevel(logging.WARNING)  # it logs command lines at INFO
    if args.idle_timeout <= 0:
        report("error: --idle-timeout must be a positive number of seconds")
        return 1
    try:
        paths.ensure_runtime_dir()
        lock = os.open(paths.lock_path(), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        report(f"error: {exc}")
        return 1
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        report("running")
        return 0
    try:
        from .. import aio  # noqa: F401  (import now: the first call should not pay for it)

        sock = _bind(str(paths.socket_path()))
    except Exception as exc:
        report(f"error: {exc}")
        return 1
    paths.pid_path().write_text(f"{os.getpid()}\n")
    agent = Agent(idle_timeout=args.idle_timeout, keepalive=args.keepalive or None)
    try:
        asyncio.run(_serve(agent, sock, lambda: report(f"ready {os.getpid()}")))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(paths.socket_path())
        with contextlib.suppress(OSError):
            os.unlink(paths.pid_path())
        os.close(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
