"""SFTP through the user's OpenSSH ControlMaster: asyncssh's SFTP client over ``ssh -s sftp``.

Transfers ride a master the way commands do (`mux`): OpenSSH opens the ``sftp``
subsystem on the master's connection (no login of ours, no second factor) and the
``ssh`` process's stdin/stdout carry the SFTP protocol, which asyncssh's client speaks.
asyncssh starts that client only on its own channels, so this module hands it a reader
and a writer with the few methods it uses. Should a later asyncssh change them, the
transfer logs in as usual (said once in the log) instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from dataclasses import dataclass
from typing import Any

import asyncssh

from .mux import Master, master_gate
from .pool import Pool

__all__ = ["MasterSftp", "open_sftp_via_master", "close_sftp_via_master"]

log = logging.getLogger(__name__)

_START_TIMEOUT = 30.0  # seconds for ssh to reach the master and the SFTP version exchange
_warned: set[str] = set()


@dataclass(eq=False)
class MasterSftp:
    """An SFTP session on a master: the client, its ``ssh`` process, the held slot."""

    client: asyncssh.SFTPClient
    proc: asyncio.subprocess.Process
    gate: asyncio.Semaphore
    reader: asyncio.Task[None]


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
    """Start an SFTP session on ``master`` (one ``ssh -s sftp`` process, one of the
    master's session slots held until `close_sftp_via_master`).

    Args:
        pool: the pool whose channel cap bounds the sessions on the master.
        master: from `mux.find_master`.

    Returns:
        The session; None when the master could not be used (not reached, or asyncssh's
        internals differ): then log in as usual.
    """
    gate = master_gate(pool, master.host)
    await gate.acquire()
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
        await _undo(proc, task, gate)
        return None
    except BaseException:
        await _undo(proc, task, gate)
        raise
    log.debug("SFTP to %s through its ControlMaster %s", master.host, master.control_path)
    return MasterSftp(client, proc, gate, task)


async def close_sftp_via_master(session: MasterSftp) -> None:
    """End the session: EOF to the subsystem, then the process (bounded), then the slot."""
    try:
        with contextlib.suppress(Exception):
            session.client.exit()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(session.proc.wait()), 5.0)
    finally:
        await _undo(session.proc, session.reader, session.gate)


async def _undo(
    proc: asyncio.subprocess.Process | None, task: asyncio.Task[None] | None,
    gate: asyncio.Semaphore,
) -> None:  # fmt: skip
    try:
        if proc is not None:
            await _stop(proc)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    finally:
        gate.release()


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
