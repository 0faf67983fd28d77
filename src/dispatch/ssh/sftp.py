"""One SFTP session per pooled connection, and the pipelined SFTP steps transfers use.

A session is started by a connection's first transfer and reused by every later one;
it dies with its connection (or when the pool closes). While a transfer uses it, it
holds one channel slot of the pool, like any command; idle, it holds none.

Requests are pipelined: OpenSSH's sftp-server answers them in the order they were sent,
so a batch (open + writes + fsetstat + close, or several files' renames) costs one round
trip instead of one per request. ``batch`` sends every request of a step before waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import posixpath
import secrets
import stat
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncssh

from .context import current_pool
from .mux import find_master, master_gate
from .mux_sftp import forget_master_sftp, master_sftp
from .registry import PoolKey

__all__ = [
    "Failed",
    "Entry",
    "session",
    "batch",
    "first_error",
    "probe",
    "open_new",
    "open_read",
    "open_probe",
    "send_file",
    "recv_file",
    "rename",
    "makedirs",
    "explain",
    "tmp_name",
    "MAX_REQUESTS",
    "PARALLEL_FILES",
]

T = TypeVar("T")

MAX_REQUESTS = 128  # write/read requests in flight per file
PARALLEL_FILES = 32  # files of a tree in flight at once (sftp-server allows 512 handles)
CREATE = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL


class Failed(Exception):
    """A transfer failed for a reason the caller should read (returncode, message)."""

    def __init__(self, returncode: int, message: str) -> None:
        super().__init__(message)
        self.returncode = returncode


# -- the per-connection session ----------------------------------------------------------


class _Sessions:
    """The SFTP session of each connection of one pool (started once, shared)."""

    def __init__(self) -> None:
        self._by_conn: weakref.WeakKeyDictionary[
            asyncssh.SSHClientConnection, asyncio.Task[asyncssh.SFTPClient]
        ] = weakref.WeakKeyDictionary()
        self._watchers: set[asyncio.Task[None]] = set()
        self.started = 0  # sessions started (tests count reuse with it)

    async def client_for(self, conn: asyncssh.SSHClientConnection) -> asyncssh.SFTPClient:
        """The connection's session, started on first use (one start in flight at a time)."""
        task = self._by_conn.get(conn)
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = asyncio.ensure_future(conn.start_sftp_client())
            self._by_conn[conn] = task
            self.started += 1
            task.add_done_callback(functools.partial(self._started, conn))
        return await asyncio.shield(task)

    def _started(
        self, conn: asyncssh.SSHClientConnection, task: asyncio.Task[asyncssh.SFTPClient]
    ) -> None:
        if task.cancelled() or task.exception() is not None:
            if self._by_conn.get(conn) is task:
                del self._by_conn[conn]
            return
        client = task.result()

        async def watch() -> None:  # forget the session as soon as its channel closes
            await client.wait_closed()
            if self._by_conn.get(conn) is task:
                del self._by_conn[conn]

        w = asyncio.ensure_future(watch())
        self._watchers.add(w)
        w.add_done_callback(self._watchers.discard)

    def forget(self, conn: asyncssh.SSHClientConnection) -> None:
        """Drop (and close) the connection's session after it failed under a transfer."""
        task = self._by_conn.pop(conn, None)
        if task is not None and task.done() and not task.cancelled() and not task.exception():
            task.result().exit()

    async def aclose(self) -> None:
        """Close every session (the pool is closing)."""
        for task in list(self._by_conn.values()):
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result().exit()
            else:
                task.cancel()
        self._by_conn.clear()
        for w in list(self._watchers):
            w.cancel()


async def _close_sessions(sessions: _Sessions) -> None:
    await sessions.aclose()


SESSIONS: PoolKey[_Sessions] = PoolKey("ssh.sftp sessions", _Sessions, _close_sessions)

_BROKEN = (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection, asyncssh.ConnectionLost,
           asyncssh.DisconnectError, BrokenPipeError)


