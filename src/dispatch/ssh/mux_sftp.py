"""SFTP through the user's OpenSSH ControlMaster: asyncssh's SFTP client over ``ssh -s sftp``.

Transfers ride a master the way commands do (`mux`): OpenSSH opens the ``sftp``
subsystem on the master's connection (no login of ours, no second factor) and the
``ssh`` process's stdin/stdout carry the SFTP protocol, which asyncssh's client speaks.
asyncssh starts that client only on its own channels, so this module hands it a reader
and a writer with the few methods it uses. Should a later asyncssh change them, the
transfer logs in as usual (said once in the log) instead of failing.

One session per host is kept open for the pool's life and shared by its transfers (as
over dispatch's own connections): starting one costs about five round trips (the mux
session, the subsystem, the SFTP version and limits, the close), which a slow link
would otherwise pay on every transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from dataclasses import dataclass
from typing import Any

import asyncssh

from .mux import Master
from .pool import Pool
from .registry import PoolKey

__all__ = [
    "MasterSftp", "master_sftp", "forget_master_sftp", "open_sftp_via_master",
    "close_sftp_via_master",
]  # fmt: skip

log = logging.getLogger(__name__)

_START_TIMEOUT = 30.0  # seconds for ssh to reach the master and the SFTP version exchange
_warned: set[str] = set()


@dataclass(eq=False)
class MasterSftp:
    """An SFTP session on a master: the client, its ``ssh`` process, its packet reader."""

    client: asyncssh.SFTPClient
    proc: asyncio.subprocess.Process
    reader: asyncio.Task[None]


async def _close_all(sessions: dict[str, asyncio.Task[MasterSftp | None]]) -> None:
    for task in list(sessions.values()):
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        elif not task.cancelled() and task.exception() is None:
            session = task.result()
            if session is not None:
                await close_sftp_via_master(session)
    sessions.clear()


# Per pool: host -> its shared session on the master (being started, or open).
_SESSIONS: PoolKey[dict[str, asyncio.Task[MasterSftp | None]]] = PoolKey(
    "ssh.mux_sftp sessions", dict, _close_all
)


async def master_sftp(pool: Pool, master: Master) -> asyncssh.SFTPClient | None:
    """The pool's shared SFTP session on ``master`` (started on first use; started again
    when the last one ended), or None when the master cannot carry SFTP (log in instead).

    Args:
        pool: the pool the session belongs to (closed with it).
        master: from `mux.find_master`.

    Returns:
        The SFTP client, or None.
    """
    sessions = pool.registry.get(_SESSIONS)
    task = sessions.get(master.host)
    if task is not None and task.done():
        ended = task.cancelled() or task.exception() is not None or task.result() is None
        if not ended:
            session = task.result()
            assert session is not None
            ended = session.proc.returncode is not None or session.reader.done()
            if ended:
                await close_sftp_via_master(session)
        if ended:
            del sessions[master.host]
            task = None
    if task is None:
        task = asyncio.ensure_future(open_sftp_via_master(pool, master))
        sessions[master.host] = task
    session = await asyncio.shield(task)
    if session is None and sessions.get(master.host) is task:
        del sessions[master.host]  # not cached: the next transfer tries the master again
    return None if session is None else session.client


async def forget_master_sftp(pool: Pool, host: str) -> None:
    """Close ``host``'s shared session on its master after it broke under a transfer."""
    task = pool.registry.get(_SESSIONS).pop(host, None)
    if task is not None and task.done() and not task.cancelled() and task.exception() is None:
        session = task.result()
        if session is not None:
            await close_sftp_via_master(session)


