"""The pool's bookkeeping: one host's connections and channel slots, commands, tunnels.

No I/O of its own beyond closing a connection; `pool.py` decides when to connect and
how long to wait for a free slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import asyncssh

from .config import HostSpec
from .connect import ClientOptions
from .errors import ConnectError

__all__ = [
    "REFUSED_CODES",
    "PoolStats",
    "PooledConn",
    "HostSlot",
    "Lease",
    "open_beside",
    "RunningCommand",
    "TunnelRecord",
]

T = TypeVar("T")

# What OpenSSH answers a channel open with at MaxSessions: refused, safe to retry.
REFUSED_CODES = frozenset(
    {asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, asyncssh.OPEN_RESOURCE_SHORTAGE}
)


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
    idle_sessions: int = 0  # command sessions parked between commands (not in open_channels)


class PooledConn:
    """One pooled SSH connection and its channel bookkeeping.

    ``extra`` runs when the connection goes away (closing ProxyJump hops, unpinning the
    first hop): kept here rather than as attributes on asyncssh's connection object.
    """

    __slots__ = (
        "alive", "channels", "conn", "extra", "ident", "last_used", "parked", "peak", "pins"
    )

    def __init__(
        self, conn: asyncssh.SSHClientConnection, ident: int, extra: list[Callable[[], None]]
    ) -> None:
        self.conn = conn
        self.channels = 0
        self.parked = 0  # channels held by idle command sessions (counted in ``channels``)
        self.peak = 0
        self.pins = 0
        self.last_used = time.monotonic()
        self.alive = True
        self.extra = extra
        self.ident = ident

    @property
    def usable(self) -> bool:
        """Alive as far as the pool and asyncssh know."""
        return self.alive and not self.conn.is_closed()

    def close(self) -> None:
        """Mark dead and close the connection (idempotent), then run ``extra``."""
        if self.alive:
            self.alive = False
            self.conn.close()
        for fn in self.extra:
            with contextlib.suppress(Exception):
                fn()
        self.extra.clear()


class HostSlot:
    """All connections of one host string, plus waiters for a free channel."""

    def __init__(self, key: str, spec: HostSpec) -> None:
        self.key = key
        self.spec = spec
        self.conns: list[PooledConn] = []
        self.connect_task: asyncio.Task[PooledConn] | None = None
        self.waiters: list[asyncio.Future[None]] = []
        self.options: ClientOptions | None = None
        self.peak_connections = 0
        self.peak_channels = 0
        self.peak_per_conn = 0
        self.connects = 0
        self.connect_failures = 0
        self.refusals = 0
        self.no_extra_connect_before = 0.0  # after a failed extra connect, back off
        # The login answered a second factor (a one-time password): every extra
        # connection would ask for another code, so the pool keeps to one (dialer.py).
        self.second_factor = False

    def wake(self) -> None:
        """Wake every task waiting for a free channel or a new connection."""
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def live(self) -> list[PooledConn]:
        """The connections not yet known to be dead."""
        return [c for c in self.conns if c.alive]

    def add(self, c: PooledConn) -> None:
        """Register a freshly made connection."""
        self.conns.append(c)
        self.connects += 1
        self.peak_connections = max(self.peak_connections, len(self.live()))

    def pick(self, max_channels: int, *, reserve: bool) -> PooledConn | None:
        """The least busy usable connection (one with a free channel, reserved, if ``reserve``)."""
        best: PooledConn | None = None
        for c in self.conns:
            if not c.usable or (reserve and c.channels >= max_channels):
                continue
            if best is None or c.channels < best.channels:
                best = c
        if best is not None:
            if reserve:
                best.channels += 1
                best.peak = max(best.peak, best.channels)
                self.peak_per_conn = max(self.peak_per_conn, best.channels)
                total = sum(c.channels for c in self.conns if c.alive)
                self.peak_channels = max(self.peak_channels, total)
            best.last_used = time.monotonic()
        return best

    def drop(self, c: PooledConn) -> None:
        """Forget a connection (dead or idle) and close it."""
        if c in self.conns:
            self.conns.remove(c)
        c.close()
        self.wake()

    def stats(self) -> PoolStats:
        """This host's counters."""
        live = self.live()
        return PoolStats(
            host=self.key,
            open_connections=len(live),
            open_channels=sum(c.channels - c.parked for c in live),
            peak_connections=self.peak_connections,
            peak_channels=self.peak_channels,
            peak_channels_per_connection=self.peak_per_conn,
            connects=self.connects,
            connect_failures=self.connect_failures,
            channel_refusals=self.refusals,
            idle_sessions=sum(c.parked for c in live),
        )


