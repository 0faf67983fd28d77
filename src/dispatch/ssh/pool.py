"""The connection pool: every SSH call rides a pooled, already-authenticated connection.

Per host string (``alias``, ``user@alias``, ``alias:port``) the pool keeps up to
``max_connections_per_host`` connections, each carrying at most
``max_channels_per_connection`` channels (OpenSSH frees a MaxSessions slot only after the
client saw the close, so the default cap is MaxSessions - 2). Connections are opened lazily
and single-flight (one connect in flight per host at a time), with at most
``max_concurrent_handshakes`` handshakes in flight per server address (OpenSSH's
MaxStartups drops the excess). What provably did not start (connect, transport errors,
a refused channel open) is retried with backoff and jitter; nothing else is.

A default pool exists per event loop (the blocking facade runs everything on one
background loop, so its pool persists across blocking calls); ``async with Pool(...)``
makes a custom pool current for the code inside it (a context variable).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import random
import socket
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import asyncssh

from .. import _blocking
from ..errors import DispatchError, HostKeyError, InvalidValueError
from .config import (
    SSH_CONFIG_ENV,
    HostSpec,
    default_known_hosts,
    default_ssh_config,
    parse_host,
)
from .registry import Registry

__all__ = ["Pool", "PoolStats", "current_pool", "ConnectError", "HostKeyConnectError"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_REFUSED_CODES = frozenset(
    {asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, asyncssh.OPEN_RESOURCE_SHORTAGE}
)


_CLEANUP_TIMEOUT = 15.0  # seconds close() waits for pending remote kills


class ConnectError(DispatchError):
    """An SSH connection could not be made (resolve, refuse, auth, host key, timeout).

    ``str(exc)`` reads like ``ssh``'s own message and names the host. ``transient`` is
    True when trying again later may help (refused, reset, dropped), False for
    configuration problems (unknown name, no usable key, host key).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class HostKeyConnectError(ConnectError, HostKeyError):
    """The server's host key is unknown or changed; the message names host and known_hosts."""


class MayHaveRunError(DispatchError):
    """The connection broke after the channel's request was sent: it may have taken effect."""