@contextlib.asynccontextmanager
async def session(host: str) -> AsyncIterator[asyncssh.SFTPClient]:
    """The SFTP session of a pooled connection to ``host``, holding a channel slot while used
    (or, when the user's ControlMaster to ``host`` listens, a session on that master)."""
    pool = current_pool()
    master = await find_master(pool, host)
    shared = await master_sftp(pool, master) if master is not None else None
    if shared is not None:
        try:
            async with master_gate(pool, host):  # a session slot on the master while used
                yield shared
        except BaseException as exc:
            if isinstance(first_error(exc), _BROKEN):
                await asyncio.shield(forget_master_sftp(pool, host))
            raise
        return
    sessions = pool.registry.get(SESSIONS)
    lease, client = await pool.open_channel(host, sessions.client_for)
    try:
        yield client
    except BaseException as exc:
        if isinstance(first_error(exc), _BROKEN):
            sessions.forget(lease.conn)
        raise
    finally:
        lease.release()


# -- pipelining ------------------------------------------------------------------------


async def batch(*requests: Awaitable[T]) -> list[T | Exception]:
    """Send every request now, in this order, then wait for all replies: one round trip.

    Each item is a coroutine that sends its request on its first step (the SFTPClient
    methods used here do); errors are returned in place, not raised.
    """
    results = await asyncio.gather(*requests, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, Exception):
            raise r  # cancellation and the like
    return results  # type: ignore[return-value]


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of an ExceptionGroup (a TaskGroup's failure), else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def tmp_name(final: str) -> str:
    """A fresh hidden temporary name beside ``final`` (remote, POSIX path)."""
    parent, base = posixpath.split(final.rstrip("/"))
    return posixpath.join(parent, f".{base}.dispatch-{secrets.token_hex(6)}.tmp")


# -- what is at a path -----------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """What a remote path holds: ``lstat`` (``link``) and ``stat`` (what it points to)."""

    path: str
    exists: bool  # lstat found something (a dangling link exists)
    link: bool
    kind: str | None  # "dir", "file", "other"; None: nothing (or a dangling link)
    mode: int  # permission bits of what it points to (0 if nothing)
    error: Exception | None = None  # stat's error other than "no such file"

    @property
    def is_dir(self) -> bool:
        """A directory, or a link to one."""
        return self.kind == "dir"


def _kind(attrs: asyncssh.SFTPAttrs) -> str:
    perms = attrs.permissions or 0
    if stat.S_ISDIR(perms):
        return "dir"
    return "file" if stat.S_ISREG(perms) else "other"


def entry_of(path: str, lres: object, sres: object) -> Entry:
    """An ``Entry`` from the results of ``lstat(path)`` and ``stat(path)``."""
    link = isinstance(lres, asyncssh.SFTPAttrs) and stat.S_ISLNK(lres.permissions or 0)
    exists = isinstance(lres, asyncssh.SFTPAttrs)
    if isinstance(sres, asyncssh.SFTPAttrs):
        return Entry(path, True, link, _kind(sres), stat.S_IMODE(sres.permissions or 0))
    err: Exception | None = None
    if isinstance(sres, Exception) and not isinstance(sres, asyncssh.SFTPNoSuchFile):
        err = sres
    return Entry(path, exists, link, None, 0, err)


def probe(sftp: asyncssh.SFTPClient, path: str) -> list[Awaitable[Any]]:
    """The two requests ``entry_of`` reads (lstat, stat), to be sent in a ``batch``."""
    return [sftp.lstat(path), sftp.stat(path)]


# -- writing and reading one file -------------------------------------------------------


def open_new(sftp: asyncssh.SFTPClient, tmp: str) -> Awaitable[asyncssh.SFTPClientFile]:
    """Create ``tmp`` exclusively, 0600 (never readable by others while written)."""
    return sftp.open(tmp, CREATE, asyncssh.SFTPAttrs(permissions=0o600), encoding=None,
                     block_size=0)


def open_read(sftp: asyncssh.SFTPClient, path: str) -> Awaitable[asyncssh.SFTPClientFile]:
    """Open ``path`` for reading (bytes; our own block handling)."""
    return sftp.open(path, "rb", encoding=None, block_size=0)


def open_probe(sftp: asyncssh.SFTPClient, path: str) -> Awaitable[asyncssh.SFTPClientFile]:
    """Open an existing file for writing without changing it: may we write it? (scp's check)."""
    return sftp.open(path, asyncssh.FXF_WRITE, encoding=None, block_size=0)


async def send_file(
    sftp: asyncssh.SFTPClient,
    fh: asyncssh.SFTPClientFile,
    read: Callable[[int, int], bytes],
    size: int,
    final: asyncssh.SFTPAttrs | None,
    progress: Callable[[int], None],
) -> None:
    """Write ``size`` bytes (``read(offset, n)``), set ``final`` attributes, close: pipelined.

    Up to MAX_REQUESTS writes are in flight; the fsetstat and close are sent right after
    the last write, so a small file costs one round trip. Raises the first failure (the
    handle is then closed by the caller's cleanup: ``close_quietly``).
    """
    limit = max(1, int(sftp.limits.max_write_len or 32768))
    window = asyncio.Semaphore(MAX_REQUESTS)
    tasks: list[asyncio.Future[Any]] = []

    async def one(offset: int, data: bytes) -> None:
        try:
            await fh.write(data, offset)
        finally:
            window.release()
        progress(len(data))

    try:
        for offset in range(0, size, limit):
            await window.acquire()
            failed = next((t for t in tasks if t.done() and t.exception()), None)
            if failed is not None:
                window.release()
                break
            data = read(offset, min(limit, size - offset))
            tasks.append(asyncio.ensure_future(one(offset, data)))
        if final is not None:
            tasks.append(asyncio.ensure_future(fh.setstat(final)))
        tasks.append(asyncio.ensure_future(fh.close()))
        results = await asyncio.gather(*tasks, return_exceptions=True)
    except BaseException:
        for t in tasks:
            t.cancel()
        raise
    for r in results:
        if isinstance(r, BaseException):
            raise r


async def recv_file(
    sftp: asyncssh.SFTPClient,
    path: str,
    fh: asyncssh.SFTPClientFile,
    size: int,
    write: Callable[[int, bytes], None],
    progress: Callable[[int], None],
) -> int:
    """Read the whole file (``size`` is a hint): reads, an EOF probe and close pipelined.

    A file that grew or returned short reads is read on (the handle is reopened if the
    first batch already closed it). Returns the number of bytes read.
    """
    limit = max(1, int(sftp.limits.max_read_len or 32768))
    pending = [(off, min(limit, size - off)) for off in range(0, size, limit)]
    pending.append((size, limit))  # EOF probe: b"" unless the file grew
    end, handle, first = 0, fh, True
    window = asyncio.Semaphore(MAX_REQUESTS)
    while pending:

        async def one(off: int, n: int, h: asyncssh.SFTPClientFile = handle) -> bytes:
            async with window:
                data: bytes = await h.read(n, off)
                return data

        reqs: list[Awaitable[Any]] = [one(o, n) for o, n in pending]
        closing = first and len(pending) <= MAX_REQUESTS  # else close would overtake reads
        if closing:
            reqs.append(handle.close())
        results = (await asyncio.gather(*reqs))[: len(pending)]
        more: list[tuple[int, int]] = []
        eof: int | None = None
        for (off, n), data in zip(pending, results, strict=False):
            if data:
                write(off, data)
                progress(len(data))
                end = max(end, off + len(data))
            if not data:
                eof = off if eof is None else min(eof, off)
            elif len(data) < n or off >= size:  # short read, or the file goes on past size
                more.append((off + len(data), limit if off >= size else n - len(data)))
        pending = [(o, n) for o, n in more if eof is None or o < eof]
        if pending and closing:
            handle = await open_read(sftp, path)
        elif not pending and not closing:
            await handle.close()
        first = False
    return end


async def close_quietly(fh: asyncssh.SFTPClientFile | None) -> None:
    """Close a handle during cleanup, ignoring errors (it may be closed already)."""
    if fh is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(fh.close(), 10.0)


# -- directories, renames and errors ----------------------------------------------------


async def rename(sftp: asyncssh.SFTPClient, src: str, dst: str) -> None:
    """Atomically replace ``dst`` with ``src`` (posix-rename; plain rename if unsupported)."""
    try:
        await sftp.posix_rename(src, dst)
    except asyncssh.SFTPOpUnsupported:
        await sftp.rename(src, dst, flags=asyncssh.FXR_OVERWRITE)


async def makedirs(sftp: asyncssh.SFTPClient, path: str, host: str) -> None:
    """Create ``path`` and its missing parents (the probes pipelined, then each mkdir).

    asyncssh's ``makedirs`` hides a refused intermediate ``mkdir`` and then reports "No
    such file"; here the first level that cannot be created is named with the reason.
    """
    levels: list[str] = []
    cur = path.rstrip("/")
    while cur not in ("", "/", "."):
        levels.append(cur)
        cur = posixpath.dirname(cur)
    found = await batch(*(sftp.stat(d) for d in levels))
    missing: list[str] = []
    for d, res in zip(levels, found, strict=True):
        if isinstance(res, asyncssh.SFTPAttrs):
            if _kind(res) != "dir":
                raise Failed(1, f"dispatch: cannot create directory '{d}' on {host}: "
                             "File exists (not a directory)")
            break
        if isinstance(res, asyncssh.SFTPPermissionDenied):
            raise Failed(1, f"dispatch: cannot access '{d}' on {host}: Permission denied")
        missing.append(d)
    made = await batch(*(sftp.mkdir(d) for d in reversed(missing)))
    for d, got in zip(reversed(missing), made, strict=True):
        if isinstance(got, asyncssh.SFTPPermissionDenied):
            raise Failed(1, f"dispatch: cannot create directory '{d}' on {host}: "
                         "Permission denied")
        if isinstance(got, Exception):
            again = await batch(sftp.stat(d))  # made concurrently by someone else: fine
            if not (isinstance(again[0], asyncssh.SFTPAttrs) and _kind(again[0]) == "dir"):
                raise Failed(1, f"dispatch: cannot create directory '{d}' on {host}: "
                             f"{getattr(got, 'reason', got)}")


async def explain(
    sftp: asyncssh.SFTPClient, exc: asyncssh.SFTPError, host: str, path: str, size: int
) -> Failed:
    """A clear message for a failed write: SFTP says only "Failure" when the disk is full.

    Asks the server for the free space of the target's filesystem (``statvfs``, an
    OpenSSH extension; skipped if unsupported) while the partial temp file still exists.
    """
    parent = posixpath.dirname(path.rstrip("/")) or "."
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return Failed(1, f"dispatch: writing {host}:{path}: Permission denied")
    if not isinstance(exc, asyncssh.SFTPNoSuchFile):
        free, where = None, parent
        for _ in range(8):  # the nearest existing ancestor (a failed mkdir left none)
            try:
                vfs = await asyncio.wait_for(sftp.statvfs(where), 10.0)
                free = int(vfs.bavail) * int(vfs.frsize or vfs.bsize)
                break
            except asyncssh.SFTPNoSuchFile:
                where = posixpath.dirname(where) or "."
            except (asyncssh.Error, OSError, TimeoutError):
                break
        if free is not None and free < size:
            return Failed(
                1, f"dispatch: No space left on device on {host}:{parent} ({free} bytes free, "
                f"{size} bytes to write)")
    return Failed(1, f"dispatch: writing {host}:{path}: {exc.reason}")


async def remove_quietly(sftp: asyncssh.SFTPClient, files: Sequence[str],
                         dirs: Sequence[str] = ()) -> None:
    """Remove temp files, then (deepest first) directories, pipelined; errors ignored."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            batch(*(sftp.remove(f) for f in files),
                  *(sftp.rmdir(d) for d in sorted(dirs, key=len, reverse=True))), 30.0)


async def rmtree_quietly(sftp: asyncssh.SFTPClient, path: str) -> None:
    """Remove a temporary tree, ignoring errors."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sftp.rmtree(path), 60.0)
