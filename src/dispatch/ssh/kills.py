"""Killing a remote command's process tree by its ``DISPATCH_RUN_ID`` tag (timeouts, cancels).

Every command runs with a unique ``DISPATCH_RUN_ID`` in its environment (exec channels
and command sessions alike). On timeout or cancellation a second channel kills every
process carrying that marker (and their sessions), so the remote tree is gone when
``run`` returns; if that cannot be confirmed, the caller says so. How the kill gets a
channel when the pool is full: see ``kill``.
"""

from __future__ import annotations

import asyncio
import logging
import shlex

import asyncssh

from .errors import ConnectError, MayHaveRunError
from .pool import Pool
from .registry import PoolKey
from .slots import Lease, open_beside

__all__ = ["kill", "kill_script"]

log = logging.getLogger(__name__)

_KILL_GRACE_ROUNDS = 5  # rounds of SIGTERM (0.1 s apart) before SIGKILL
_KILL_TIMEOUT = 10.0


def kill_script(run_id: str, *more: str) -> str:
    """Shell that kills every process tagged ``DISPATCH_RUN_ID=<id>`` (any id given), and
    their sessions; exit status 0 once none is left, 1 if some survived ~4 s of signals."""
    patterns = " ".join(f"-e {shlex.quote(f'DISPATCH_RUN_ID={r}')}" for r in (run_id, *more))
    return (
        "i=0\n"
        "while :; do\n"
        f"  pids=$(grep -lzxF {patterns} /proc/[0-9]*/environ 2>/dev/null"
        " | sed -n 's#^/proc/\\([0-9][0-9]*\\)/environ$#\\1#p')\n"
        '  [ -n "$pids" ] || exit 0\n'
        f"  if [ $i -lt {_KILL_GRACE_ROUNDS} ]; then sig=TERM; else sig=KILL; fi\n"
        "  sids=$(ps -o sid= -p \"$(echo $pids | tr ' ' ,)\" 2>/dev/null | sort -u)\n"
        "  for s in $sids; do [ \"$s\" -gt 1 ] && pkill -$sig -s \"$s\" 2>/dev/null; done\n"
        "  kill -s $sig $pids 2>/dev/null\n"
        "  i=$((i+1)); [ $i -gt 40 ] && exit 1\n"
        "  sleep 0.1\n"
        "done\n"
    )


class _KillChannel(asyncssh.SSHClientSession[bytes]):
    """The kill script's channel: its exit status and stderr."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.err = bytearray()
        self.exit_status: int | None = None
        self.done = done

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.err += data

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _KillBatch:
    """Run ids waiting to be killed over one connection; one kill channel at a time."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.waiting: dict[str, asyncio.Future[str | None]] = {}


# Kill batches per connection object of a pool (entries live while a batch is running).
_KILLS: PoolKey[dict[asyncssh.SSHClientConnection, _KillBatch]] = PoolKey(
    "ssh.kill_batches", dict
)


async def _kill_over(pool: Pool, host: str, run_ids: list[str], lease: Lease | None) -> str | None:
    """Run the kill script for ``run_ids``: beside ``lease`` if given, else on any channel.

    Returns:
        None when the script confirmed that no tagged process is left, else why not.
    """
    command = f"exec /bin/sh -c {shlex.quote(kill_script(*run_ids))}"
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    coll = _KillChannel(done)
    side: Lease | None = None
    chan: asyncssh.SSHClientChannel[bytes] | None = None

    async def opener(
        conn: asyncssh.SSHClientConnection,
    ) -> tuple[asyncssh.SSHClientChannel[bytes], asyncssh.SSHClientSession[bytes]]:
        return await conn.create_session(lambda: coll, command, encoding=None)

    try:
        async with asyncio.timeout(_KILL_TIMEOUT):
            if lease is not None:
                side, (chan, _) = await open_beside(
                    lease, opener, retries=pool.channel_open_retries
                )
            else:  # the kill is idempotent: a retry after a broken connection is safe
                side, (chan, _) = await pool.open_channel(host, opener)
            assert chan is not None
            chan.write_eof()
            await done
    except TimeoutError:
        why: str | None = f"no answer within {_KILL_TIMEOUT:g}s"
    except (ConnectError, MayHaveRunError, OSError, asyncssh.Error) as exc:
        why = str(exc).removeprefix("ssh: ")
    else:
        why = None if coll.exit_status == 0 else (
            f"the kill ended with status {coll.exit_status}: "
            f"{coll.err.decode('utf-8', errors='replace').strip()}"
        )
    finally:
        if chan is not None:
            chan.close()
        if side is not None:
            side.release()
    if why is not None:
        log.debug("remote kill on %s not confirmed: %s", host, why)
    return why


async def _drain_kills(
    pool: Pool, host: str, batches: dict[asyncssh.SSHClientConnection, _KillBatch],
    batch: _KillBatch,
) -> None:
    """Kill every run id queued on ``batch``, all at once per round, until none is queued."""
    try:
        while batch.waiting:
            waiting, batch.waiting = batch.waiting, {}
            why = await _kill_over(pool, host, list(waiting), batch.lease)
            for fut in waiting.values():
                if not fut.done():
                    fut.set_result(why)
    finally:
        if batches.get(batch.lease.conn) is batch:
            del batches[batch.lease.conn]
        for fut in batch.waiting.values():
            if not fut.done():
                fut.set_result("the kill was abandoned")


async def kill(pool: Pool, host: str, run_id: str, lease: Lease | None) -> str | None:
    """Kill the process tree tagged ``run_id`` (bounded in time); None once confirmed gone.

    The command's own channel still holds its slot (sshd keeps a session channel open
    while its process lives, so closing it first would not free anything), and when
    every channel of the pool is held by timed-out commands, a kill that waited for a
    free slot would wait for itself. So the kill runs on the command's own connection
    *outside* the channel cap (the cap keeps MaxSessions - 2 for this), and the kills of
    all commands of one connection that time out together share one channel per round.
    Without a live lease (the connection broke) it takes any channel of the host.

    Returns:
        None when confirmed, else a short reason the kill could not be confirmed.
    """
    if lease is None or not lease.alive:
        return await _kill_over(pool, host, [run_id], None)
    batches = pool.registry.get(_KILLS)
    batch = batches.get(lease.conn)
    if batch is None:
        batch = batches[lease.conn] = _KillBatch(lease)
        pool.spawn_cleanup(_drain_kills(pool, host, batches, batch))
    fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    batch.waiting[run_id] = fut
    return await asyncio.shield(fut)