class _HandshakeTimeout(TimeoutError):
    """Connect timed out after TCP was up: in the SSH handshake or authentication."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"SSH handshake/authentication timed out after {seconds:g}s")
        self.seconds = seconds


class _PhaseClient(asyncssh.SSHClient):
    """Records that the TCP connection completed, to say which connect phase timed out."""

    def __init__(self, tcp_up: list[bool]) -> None:
        self._tcp_up = tcp_up

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._tcp_up.append(True)


@dataclass(frozen=True)
class PoolStats:
    """Counters for one host of a pool (what load tests assert caps with)."""

    host: str
    open_connections: int
    open_channels: int
    peak_connections: int
    peak_channels: int
    peak_channels_per_connection: int
    connects: int
    connect_failures: int
    channel_refusals: int


class _Conn:
    """One pooled SSH connection and its channel bookkeeping."""

    __slots__ = ("alive", "channels", "conn", "extra", "ident", "last_used", "peak", "pins")

    def __init__(self, conn: asyncssh.SSHClientConnection, ident: int) -> None:
        self.conn = conn
        self.channels = 0
        self.peak = 0
        self.pins = 0
        self.last_used = time.monotonic()
        self.alive = True
        self.extra: list[Callable[[], None]] = []  # run when the connection goes away
        self.ident = ident


class _Slot:
    """All connections of one host string, plus waiters for a free channel."""

    def __init__(self, key: str, spec: HostSpec) -> None:
        self.key = key
        self.spec = spec
        self.conns: list[_Conn] = []
        self.connect_task: asyncio.Task[_Conn] | None = None
        self.waiters: list[asyncio.Future[None]] = []
        self.options: asyncssh.SSHClientConnectionOptions | None = None
        self.peak_connections = 0
        self.peak_channels = 0
        self.peak_per_conn = 0
        self.connects = 0
        self.connect_failures = 0
        self.refusals = 0
        self.no_extra_connect_before = 0.0  # after a failed extra connect, back off

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def live(self) -> list[_Conn]:
        return [c for c in self.conns if c.alive]


class Lease:
    """One reserved channel slot on a pooled connection; ``release()`` when the channel closed."""

    __slots__ = ("_c", "_pool", "_released", "_slot")

    def __init__(self, pool: Pool, slot: _Slot, c: _Conn) -> None:
        self._pool, self._slot, self._c, self._released = pool, slot, c, False

    @property
    def conn(self) -> asyncssh.SSHClientConnection:
        return self._c.conn

    @property
    def alive(self) -> bool:
        return self._c.alive and not self._c.conn.is_closed()

    def mark_dead(self) -> None:
        self._pool._drop(self._slot, self._c)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._c.channels -= 1
        self._c.last_used = time.monotonic()
        self._slot.wake()


def _configured_ssh_config() -> Path:
    """The ssh config of the pool current in this context (or the default location)."""
    pool = _current.get()
    if pool is not None and pool.ssh_config is not None:
        return pool.ssh_config
    return default_ssh_config()


def _is_file(path: Path) -> bool:
    return path.is_file()


def _append_line(file: str, line: str) -> Path:
    path = Path(file).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line)
    return path


def _jitter(base: float, attempt: int, cap: float = 5.0) -> float:
    return float(min(cap, base * (2**attempt)) * (0.5 + random.random()))


class Pool:
    """Owns all SSH connections of a scope; ``async with Pool(...):`` makes it current.

    Every dispatch call inside the block uses this pool (see ``current_pool``); leaving
    the block closes its connections and in-process tunnels.

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
            a host not yet in known_hosts (a *changed* key is still refused).
        channel_open_retries: how often a refused channel open is retried.

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
        self._pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: dict[str, _Slot] = {}
        self._handshakes: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cleanups: set[asyncio.Task[Any]] = set()  # awaited (not cancelled) by close
        # Commands in flight: run id -> (host, awaiting task). A command whose task was
        # cancelled is killed by ``close`` if its own cleanup has not started yet.
        self.running: dict[str, tuple[str, asyncio.Task[Any] | None]] = {}
        self._closed = False
        self._tokens: list[contextvars.Token[Pool | None]] = []
        self._ident = 0
        self.tunnels: dict[int, Any] = {}  # local_port -> tunnel record (see tunnel.py)
        # Per-pool state of the layers above (pollers, sessions...): see registry.py.
        self.registry = Registry()

    # -- scope ----------------------------------------------------------------------------

    async def __aenter__(self) -> Pool:
        self._tokens.append(_current.set(self))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tokens:
            _current.reset(self._tokens.pop())
        await self.close()

    @property
    def closed(self) -> bool:
        """Whether ``close`` has been called (a closed pool refuses new work)."""
        return self._closed

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
        out = {}
        for key, s in self._slots.items():
            live = s.live()
            out[key] = PoolStats(
                host=key,
                open_connections=len(live),
                open_channels=sum(c.channels for c in live),
                peak_connections=s.peak_connections,
                peak_channels=s.peak_channels,
                peak_channels_per_connection=s.peak_per_conn,
                connects=s.connects,
                connect_failures=s.connect_failures,
                channel_refusals=s.refusals,
            )
        return out

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

    def _spawn_cleanup(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        """Run remote cleanup (killing a cancelled command) that ``close`` waits for."""
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
        from .commands import _kill_remote  # local import: commands imports this module

        for run_id, (host, task) in list(self.running.items()):
            if task is not None and task.cancelling():
                del self.running[run_id]
                self._spawn_cleanup(_kill_remote(host, run_id, self))
        deadline = time.monotonic() + _CLEANUP_TIMEOUT
        while self._cleanups and time.monotonic() < deadline:
            await asyncio.wait(list(self._cleanups), timeout=deadline - time.monotonic())

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
                        self._drop(s, c)

    def _drop(self, slot: _Slot, c: _Conn) -> None:
        """Forget a connection (dead or idle) and close it."""
        if c in slot.conns:
            slot.conns.remove(c)
        if c.alive:
            c.alive = False
            c.conn.close()
        for fn in c.extra:
            with contextlib.suppress(Exception):
                fn()
        c.extra.clear()
        slot.wake()

    # -- connecting -----------------------------------------------------------------------

    def _slot(self, host: str) -> _Slot:
        if not isinstance(host, str):  # a programming error, not an unreachable host
            raise InvalidValueError(f"SSH host must be a str, not {type(host).__name__}: {host!r}")
        slot = self._slots.get(host)
        if slot is None:
            try:
                spec = parse_host(host)
            except ValueError as exc:
                raise ConnectError(f"dispatch: {exc}") from None
            slot = self._slots[host] = _Slot(host, spec)
        return slot

    async def _options(self, slot: _Slot) -> asyncssh.SSHClientConnectionOptions:
        if slot.options is not None:
            return slot.options
        cfg = self.effective_ssh_config()
        explicit = self.ssh_config is not None or bool(os.environ.get(SSH_CONFIG_ENV))
        if explicit and not _is_file(cfg):
            # like `ssh -F missing`: a config the caller named must exist
            origin = "Pool(ssh_config=...)" if self.ssh_config else f"${SSH_CONFIG_ENV}"
            raise ConnectError(f"ssh: {slot.key}: ssh config {cfg} (from {origin}) does not exist")
        kwargs: dict[str, Any] = {
            "config": [str(cfg)] if _is_file(cfg) else [],
            "host": slot.spec.host,
            "password_auth": False,
            "kbdint_auth": False,
            "encoding": None,
        }
        if slot.spec.user:
            kwargs["username"] = slot.spec.user
        if slot.spec.port:
            kwargs["port"] = slot.spec.port
        kh = self.effective_known_hosts()
        if kh is not None:
            kwargs["known_hosts"] = str(kh)
        if self.keepalive_interval is not None:
            kwargs["keepalive_interval"] = self.keepalive_interval
        if self.keepalive_count_max is not None:
            kwargs["keepalive_count_max"] = self.keepalive_count_max
        try:
            opts: asyncssh.SSHClientConnectionOptions = (
                await asyncssh.SSHClientConnectionOptions.construct(**kwargs)
            )
        except (asyncssh.ConfigParseError, ValueError, OSError) as exc:
            raise ConnectError(f"ssh: {slot.key}: bad ssh config {cfg}: {exc}") from None
        if opts.known_hosts is None:  # "UserKnownHostsFile none": never trust blindly
            opts.known_hosts = []
        slot.options = opts
        return opts

    def _known_hosts_files(self, opts: asyncssh.SSHClientConnectionOptions) -> list[str]:
        kh: Any = opts.known_hosts
        if isinstance(kh, str | os.PathLike):
            return [str(kh)]
        if isinstance(kh, list | tuple) and kh:
            return [str(k) for k in kh]
        return [str(Path("~/.ssh/known_hosts").expanduser())]

    async def _host_key_error(
        self, slot: _Slot, opts: asyncssh.SSHClientConnectionOptions, exc: Exception
    ) -> HostKeyConnectError:
        files = self._known_hosts_files(opts)
        host, port = opts.host, opts.port
        changed = False
        try:
            addr = await asyncio.get_running_loop().run_in_executor(
                None, socket.gethostbyname, host
            )
        except OSError:
            addr = host
        for f in files:
            with contextlib.suppress(Exception):
                trusted = asyncssh.read_known_hosts(f).match(host, addr, port)[0]
                if trusted:
                    changed = True
        where = ", ".join(files)
        target = f"{host}:{port}" if port != 22 else host
        if changed:
            msg = (
                f"ssh: Host key verification failed for {slot.key} ({target}): the server's "
                f"host key has CHANGED and does not match known_hosts ({where}). Remove the "
                f"stale entry only if you know why the key changed."
            )
        else:
            msg = (
                f"ssh: Host key verification failed for {slot.key} ({target}): no host key "
                f"for it in known_hosts ({where}) (unknown host key; add it with "
                f"ssh-keyscan after checking its fingerprint)."
            )
        return HostKeyConnectError(msg)

    async def _accept_new_key(self, opts: asyncssh.SSHClientConnectionOptions) -> bool:
        """Append the server's key to known_hosts (accept-new); False if not possible."""
        files = self._known_hosts_files(opts)
        try:
            key = await asyncssh.get_server_host_key(opts.host, opts.port)
        except (OSError, asyncssh.Error):
            return False
        if key is None:
            return False
        name = opts.host if opts.port == 22 else f"[{opts.host}]:{opts.port}"
        line = f"{name} {key.export_public_key('openssh').decode().strip()}\n"
        path = _append_line(files[0], line)
        log.info("added host key of %s to %s (accept_new_host_keys)", name, path)
        return True

    def _handshake_sem(self, addr: tuple[str, int]) -> asyncio.Semaphore:
        sem = self._handshakes.get(addr)
        if sem is None:
            sem = self._handshakes[addr] = asyncio.Semaphore(self.max_concurrent_handshakes)
        return sem

    async def _tunnel_for(
        self, slot: _Slot, opts: asyncssh.SSHClientConnectionOptions
    ) -> tuple[asyncssh.SSHClientConnection | None, list[Callable[[], None]]]:
        """Open the ProxyJump chain: the first hop pooled (and pinned), later hops dedicated."""
        spec = opts.tunnel
        if not isinstance(spec, str) or not spec or spec.lower() == "none":
            return None, []
        hops = [h.strip() for h in spec.split(",") if h.strip()]
        if slot.key in hops:
            raise ConnectError(f"ssh: {slot.key}: ProxyJump loops back to itself")
        first_slot = self._slot(hops[0])
        first = await self._pick_conn(first_slot, reserve=False)
        first.pins += 1
        cleanups: list[Callable[[], None]] = []

        def _unpin(c: _Conn = first) -> None:
            c.pins -= 1
            c.last_used = time.monotonic()

        cleanups.append(_unpin)
        conn: asyncssh.SSHClientConnection = first.conn
        try:
            for hop in hops[1:]:
                hop_slot = self._hop_slot(slot, hop)
                hop_opts = await self._options(hop_slot)
                try:
                    conn = await asyncio.wait_for(
                        asyncssh.connect(hop_opts.host, options=hop_opts, tunnel=conn),
                        float(hop_opts.connect_timeout or self.connect_timeout),
                    )
                except (TimeoutError, OSError, asyncssh.Error) as exc:
                    msg, transient = self._describe(hop_slot, exc)
                    raise ConnectError(
                        f"{msg} (ProxyJump hop {hop} of {slot.key})", transient=transient
                    ) from None
                cleanups.append(conn.close)
        except BaseException:  # the first hop stays pooled, but unpinned; later hops closed
            for fn in reversed(cleanups):
                fn()
            raise
        return conn, cleanups

    def _hop_slot(self, slot: _Slot, hop: str) -> _Slot:
        """A throwaway slot (for options and messages) of a later ProxyJump hop."""
        try:
            return _Slot(hop, parse_host(hop))
        except ValueError as exc:
            raise ConnectError(f"dispatch: {slot.key}: ProxyJump {exc}") from None

    async def _connect_once(self, slot: _Slot) -> asyncssh.SSHClientConnection:
        opts = await self._options(slot)
        tunnel, cleanups = await self._tunnel_for(slot, opts)
        timeout = float(opts.connect_timeout or self.connect_timeout)
        sem = self._handshake_sem((str(opts.host), int(opts.port)))
        tcp_up: list[bool] = []  # non-empty once the TCP connection is up
        try:
            async with sem:
                log.debug("connecting to %s (%s:%s)", slot.key, opts.host, opts.port)
                kwargs: dict[str, Any] = {"options": opts}
                if tunnel is not None:
                    kwargs["tunnel"] = tunnel
                kwargs["client_factory"] = lambda: _PhaseClient(tcp_up)
                conn = await asyncio.wait_for(asyncssh.connect(opts.host, **kwargs), timeout)
        except TimeoutError:
            for fn in cleanups:
                fn()
            if tcp_up:
                raise _HandshakeTimeout(timeout) from None
            raise
        except BaseException:
            for fn in cleanups:
                fn()
            raise
        conn._dispatch_cleanups = cleanups  # type: ignore[attr-defined]
        return conn

    def _describe(self, slot: _Slot, exc: BaseException) -> tuple[str, bool]:
        """ssh-like message for a connect failure, and whether retrying may help."""
        opts = slot.options
        target = f"{opts.host} port {opts.port}" if opts is not None else slot.key
        user = opts.username if opts is not None else "?"
        if isinstance(exc, socket.gaierror):
            host = opts.host if opts is not None else slot.spec.host
            return f"ssh: Could not resolve hostname {host}: {exc.strerror}", False
        if isinstance(exc, ConnectionRefusedError):
            return f"ssh: connect to host {target}: Connection refused", True
        if isinstance(exc, _HandshakeTimeout):
            return (
                f"ssh: connect to host {target}: SSH handshake/authentication timed out after "
                f"{exc.seconds:g}s (the TCP connection was established; the server stopped "
                "answering)",
                False,
            )
        if isinstance(exc, asyncio.TimeoutError | TimeoutError):
            return f"ssh: connect to host {target}: Connection timed out (TCP connect)", False
        if isinstance(exc, asyncssh.PermissionDenied):
            who = slot.key if "@" in slot.key else f"{user}@{slot.key}"
            keys = ""
            if opts is not None:
                ids: Any = opts.config.get("IdentityFile") or []
                keys = f" (identity files: {', '.join(str(i) for i in ids)})" if ids else ""
            return (
                f"ssh: {who}: Permission denied (publickey): no usable key was "
                f"accepted{keys}; password and keyboard-interactive logins are disabled",
                False,
            )
        if isinstance(exc, asyncssh.ConnectionLost | ConnectionResetError | BrokenPipeError):
            return f"ssh: connection to {target} lost during handshake: {exc}", True
        if isinstance(exc, asyncssh.DisconnectError):
            return f"ssh: {target}: disconnected: {exc.reason}", True
        if isinstance(exc, OSError):
            return f"ssh: connect to host {target}: {exc.strerror or exc}", True
        return f"ssh: {slot.key}: {type(exc).__name__}: {exc}", False

    async def _open_conn(self, slot: _Slot) -> _Conn:
        """Connect with retries of transport failures; register the connection."""
        attempt = 0
        accepted_key = False
        while True:
            try:
                conn = await self._connect_once(slot)
                break
            except asyncssh.HostKeyNotVerifiable as exc:
                opts = await self._options(slot)
                err = await self._host_key_error(slot, opts, exc)
                if (
                    self.accept_new_host_keys
                    and not accepted_key
                    and "CHANGED" not in str(err)
                    and await self._accept_new_key(opts)
                ):
                    accepted_key = True
                    continue
                slot.connect_failures += 1
                raise err from None
            except ConnectError:
                slot.connect_failures += 1
                raise
            except (TimeoutError, OSError, asyncssh.Error) as exc:
                msg, retryable = self._describe(slot, exc)
                if retryable and attempt < self.connect_retries:
                    delay = _jitter(self.retry_backoff, attempt)
                    log.debug("connect to %s failed (%s); retry in %.2fs", slot.key, msg, delay)
                    attempt += 1
                    await asyncio.sleep(delay)
                    continue
                slot.connect_failures += 1
                raise ConnectError(msg, transient=retryable) from None
        self._ident += 1
        c = _Conn(conn, self._ident)
        c.extra.extend(getattr(conn, "_dispatch_cleanups", []))
        slot.conns.append(c)
        slot.connects += 1
        slot.peak_connections = max(slot.peak_connections, len(slot.live()))
        self._spawn(self._watch(slot, c))
        self._ensure_reaper()
        log.debug("connected to %s (connection %d of host)", slot.key, len(slot.conns))
        return c

    async def _watch(self, slot: _Slot, c: _Conn) -> None:
        try:
            await c.conn.wait_closed()
        except asyncio.CancelledError:
            # Pool.close(), or asyncio.run() ending with a default pool still open: close
            # the connection politely while the loop still runs.
            if c.alive and self._pid == os.getpid():
                c.alive = False
                c.conn.close()
            raise
        if c.alive:
            log.debug("connection to %s closed by the peer; it will be replaced", slot.key)
        self._drop(slot, c)

    async def _pick_conn(self, slot: _Slot, *, reserve: bool) -> _Conn:
        """A live connection with a free channel (reserved if ``reserve``), connecting as needed."""
        while True:
            self._check()
            best: _Conn | None = None
            for c in slot.conns:
                if not c.alive or c.conn.is_closed():
                    continue
                if not reserve:
                    if best is None or c.channels < best.channels:
                        best = c
                elif c.channels < self.max_channels_per_connection and (
                    best is None or c.channels < best.channels
                ):
                    best = c
            if best is not None:
                if reserve:
                    best.channels += 1
                    best.peak = max(best.peak, best.channels)
                    slot.peak_per_conn = max(slot.peak_per_conn, best.channels)
                    total = sum(c.channels for c in slot.conns if c.alive)
                    slot.peak_channels = max(slot.peak_channels, total)
                best.last_used = time.monotonic()
                return best
            task = slot.connect_task
            live = len(slot.live())
            if (
                task is None
                and live < self.max_connections_per_host
                and (live == 0 or time.monotonic() >= slot.no_extra_connect_before)
            ):
                task = slot.connect_task = self._spawn(self._open_conn(slot))

                def _done(t: asyncio.Task[_Conn], s: _Slot = slot) -> None:
                    if s.connect_task is t:
                        s.connect_task = None
                    if t.cancelled() or t.exception() is not None:
                        s.no_extra_connect_before = time.monotonic() + 1.0
                    s.wake()

                task.add_done_callback(_done)
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            slot.waiters.append(waiter)
            if task is not None:
                pending: list[asyncio.Future[Any]] = [waiter, task]
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failed = task.done() and not task.cancelled() and task.exception() is not None
                if failed and not slot.live():
                    exc = task.exception()
                    if isinstance(exc, HostKeyConnectError):
                        raise HostKeyConnectError(str(exc)) from None
                    if isinstance(exc, ConnectError):
                        raise ConnectError(str(exc), transient=exc.transient) from None
                    raise ConnectError(f"ssh: {slot.key}: {exc}") from exc
            else:
                await waiter

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
        return (await self._pick_conn(self._slot(host), reserve=False)).conn

    async def pin(self, host: str) -> tuple[asyncssh.SSHClientConnection, Callable[[], None]]:
        """Like ``connect`` but keeps the connection from idle close until ``unpin()``.

        Args:
            host: SSH host (name, alias, ``user@host`` or ``host:port``).

        Returns:
            The connection and an idempotent ``unpin`` callable.

        Raises:
            ConnectError: the host cannot be reached or refused the login.
        """
        slot = self._slot(host)
        c = await self._pick_conn(slot, reserve=False)
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
        slot = self._slot(host)
        refusals = 0
        while True:
            c = await self._pick_conn(slot, reserve=True)
            lease = Lease(self, slot, c)
            try:
                result = await opener(c.conn)
            except asyncssh.ChannelOpenError as exc:
                lease.release()
                alive = c.alive and not c.conn.is_closed()
                # Not opened on a live connection: the server refused the channel (OpenSSH
                # says "open failed" when MaxSessions is reached). Safe to retry.
                if alive and (exc.code in _REFUSED_CODES or not started()):
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
                    self._drop(slot, c)
                    if started():
                        raise MayHaveRunError(str(exc.reason)) from None
                    continue
                raise ConnectError(f"ssh: {host}: {exc.reason}") from None
            except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError) as exc:
                lease.release()
                self._drop(slot, c)
                if started():
                    raise MayHaveRunError(str(exc)) from None
                continue
            except BaseException:
                lease.release()
                raise
            log.debug("channel opened on %s (%d/%d on its connection)", host, c.channels,
                      self.max_channels_per_connection)
            return lease, result