class _Channel:
    """What asyncssh's SFTP handler asks of its channel: closing state and its end."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing or self._proc.returncode is not None

    async def wait_closed(self) -> None:
        await self._proc.wait()


class _Reader:
    """The ssh process's stdout as the SFTP handler reads it (EOF: IncompleteReadError)."""

    def __init__(self, stream: asyncio.StreamReader, logger: Any) -> None:
        self._stream = stream
        self.logger = logger

    async def readexactly(self, n: int) -> bytes:
        return await self._stream.readexactly(n)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Writer:
    """The ssh process's stdin as the SFTP handler writes it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None
        self._stdin = proc.stdin
        self.channel = _Channel(proc)

    def write(self, data: bytes) -> None:
        self._stdin.write(data)

    def write_eof(self) -> None:
        self.channel.closing = True
        with contextlib.suppress(OSError, RuntimeError):
            self._stdin.close()

    def close(self) -> None:
        self.write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _client(proc: asyncio.subprocess.Process) -> tuple[Any, asyncssh.SFTPClient] | None:
    """An SFTP handler and client over ``proc``'s pipes; None when asyncssh's internals
    are not the ones this was written against (2.18-2.24)."""
    try:
        from asyncssh import sftp as asftp
        from asyncssh.logging import logger as ssh_logger

        assert proc.stdout is not None
        reader = _Reader(proc.stdout, ssh_logger.get_child("mux"))
        params = inspect.signature(asftp.SFTPClientHandler.__init__).parameters
        loop = asyncio.get_running_loop()
        version = asftp.MIN_SFTP_VERSION
        if "utf8_decode_errors" in params:  # asyncssh >= 2.20
            handler = asftp.SFTPClientHandler(
                loop, "strict", reader, _Writer(proc), version  # type: ignore[arg-type]
            )
        else:
            handler = asftp.SFTPClientHandler(loop, reader, _Writer(proc), version)  # type: ignore[call-arg, arg-type]
        return handler, asftp.SFTPClient(handler, "utf-8", "strict")
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        if "internals" not in _warned:
            _warned.add("internals")
            log.warning("transfers cannot ride the ControlMaster with this asyncssh (%s); "
                        "logging in instead", exc)
        return None


async def open_sftp_via_master(pool: Pool, master: Master) -> MasterSftp | None:
    """Start an SFTP session on ``master`` (one ``ssh -s sftp`` process); `master_sftp`
    keeps one per host and shares it. Users hold a slot of `mux.master_gate` while they
    use it (an idle session counts against the margin the cap leaves below MaxSessions).

    Args:
        pool: the pool whose channel cap bounds the sessions on the master.
        master: from `mux.find_master`.

    Returns:
        The session; None when the master could not be used (not reached, or asyncssh's
        internals differ): then log in as usual.
    """
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    try:
        proc = await asyncio.create_subprocess_exec(
            *master.argv[:-1], "-s", master.argv[-1], "sftp",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        made = _client(proc)
        if made is None:
            raise _Unusable
        handler, client = made
        async with asyncio.timeout(_START_TIMEOUT):
            await handler.start()
            task = asyncio.ensure_future(handler.recv_packets())
            await handler.request_limits()
    except (_Unusable, OSError, TimeoutError, asyncssh.Error, EOFError) as exc:
        why = await _stderr(proc)
        log.debug("SFTP through the ControlMaster of %s not started: %s %s", master.host,
                  type(exc).__name__, why)
        await _undo(proc, task)
        return None
    except BaseException:
        await _undo(proc, task)
        raise
    log.debug("SFTP to %s through its ControlMaster %s", master.host, master.control_path)
    return MasterSftp(client, proc, task)


async def close_sftp_via_master(session: MasterSftp) -> None:
    """End the session: EOF to the subsystem, then the process (bounded)."""
    try:
        with contextlib.suppress(Exception):
            session.client.exit()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(session.proc.wait()), 5.0)
    finally:
        await _undo(session.proc, session.reader)


async def _undo(
    proc: asyncio.subprocess.Process | None, task: asyncio.Task[None] | None
) -> None:
    if proc is not None:
        await _stop(proc)
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


class _Unusable(Exception):
    """asyncssh's SFTP internals are not the expected ones."""


async def _stderr(proc: asyncio.subprocess.Process | None) -> str:
    if proc is None or proc.stderr is None:
        return ""
    with contextlib.suppress(Exception):
        return (await asyncio.wait_for(proc.stderr.read(4096), 1.0)).decode(errors="replace")
    return ""


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 5.0)
