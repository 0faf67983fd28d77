"""Getting a pooled connection with a free channel: the pool's connect side.

Per host string: single-flight connects (one in flight per host) with retries of
transport failures, at most ``max_concurrent_handshakes`` handshakes per server address,
ProxyJump chains whose first hop is pooled, and a watch that forgets connections the
peer closed. One attempt is `connect.py`'s job; leases, reaping and closing are
`pool.py`'s (which owns the Dialer and hands it its settings and task spawner).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncssh

from ..errors import InvalidValueError
from . import connect
from .auth import Answerer, KbdintHandler, LoginState
from .config import HostSpec, parse_host
from .errors import ConnectError, HostKeyConnectError
from .slots import HostSlot, PooledConn

__all__ = ["Dialer", "DialSettings"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class DialSettings(Protocol):
    """What the Dialer reads from its pool (``Pool`` has all of these)."""

    @property
    def ssh_config(self) -> Path | None: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def connect_retries(self) -> int: ...
    @property
    def retry_backoff(self) -> float: ...
    @property
    def keepalive_interval(self) -> float | None: ...
    @property
    def keepalive_count_max(self) -> int | None: ...
    @property
    def accept_new_host_keys(self) -> bool: ...
    @property
    def kbdint(self) -> KbdintHandler | None: ...
    @property
    def kbdint_timeout(self) -> float: ...
    @property
    def max_channels_per_connection(self) -> int: ...
    @property
    def max_connections_per_host(self) -> int: ...
    @property
    def max_concurrent_handshakes(self) -> int: ...
    @property
    def reclaimers(self) -> list[Callable[[str], bool]]: ...
    @property
    def pid(self) -> int: ...

    def effective_known_hosts(self) -> Path | None:
        """The known_hosts file overriding the config's, if any."""
        ...