# ---------------------------------------------------------------------------------------
# which pool is current
# ---------------------------------------------------------------------------------------

_current: contextvars.ContextVar[Pool | None] = contextvars.ContextVar(
    "dispatch_ssh_pool", default=None
)
_default_lock = threading.Lock()
_default_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pool] = (
    weakref.WeakKeyDictionary()
)


def current_pool() -> Pool:
    """The pool in the current context.

    The innermost ``async with Pool()``, else the default pool of the running event loop
    (created on first use, closed when the blocking API's loop shuts down). Call it from
    a coroutine.

    Returns:
        The current ``Pool``.
    """
    pool = _current.get()
    pid = os.getpid()
    if pool is not None and not pool.closed and pool._pid == pid:
        return pool
    loop = asyncio.get_running_loop()
    with _default_lock:
        pool = _default_pools.get(loop)
        if pool is None or pool.closed or pool._pid != pid:
            pool = Pool()
            _default_pools[loop] = pool
            if threading.get_ident() == _blocking.loop_thread_ident():
                _blocking.add_shutdown_hook(pool.close)
    return pool


def _forget_pools_after_fork() -> None:
    # The child must never use (or close) the parent's connections: just drop them.
    global _default_lock
    _default_lock = threading.Lock()
    for pool in list(_default_pools.values()):
        pool._slots.clear()
        pool._closed = True
    _default_pools.clear()


os.register_at_fork(after_in_child=_forget_pools_after_fork)
