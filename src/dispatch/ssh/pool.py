"""The connection pool: every SSH call rides a pooled, already-authenticated connection.

Per host string (``alias``, ``user@alias``, ``alias:port``) the pool keeps up to
``max_connections_per_host`` connections, each carrying at most
``max_channels_per_connection`` channels (OpenSSH frees a MaxSessions slot only after the
client saw the close, so the default cap is MaxSessions - 2). Connections are opened lazily
and single-flight (one connect in flight per host at a time), with at most
``max_concurrent_handshakes`` handshakes in flight per server address (OpenSSH's
MaxStartups drops the excess). What provably did not start (connect, transport errors,
a refused channel open) is retried with backoff and jitter; nothing else is.
Connecting (single flight, retries, handshake caps, ProxyJump) is `dialer.py`'s job, one
attempt `connect.py`'s; which pool is current is `context.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import asyncssh

from .auth import KbdintHandler, default_kbdint_handler
from .config import default_known_hosts, default_ssh_config
from .dialer import Dialer
from .errors import ConnectError, MayHaveRunError
from .registry import Registry
from .slots import (
    REFUSED_CODES,
    HostSlot,
    Lease,
    PoolStats,
    RunningCommand,
    TunnelRecord,
)

__all__ = ["Pool", "PoolStats", "Lease", "RunningCommand", "TunnelRecord", "entered_pool"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_CLEANUP_TIMEOUT = 15.0  # seconds close() waits for pending remote kills

# The innermost ``async with Pool()`` of this context. It lives here, beside the
# ``__aenter__`` that sets it, because context.py (which reads it) creates Pools:
# declaring it there would make the two modules import each other.
_entered: contextvars.ContextVar[Pool | None] = contextvars.ContextVar(
    "dispatch_ssh_pool", default=None
)


def entered_pool() -> Pool | None:
    """The pool of the innermost ``async with Pool()`` in this context, if any."""
    return _entered.get()


class Pool:
    """Owns all SSH connections of a scope; ``async with Pool(...):`` makes it current.

    Every dispatch call inside the block uses this pool (see ``current_pool``); leaving
    the block closes its connections and in-process tunnels.

    Host keys are always verified (known_hosts files that do not exist are skipped, as
    ssh does). The config's ``StrictHostKeyChecking accept-new`` acts like
    ``accept_new_host_keys=True``; ``no``/``off`` do NOT turn checking off (an unknown
    key is refused, and the message says so); ``yes``, ``ask`` and the default refuse.

    Args:
        ssh_config: OpenSSH client config (default ``$DISPATCH_SSH_CONFIG``, else
            ``~/.ssh/config``).
        known_hosts: known_hosts file overriding the config's UserKnownHostsFile (default
            ``$DISPATCH_KNOWN_HOSTS``, else what the config says, else
            ``~/.ssh/known_hosts``).
        max_channels_per_connection: concurrent channels per connection (MaxSessions - 2).
        max_connections_per_host: extra connections opened when all channels are busy.
        max_concurrent_handshakes: handshakes in flight per server address (MaxStartups).
        connect_timeout: seconds per connect attempt (the config's ConnectTimeout wins).
        connect_retries: retries of connects that failed in transport (refused, reset,
            dropped by MaxStartups).
        retry_backoff: base delay in seconds of those retries (exponential, with jitter).
        keepalive_interval: seconds between SSH keepalives (dead connections are detected
            and replaced); None takes the config's ServerAliveInterval.
        keepalive_count_max: unanswered keepalives before a connection counts as dead;
            None takes the config's ServerAliveCountMax.
        idle_timeout: seconds after which an unused connection is closed (None: never).
        accept_new_host_keys: like ``StrictHostKeyChecking accept-new``: record the key of
            a host not yet in known_hosts (a *changed* key is still refused); also on
            for hosts whose config says ``accept-new``.
        channel_open_retries: how often a refused channel open is retried.
        kbdint: answers a server's keyboard-interactive challenge after the key was
            accepted (a one-time password): awaited as ``kbdint(host, name,
            instructions, prompts)`` with (prompt, echo) pairs, returning the answers
            (or raising ``auth.CannotAnswer(reason)`` when it cannot answer; None also
            gives up, without a reason). The default asks on the terminal, or runs
            ``SSH_ASKPASS``, as ssh does (off under the config's ``BatchMode yes``);
            None: never answer (such logins fail at once, saying why). A refused answer
            is never retried; passwords are never sent. A host whose login answered a
            challenge gets one connection only (more would ask for more codes): calls
            beyond its channels wait for a free one.
        kbdint_timeout: seconds one challenge may wait for its answer (the connect
            timeout, which bounds the network steps, is suspended meanwhile).
        control_master: ride the user's OpenSSH ControlMaster for ``run`` when the ssh
            config gives the host a ControlPath and a master answers there (no login
            of our own, so no second factor); False: always log in directly.
        command_sessions: run short commands in kept-open login shells (one round trip,
            no login per call; see the behaviour guide; until a host's first session is
            ready, its calls use exec channels); False: one exec channel per command, as
            ``run(..., session=False)`` does per call.
        session_idle_timeout: seconds after which an unused command session is closed
            (at most ``idle_timeout``).
        session_max_age: seconds after which a command session is restarted (so an
            edited login profile applies).
        session_max_timeout: calls with a larger ``timeout`` use an exec channel (None:
            no bound).

    Raises:
        ValueError: a channel/connection/handshake limit that is not an int >= 1.
    """

    def __init__(
        self,
        *,
        ssh_config: str | os.PathLike[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        max_channels_per_connection: int = 8,
        max_connections_per_host: int = 4,
        max_concurrent_handshakes: int = 8,
        connect_timeout: float = 10.0,
        connect_retries: int = 3,
        retry_backoff: float = 0.2,
        keepalive_interval: float | None = 30.0,
        keepalive_count_max: int | None = 3,
        idle_timeout: float | None = 300.0,
        accept_new_host_keys: bool = False,
        channel_open_retries: int = 50,
        kbdint: KbdintHandler | None = default_kbdint_handler,
        kbdint_timeout: float = 120.0,
        control_master: bool = True,
        command_sessions: bool = True,
        session_idle_timeout: float = 60.0,
        session_max_age: float = 900.0,
        session_max_timeout: float | None = 600.0,
    ) -> None:
        for name, value in (
            ("max_channels_per_connection", max_channels_per_connection),
            ("max_connections_per_host", max_connections_per_host),
            ("max_concurrent_handshakes", max_concurrent_handshakes),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Pool({name}={value!r}): must be an int >= 1")
        self.ssh_config: Path | None = Path(ssh_config).expanduser() if ssh_config else None
        self.known_hosts: Path | None = Path(known_hosts).expanduser() if known_hosts else None
        self.max_channels_per_connection = max_channels_per_connection
        self.max_connections_per_host = max_connections_per_host
        self.max_concurrent_handshakes = max_concurrent_handshakes
        self.connect_timeout = connect_timeout
        self.connect_retries = max(0, connect_retries)
        self.retry_backoff = retry_backoff
        self.keepalive_interval = keepalive_interval
        self.keepalive_count_max = keepalive_count_max
        self.idle_timeout = idle_timeout
        self.accept_new_host_keys = accept_new_host_keys
        self.channel_open_retries = channel_open_retries
        if kbdint is not None and not callable(kbdint):
            raise ValueError(f"Pool(kbdint={kbdint!r}): must be an async callable or None")
        self.kbdint = kbdint
        self.kbdint_timeout = kbdint_timeout
        self.control_master = control_master
        self.command_sessions = command_sessions
        self.session_idle_timeout = session_idle_timeout
        self.session_max_age = session_max_age
        self.session_max_timeout = session_max_timeout
        # Called with a host when its connections are full: True if one freed a channel
        # slot (command sessions give back an idle one, see sessions.py).
        self.reclaimers: list[Callable[[str], bool]] = []
        self._pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dialer = Dialer(
            self, check=self._check, spawn=self._spawn, connected=self._ensure_reaper
        )
        self._slots: dict[str, HostSlot] = self._dialer.slots  # the same dict
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cleanups: set[asyncio.Task[Any]] = set()  # awaited (not cancelled) by close
        # Commands in flight by run id (see track_run): ``close`` kills those whose task
        # was cancelled before their own cleanup started.
        self.running: dict[str, RunningCommand] = {}
        self._closed = False
        self._tokens: list[contextvars.Token[Pool | None]] = []
        self.tunnels: dict[int, TunnelRecord] = {}  # local port -> in-process tunnel
        # Per-pool state of the layers above (pollers, sessions...): see registry.py.
        self.registry = Registry()

    # -- scope ----------------------------------------------------------------------------

    async def __aenter__(self) -> Pool:
        self._tokens.append(_entered.set(self))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tokens:
            _entered.reset(self._tokens.pop())
        await self.close()

    @property
    def closed(self) -> bool:
        """Whether ``close`` has been called (a closed pool refuses new work)."""
        return self._closed

    @property
    def pid(self) -> int:
        """The process that created this pool (after ``fork`` the child must not use it)."""
        return self._pid

    def effective_ssh_config(self) -> Path:
        """The ssh config file this pool reads.

        Returns:
            ``ssh_config`` if given, else ``$DISPATCH_SSH_CONFIG``, else ``~/.ssh/config``.
        """
        return self.ssh_config or default_ssh_config()

    def effective_known_hosts(self) -> Path | None:
        """The known_hosts file that overrides the config's UserKnownHostsFile.

        Returns:
            ``known_hosts`` if given, else ``$DISPATCH_KNOWN_HOSTS``, else None (the
            config decides).
        """
        return self.known_hosts or default_known_hosts()

    # -- stats ----------------------------------------------------------------------------

    def stats(self) -> dict[str, PoolStats]:
        """Counters per host string: open/peak connections and channels, connects made.

        Returns:
            Dict mapping each host string used with this pool to its ``PoolStats``.
        """
        return {key: s.stats() for key, s in self._slots.items()}

    # -- commands in flight ---------------------------------------------------------------

    def track_run(
        self,
        run_id: str,
        host: str,
        task: asyncio.Task[Any] | None,
        kill: Callable[[], Awaitable[object]],
    ) -> None:
        """Register a started command; if ``task`` is cancelled, ``close`` calls ``kill()``.

        For the layers above the pool (commands register their own kill; the pool never
        imports them).

        Args:
            run_id: The command's marker.
            host: The host it runs on.
            task: The task awaiting it (None if untracked by task).
            kill: Coroutine function that kills the command's process tree.
        """
        self.running[run_id] = RunningCommand(host, task, kill)

    def untrack_run(self, run_id: str) -> bool:
        """Forget a command.

        Args:
            run_id: The marker given to `track_run`.

        Returns:
            False if ``close`` already took the command over (and killed it).
        """
        return self.running.pop(run_id, None) is not None

    def spawn_cleanup(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        """Run remote cleanup (killing a cancelled command) that ``close`` waits for.

        Args:
            coro: The cleanup to run.

        Returns:
            The task running it.
        """
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    async def _finish_cleanups(self) -> None:
        """Kill commands whose task was cancelled, and wait for pending kills (bounded).

        ``task.cancel()`` followed at once by leaving ``async with Pool()`` reaches here
        before the cancelled task ran its own cleanup: kill its command now, while the
        connections are still open (a closed channel does not stop a remote command).
        """
        for run_id, rec in list(self.running.items()):
            if rec.task is not None and rec.task.cancelling():
                del self.running[run_id]
                self.spawn_cleanup(rec.kill())
        deadline = time.monotonic() + _CLEANUP_TIMEOUT
        while self._cleanups and time.monotonic() < deadline:
            await asyncio.wait(list(self._cleanups), timeout=deadline - time.monotonic())

    # -- lifecycle ------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("this dispatch Pool is closed")
        if self._pid != os.getpid():
            raise RuntimeError("this dispatch Pool belongs to the parent process (fork)")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("a dispatch Pool can only be used from the event loop it started on")

    def _spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def abandon(self) -> None:
        """Forget every connection without touching its socket (the child after ``fork``)."""
        self._slots.clear()
        self._closed = True

    async def close(self) -> None:
        """Close every connection and tunnel of this pool (idempotent).

        Returns:
            None.
        """
        if self._closed:
            return
        with contextlib.suppress(RuntimeError):  # another process or loop: nothing to kill
            self._check()
            await self._finish_cleanups()
        self._closed = True
        if self._pid != os.getpid():  # never touch a parent's sockets
            self._slots.clear()
            return
        await self.registry.aclose()
        for rec in list(self.tunnels.values()):
            with contextlib.suppress(Exception):
                rec.close()
        self.tunnels.clear()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        conns = [c for s in self._slots.values() for c in s.conns]
        for s in self._slots.values():
            if s.connect_task is not None:
                s.connect_task.cancel()
            s.wake()
        for c in conns:
            c.alive = False
            c.conn.close()
        if conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(*(c.conn.wait_closed() for c in conns), return_exceptions=True),
                    5.0,
                )
        self._slots.clear()
        log.debug("pool closed (%d connections)", len(conns))

    def _ensure_reaper(self) -> None:
        if self.idle_timeout is None or self._reaper is not None:
            return
        self._reaper = self._spawn(self._reap())

    async def _reap(self) -> None:
        assert self.idle_timeout is not None
        period = max(0.05, min(self.idle_timeout / 2, 30.0))
        while not self._closed:
            await asyncio.sleep(period)
            now = time.monotonic()
            for s in list(self._slots.values()):
                for c in list(s.conns):
                    if c.channels == 0 and c.pins == 0 and now - c.last_used >= self.idle_timeout:
                        log.debug("closing idle connection to %s", s.key)
                        s.drop(c)

    # -- public ---------------------------------------------------------------------------

    async def connect(self, host: str) -> asyncssh.SSHClientConnection:
        """A pooled, authenticated connection to ``host`` (for port forwarding and such).

        Args:
            host: SSH host (name, alias, ``user@host`` or ``host:port``).

        Returns:
            The asyncssh connection; it stays owned by the pool (do not close it).

        Raises:
            ConnectError: the host cannot be reached or refused the login
                (``HostKeyConnectError`` for host-key problems).
        """
        return (await self._dialer.pick(self._dialer.slot(host), reserve=False)).conn

    async def pin(self, host: str) -> tuple[asyncssh.SSHClientConnection, Callable[[], None]]:
        """Like ``connect`` but keeps the connection from idle close until ``unpin()``.

        Args:
            host: SSH host (name, alias, ``user@host`` or ``host:port``).

        Returns:
            The connection and an idempotent ``unpin`` callable.

        Raises:
            ConnectError: the host cannot be reached or refused the login.
        """
        c = await self._dialer.pick(self._dialer.slot(host), reserve=False)
        c.pins += 1
        done = False

        def unpin() -> None:
            nonlocal done
            if not done:
                done = True
                c.pins -= 1
                c.last_used = time.monotonic()

        return c.conn, unpin

    async def open_channel(
        self,
        host: str,
        opener: Callable[[asyncssh.SSHClientConnection], Awaitable[T]],
        started: Callable[[], bool] = lambda: False,
    ) -> tuple[Lease, T]:
        """Reserve a channel slot on a pooled connection and run ``opener(conn)`` in it.

        A refused channel open (MaxSessions) is retried with backoff; a connection found
        dead before the channel opened is replaced. ``started()`` tells whether the
        opener got far enough that its request may have taken effect: then a broken
        connection raises ``MayHaveRunError`` instead of being retried.

        Args:
            host: SSH host (name, alias, ``user@host`` or ``host:port``).
            opener: coroutine function opening the channel on the given connection.
            started: tells whether the opener's request may already have taken effect.

        Returns:
            The ``Lease`` of the channel slot (call ``release()`` when done) and what
            ``opener`` returned.

        Raises:
            ConnectError: the host cannot be reached, or channel opens kept being refused.
            MayHaveRunError: the connection broke after the request may have taken effect.
        """
        slot = self._dialer.slot(host)
        refusals = 0
        while True:
            c = await self._dialer.pick(slot, reserve=True)
            lease = Lease(slot, c)
            try:
                result = await opener(c.conn)
            except asyncssh.ChannelOpenError as exc:
                lease.release()
                alive = c.usable
                # Not opened on a live connection: the server refused the channel (OpenSSH
                # says "open failed" when MaxSessions is reached). Safe to retry.
                if alive and (exc.code in REFUSED_CODES or not started()):
                    slot.refusals += 1
                    refusals += 1
                    if refusals > self.channel_open_retries:
                        raise ConnectError(
                            f"ssh: {host}: channel open refused {refusals} times: {exc.reason}",
                            transient=True,
                        ) from None
                    log.debug("channel open on %s refused (%s); retrying", host, exc.reason)
                    await asyncio.sleep(min(0.25, 0.005 * refusals) * (0.5 + random.random()))
                    continue
                if not alive:
                    slot.drop(c)
                    if started():
                        raise MayHaveRunError(str(exc.reason)) from None
                    continue
                raise ConnectError(f"ssh: {host}: {exc.reason}") from None
            except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError) as exc:
                lease.release()
                slot.drop(c)
                if started():
                    raise MayHaveRunError(str(exc)) from None
                continue
            except BaseException:
                lease.release()
                raise
            log.debug("channel opened on %s (%d/%d on its connection)", host, c.channels,
                      self.max_channels_per_connection)
            return lease, result