class Dialer:
    """The connections of one pool, per host string, and how new ones are made.

    Args:
        settings: the pool (limits, timeouts, host-key and kbdint policy).
        check: raises if the pool may not be used (closed, forked, another loop).
        spawn: runs a task the pool cancels when it closes.
        connected: called after each new connection (starts the pool's idle reaper).
    """

    def __init__(
        self,
        settings: DialSettings,
        *,
        check: Callable[[], None],
        spawn: Callable[[Awaitable[Any]], asyncio.Task[Any]],
        connected: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.slots: dict[str, HostSlot] = {}
        self._check = check
        self._spawn = spawn
        self._connected = connected
        self._handshakes: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._ident = 0

    def slot(self, host: str) -> HostSlot:
        """The bookkeeping of ``host`` (created on first use).

        Raises:
            InvalidValueError: ``host`` is not a str (a programming error).
            ConnectError: ``host`` cannot be an SSH destination.
        """
        if not isinstance(host, str):  # a programming error, not an unreachable host
            raise InvalidValueError(f"SSH host must be a str, not {type(host).__name__}: {host!r}")
        slot = self.slots.get(host)
        if slot is None:
            try:
                spec = parse_host(host)
            except ValueError as exc:
                raise ConnectError(f"dispatch: {exc}") from None
            slot = self.slots[host] = HostSlot(host, spec)
        return slot

    async def pick(self, slot: HostSlot, *, reserve: bool) -> PooledConn:
        """A live connection with a free channel (reserved if ``reserve``), connecting as needed.

        A host whose login needed a second factor (``slot.second_factor``) gets no extra
        connection while one is live: each would be another login and another code, so
        callers wait for a channel of the live one instead.

        Raises:
            ConnectError: no connection is left and connecting failed.
        """
        cap = self.settings.max_channels_per_connection
        while True:
            self._check()
            best = slot.pick(cap, reserve=reserve)
            if best is not None:
                return best
            if reserve and any(reclaim(slot.key) for reclaim in self.settings.reclaimers):
                continue
            task = slot.connect_task
            live = len(slot.live())
            if (
                task is None
                and live < self.settings.max_connections_per_host
                and (
                    live == 0
                    or (
                        not slot.second_factor
                        and time.monotonic() >= slot.no_extra_connect_before
                    )
                )
            ):
                task = slot.connect_task = self._spawn(self._open_conn(slot))

                def _done(t: asyncio.Task[PooledConn], s: HostSlot = slot) -> None:
                    if s.connect_task is t:
                        s.connect_task = None
                    if t.cancelled() or t.exception() is not None:
                        s.no_extra_connect_before = time.monotonic() + 1.0
                    s.wake()

                task.add_done_callback(_done)
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            slot.waiters.append(waiter)
            if task is None:
                await waiter
                continue
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

    # -- one connection -------------------------------------------------------------------

    async def _client_options(self, key: str, spec: HostSpec) -> connect.ClientOptions:
        s = self.settings
        return await connect.client_options(
            key,
            spec,
            ssh_config=s.ssh_config,
            known_hosts=s.effective_known_hosts(),
            keepalive_interval=s.keepalive_interval,
            keepalive_count_max=s.keepalive_count_max,
        )

    async def _hop_options(self, key: str, spec: HostSpec) -> asyncssh.SSHClientConnectionOptions:
        return (await self._client_options(key, spec)).opts

    async def _options(self, slot: HostSlot) -> connect.ClientOptions:
        if slot.options is None:
            slot.options = await self._client_options(slot.key, slot.spec)
        return slot.options

    def _handshake_sem(self, addr: tuple[str, int]) -> asyncio.Semaphore:
        sem = self._handshakes.get(addr)
        if sem is None:
            sem = asyncio.Semaphore(self.settings.max_concurrent_handshakes)
            self._handshakes[addr] = sem
        return sem

    def _answerer(self, copts: connect.ClientOptions | None) -> Answerer:
        batch = copts.batch_mode if copts is not None else False
        return Answerer(self.settings.kbdint, self.settings.kbdint_timeout, batch_mode=batch)

    async def _tunnel_for(
        self, slot: HostSlot, opts: asyncssh.SSHClientConnectionOptions
    ) -> tuple[asyncssh.SSHClientConnection | None, list[Callable[[], None]]]:
        """Open the ProxyJump chain: the first hop pooled (and pinned), later hops dedicated."""
        hops = connect.proxy_hops(slot.key, opts)
        if not hops:
            return None, []
        first = await self.pick(self.slot(hops[0]), reserve=False)
        first.pins += 1

        def _unpin(c: PooledConn = first) -> None:
            c.pins -= 1
            c.last_used = time.monotonic()

        try:
            conn, closers = await connect.connect_hops(
                slot.key, first.conn, hops[1:], self._hop_options, self.settings.connect_timeout,
                self._answerer(None),
            )
        except BaseException:  # the first hop stays pooled, but unpinned
            _unpin()
            raise
        return conn, [_unpin, *closers]

    async def _connect_once(
        self, slot: HostSlot
    ) -> tuple[asyncssh.SSHClientConnection, list[Callable[[], None]]]:
        """One connect attempt; returns the connection and what to run when it goes away.

        Marks ``slot.second_factor`` when the login answered keyboard-interactive.
        """
        copts = await self._options(slot)
        opts = copts.opts
        tunnel, cleanups = await self._tunnel_for(slot, opts)
        timeout = float(opts.connect_timeout or self.settings.connect_timeout)
        sem = self._handshake_sem((str(opts.host), int(opts.port)))
        state = LoginState()
        try:
            conn = await connect.open_connection(
                slot.key, opts, tunnel, timeout, sem, self._answerer(copts), state
            )
        except BaseException:
            for fn in reversed(cleanups):
                fn()
            raise
        if state.answered and not slot.second_factor:
            slot.second_factor = True
            log.debug("%s asked for a second factor: one connection only", slot.key)
        return conn, cleanups

    async def _open_conn(self, slot: HostSlot) -> PooledConn:
        """Connect with retries of transport failures; register the connection."""
        attempt = 0
        accepted_key = False
        while True:
            try:
                conn, cleanups = await self._connect_once(slot)
                break
            except asyncssh.HostKeyNotVerifiable:
                copts = await self._options(slot)
                accept = not accepted_key and (
                    self.settings.accept_new_host_keys or copts.accept_new
                )
                err = await connect.host_key_error(slot.key, copts, accept_new=accept)
                if err is None:  # accepted: connect again, now verifying against it
                    accepted_key = True
                    slot.options = None  # re-read: the known_hosts file may be new
                    continue
                slot.connect_failures += 1
                raise err from None
            except ConnectError:
                slot.connect_failures += 1
                raise
            except (TimeoutError, OSError, asyncssh.Error) as exc:
                opts = slot.options.opts if slot.options is not None else None
                msg, retryable = connect.describe(slot.key, slot.spec, opts, exc)
                if retryable and attempt < self.settings.connect_retries:
                    delay = connect.jitter(self.settings.retry_backoff, attempt)
                    log.debug("connect to %s failed (%s); retry in %.2fs", slot.key, msg, delay)
                    attempt += 1
                    await asyncio.sleep(delay)
                    continue
                slot.connect_failures += 1
                raise ConnectError(msg, transient=retryable) from None
        self._ident += 1
        c = PooledConn(conn, self._ident, cleanups)
        slot.add(c)
        self._spawn(self._watch(slot, c))
        self._connected()
        log.debug("connected to %s (connection %d of host)", slot.key, len(slot.conns))
        return c

    async def _watch(self, slot: HostSlot, c: PooledConn) -> None:
        try:
            await c.conn.wait_closed()
        except asyncio.CancelledError:
            # Pool.close(), or asyncio.run() ending with a default pool still open: close
            # the connection politely while the loop still runs.
            if c.alive and self.settings.pid == os.getpid():
                c.alive = False
                c.conn.close()
            raise
        if c.alive:
            log.debug("connection to %s closed by the peer; it will be replaced", slot.key)
        slot.drop(c)