class Lease:
    """One reserved channel slot on a pooled connection; ``release()`` when the channel closed."""

    __slots__ = ("_c", "_parked", "_released", "_slot")

    def __init__(self, slot: HostSlot, c: PooledConn) -> None:
        self._slot, self._c, self._released, self._parked = slot, c, False, False

    @property
    def conn(self) -> asyncssh.SSHClientConnection:
        """The connection the channel runs on."""
        return self._c.conn

    @property
    def host(self) -> str:
        """The host string the connection belongs to."""
        return self._slot.key

    def sibling(self) -> Lease:
        """Reserve one more channel on this connection, beyond the per-connection cap.

        Only for short work that must not wait for capacity its caller itself holds
        (killing a timed-out command): the cap keeps MaxSessions - 2, so there is room.
        """
        self._c.channels += 1
        self._c.last_used = time.monotonic()
        return Lease(self._slot, self._c)

    @property
    def alive(self) -> bool:
        """Whether that connection is still usable."""
        return self._c.usable

    def mark_dead(self) -> None:
        """Drop the connection from the pool (it broke under this channel)."""
        self._slot.drop(self._c)

    def park(self, parked: bool) -> None:
        """Mark the channel as an idle command session (still counted against the cap)."""
        if self._released or parked == self._parked:
            return
        self._parked = parked
        self._c.parked += 1 if parked else -1
        if parked:  # a waiter for a channel may now take this slot (the pool's reclaimers)
            self._slot.wake()

    def release(self) -> None:
        """Give the channel slot back (idempotent) and wake a waiter."""
        if self._released:
            return
        self.park(False)
        self._released = True
        self._c.channels -= 1
        self._c.last_used = time.monotonic()
        self._slot.wake()



async def open_beside(
    lease: Lease,
    opener: Callable[[asyncssh.SSHClientConnection], Awaitable[T]],
    *,
    retries: int,
) -> tuple[Lease, T]:
    """Open one more channel on ``lease``'s connection, outside the channel cap.

    For a kill that must not wait for capacity the timed-out commands themselves hold;
    a refused open (the server's MaxSessions) is retried up to ``retries`` times.

    Returns:
        The new channel's ``Lease`` (release it when the channel closed) and what
        ``opener`` returned.

    Raises:
        ConnectError: the connection is gone, or the open kept being refused.
    """
    refusals = 0
    while True:
        if not lease.alive:
            raise ConnectError(f"ssh: {lease.host}: the connection was closed")
        side = lease.sibling()
        try:
            return side, await opener(side.conn)
        except asyncssh.ChannelOpenError as exc:
            side.release()
            if exc.code in REFUSED_CODES and refusals < retries:
                refusals += 1
                await asyncio.sleep(min(0.25, 0.01 * refusals) * (0.5 + random.random()))
                continue
            raise ConnectError(f"ssh: {lease.host}: channel open refused: {exc.reason}") from None
        except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError) as exc:
            side.release()
            raise ConnectError(f"ssh: {lease.host}: {exc}") from None
        except BaseException:
            side.release()
            raise


@dataclass
class RunningCommand:
    """A command in flight: its host, the task awaiting it, and how to kill it remotely."""

    host: str
    task: asyncio.Task[Any] | None
    kill: Callable[[], Awaitable[object]]


class TunnelRecord(Protocol):
    """An in-process tunnel the pool closes with itself (see tunnel.py)."""

    def close(self) -> None:
        """Stop listening and release the connection."""

    async def wait_closed(self) -> None:
        """Wait until the listener is closed."""
