"""copy_to, copy_from, write_file: SFTP over the pool, atomic on the receiving side.

Every upload lands under a temporary name in the target directory and is renamed into
place (``posix-rename``), so a killed transfer never leaves a truncated file under the
final name. A directory is uploaded into a temporary sibling and renamed as a whole; if
the target directory already exists its files are moved in one by one (each atomically).
Paths follow ``scp``: copying onto an existing directory puts the source inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import secrets
import shutil
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from ..errors import InvalidValueError
from ..results import RunResult
from .commands import check_timeout
from .pool import ConnectError, Lease, current_pool

__all__ = ["copy_to", "copy_from", "write_file"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Progress callback: ``progress(bytes_done, bytes_total)``."""

# -1: asyncssh sizes requests from the server's limits@openssh.com reply (OpenSSH's
# sftp-server: 255 KiB; a larger block makes it drop the session).
BLOCK_SIZE = -1
MAX_REQUESTS = 128  # parallel requests in flight per file
PARALLEL_FILES = 16  # files of a directory tree in flight at once


class _Failed(Exception):
    """A transfer failed for a reason the caller should read (returncode, message)."""

    def __init__(self, returncode: int, message: str) -> None:
        super().__init__(message)
        self.returncode = returncode


def _remote(path: str) -> str:
    """SFTP path for ``path``: ``~`` and ``~/x`` become paths relative to the home directory."""
    if not isinstance(path, str) or not path:
        raise _Failed(2, f"dispatch: invalid remote path {path!r}")
    if "\x00" in path:
        raise _Failed(2, f"dispatch: remote path contains a NUL byte: {path!r}")
    if path == "~":
        return "."
    if path.startswith("~/"):
        return path[2:].lstrip("/") or "."
    if path.startswith("~"):
        raise _Failed(2, f"dispatch: remote path {path!r}: only ~ and ~/ are expanded")
    return path


def _local_path(path: object) -> Path:
    """``path`` as a Path; anything but a non-empty str or PathLike is a programming error."""
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise InvalidValueError(f"local_path must be a str or Path, not {path!r}")
    return Path(path)


def _tmp_name(final: str, sep: str = "/") -> str:
    parent, base = posixpath.split(final.rstrip("/")) if sep == "/" else os.path.split(final)
    name = f".{base}.dispatch-{secrets.token_hex(6)}.tmp"
    return posixpath.join(parent, name) if sep == "/" else os.path.join(parent, name)


@contextlib.asynccontextmanager
async def _sftp(host: str) -> AsyncIterator[asyncssh.SFTPClient]:
    """An SFTP client on a pooled connection, holding one channel slot while in use."""
    pool = current_pool()
    lease: Lease
    lease, client = await pool.open_channel(host, lambda conn: conn.start_sftp_client())
    try:
        yield client
    finally:
        client.exit()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.wait_closed(), 5.0)
        lease.release()


class _Tracker:
    """Turns asyncssh's per-file progress into one (done, total) stream."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.progress, self.files = total, progress, dict[bytes | str, int]()

    def __call__(self, src: bytes, dst: bytes, done: int, total: int) -> None:
        self.files[src] = done
        if self.progress is not None:
            self.progress(sum(self.files.values()), self.total)


def _local_size(path: Path) -> int:
    if not path.exists():
        raise _Failed(1, f"dispatch: copy_to: local path {str(path)!r} does not exist")
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


async def _remote_isdir(sftp: asyncssh.SFTPClient, path: str) -> bool | None:
    """True/False for an existing dir/non-dir, None when nothing is there."""
    try:
        attrs = await sftp.stat(path)
    except asyncssh.SFTPNoSuchFile:
        return None
    return attrs.permissions is not None and stat.S_ISDIR(attrs.permissions)


async def _rm_remote(sftp: asyncssh.SFTPClient, path: str) -> None:
    with contextlib.suppress(Exception):
        if await _remote_isdir(sftp, path):
            await sftp.rmtree(path)
        else:
            await sftp.remove(path)


async def _rename(sftp: asyncssh.SFTPClient, src: str, dst: str) -> None:
    try:
        await sftp.posix_rename(src, dst)
    except asyncssh.SFTPOpUnsupported:
        await sftp.rename(src, dst, flags=asyncssh.FXR_OVERWRITE)


async def _makedirs(sftp: asyncssh.SFTPClient, path: str, host: str) -> None:
    """Create ``path`` and its missing parents, one level at a time.

    asyncssh's ``makedirs`` hides a refused intermediate ``mkdir`` and then reports "No
    such file"; here the first level that cannot be created is named with the reason.
    """
    missing: list[str] = []
    cur = path.rstrip("/")
    while cur not in ("", "/", "."):
        try:
            kind = await _remote_isdir(sftp, cur)
        except asyncssh.SFTPPermissionDenied:
            raise _Failed(
                1, f"dispatch: cannot access '{cur}' on {host}: Permission denied") from None
        if kind is True:
            break
        if kind is False:
            raise _Failed(
                1, f"dispatch: cannot create directory '{cur}' on {host}: File exists "
                "(not a directory)")
        missing.append(cur)
        cur = posixpath.dirname(cur)
    for d in reversed(missing):
        try:
            await sftp.mkdir(d)
        except asyncssh.SFTPPermissionDenied:
            raise _Failed(
                1, f"dispatch: cannot create directory '{d}' on {host}: Permission denied"
            ) from None
        except asyncssh.SFTPError:
            if await _remote_isdir(sftp, d) is not True:  # not made concurrently: a real error
                raise


def _sftp_error(exc: BaseException) -> asyncssh.SFTPError | None:
    """The SFTP error behind ``exc`` (possibly inside a TaskGroup's ExceptionGroup)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, asyncssh.SFTPError) else None


async def _explain(
    sftp: asyncssh.SFTPClient, exc: asyncssh.SFTPError, host: str, path: str, size: int
) -> _Failed:
    """A clear message for a failed write: SFTP says only "Failure" when the disk is full.

    Asks the server for the free space of the target's filesystem (``statvfs``, an
    OpenSSH extension; skipped if unsupported) while the partial temp file still exists.
    """
    parent = posixpath.dirname(path.rstrip("/")) or "."
    if not isinstance(exc, asyncssh.SFTPPermissionDenied | asyncssh.SFTPNoSuchFile):
        free, probe = None, parent
        for _ in range(8):  # the nearest existing ancestor (a failed mkdir left none)
            try:
                vfs = await asyncio.wait_for(sftp.statvfs(probe), 10.0)
                free = int(vfs.bavail) * int(vfs.frsize or vfs.bsize)
                break
            except asyncssh.SFTPNoSuchFile:
                probe = posixpath.dirname(probe) or "."
            except (asyncssh.Error, OSError, TimeoutError):
                break
        if free is not None and free < size:
            return _Failed(
                1, f"dispatch: No space left on device on {host}:{parent} ({free} bytes free, "
                f"{size} bytes to write)")
    return _Failed(1, f"dispatch: writing {host}:{path}: {exc.reason}")


async def _explain_write(
    sftp: asyncssh.SFTPClient, exc: asyncssh.SFTPError, host: str, path: str, size: int
) -> _Failed:
    """Like ``_explain``, but first: the rename failed because the target is a directory."""
    with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
        if await asyncio.wait_for(_remote_isdir(sftp, path), 10.0):
            return _Failed(1, f"dispatch: writing {host}:{path}: it is a directory")
    return await _explain(sftp, exc, host, path, size)


def _result(exc: BaseException, what: str, host: str, timeout: float | None) -> RunResult:
    # Parallel directory uploads fail as an ExceptionGroup (TaskGroup): report the first.
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return RunResult(-1, "", f"dispatch: {what} on {host} timed out after {timeout}s\n")
    if isinstance(exc, ConnectError):
        return RunResult(255, "", f"{exc}\n")
    if isinstance(exc, _Failed):
        return RunResult(exc.returncode, "", f"{exc}\n")
    if isinstance(exc, asyncssh.SFTPError):
        return RunResult(1, "", f"dispatch: {what} on {host}: {exc.reason}\n")
    if isinstance(exc, asyncssh.Error | OSError):
        return RunResult(255 if isinstance(exc, asyncssh.Error) else 1, "",
                         f"dispatch: {what} on {host}: {exc}\n")
    raise exc


async def write_file(
    host: str,
    remote_path: str,
    data: bytes,
    *,
    mode: int = 0o600,
    timeout: float | None = None,
) -> RunResult:
    """Write ``data`` to ``remote_path`` on ``host`` atomically (temp name, then rename).

    Parent directories are created. The file is never readable by others while written
    (created 0600, then set to ``mode``). Failure: returncode != 0 with a clear stderr
    naming the host and path (a full disk says "No space left on device" with the free
    bytes; an uncreatable parent says which directory and why), and no partial file under
    the final name.

    Args:
        host: SSH host (name, alias, ``user@host`` or ``host:port``).
        remote_path: destination path on the host (``~/`` is the home directory).
        data: the file's content (``str`` is encoded as UTF-8).
        mode: permission bits of the final file (default 0600: private).
        timeout: optional timeout in seconds for the whole call.

    Returns:
        RunResult: returncode 0 on success; non-zero with stderr on failure (255 when the
        host cannot be reached, -1 on timeout).
    """
    check_timeout(timeout)
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif isinstance(data, bytearray | memoryview):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise InvalidValueError(f"write_file data must be bytes or str, not {type(data).__name__}")
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise InvalidValueError(f"write_file mode must be permission bits (0o600), not {mode!r}")
    what = f"write_file {remote_path!r}"
    try:
        async with asyncio.timeout(timeout), _sftp(host) as sftp:
            path = _remote(remote_path)
            parent = posixpath.dirname(path.rstrip("/"))
            tmp = _tmp_name(path)
            try:
                if parent:
                    await _makedirs(sftp, parent, host)
                attrs = asyncssh.SFTPAttrs(permissions=0o600)
                async with sftp.open(tmp, "wb", attrs) as fh:
                    await fh.write(data)
                await sftp.chmod(tmp, mode)
                await _rename(sftp, tmp, path)
            except BaseException as exc:
                err = _sftp_error(exc)
                clear = await asyncio.shield(_explain_write(sftp, err, host, path, len(data))) \
                    if err else None
                await asyncio.shield(_rm_remote(sftp, tmp))
                if clear is not None:
                    raise clear from None
                raise
    except Exception as exc:
        return _result(exc, what, host, timeout)
    return RunResult(0, "", "")


async def copy_to(
    local_path: str | Path,
    host: str,
    remote_path: str,
    timeout: float | None = None,
    *,
    progress: Progress | None = None,
) -> RunResult:
    """Copy a local file/directory to a remote host (SFTP, recursive, modes preserved).

    The upload lands atomically (temporary name in the target directory, then rename).
    Like ``scp``: onto an existing remote directory, the source goes inside it. On a
    failure, timeout or cancellation the temporary file is removed and the final name is
    untouched. Only if this process is killed outright (SIGKILL, power loss) can a
    ``.<name>.dispatch-<hex>.tmp`` file stay behind in the target directory; the final
    name still never holds a partial file.

    Args:
        local_path: local file or directory path.
        host: SSH host.
        remote_path: destination path on remote host (``~/`` is the home directory).
        timeout: optional timeout in seconds.
        progress: optional callback ``progress(bytes_done, bytes_total)``.

    Returns:
        RunResult with returncode, stdout, and stderr.
    """
    check_timeout(timeout)
    src = _local_path(local_path)
    what = f"copy_to {str(src)!r} -> {remote_path!r}"
    try:
        tracker = _Tracker(_local_size(src), progress)
        async with asyncio.timeout(timeout), _sftp(host) as sftp:
            dst = _remote(remote_path)
            kind = await _remote_isdir(sftp, dst)
            if kind is None and remote_path.endswith("/"):
                await _makedirs(sftp, dst, host)
                kind = True
            target = posixpath.join(dst, src.name) if kind else dst.rstrip("/") or dst
            parent = posixpath.dirname(target)
            if parent:
                await _makedirs(sftp, parent, host)
            await _upload(sftp, src, target, tracker, host)
    except Exception as exc:
        return _result(exc, what, host, timeout)
    return RunResult(0, "", "")


@dataclass
class _Listing:
    """A directory tree: dirs (top-down, with modes), regular files, symlinks (with targets)."""

    dirs: list[tuple[tuple[str, ...], int]] = field(default_factory=list)
    files: list[tuple[str, ...]] = field(default_factory=list)
    links: list[tuple[tuple[str, ...], str]] = field(default_factory=list)


def _local_listing(src: Path) -> _Listing:
    out = _Listing()
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src).parts
        out.dirs.append((rel, os.stat(dirpath).st_mode & 0o7777))
        for name in [*filenames, *dirnames]:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                out.links.append(((*rel, name), os.readlink(full)))
            elif name in filenames:
                out.files.append((*rel, name))
    return out


async def _in_parallel(jobs: list[Callable[[], Awaitable[None]]]) -> None:
    """Run transfer jobs a few at a time (SFTP pipelines them over the one channel)."""
    sem = asyncio.Semaphore(PARALLEL_FILES)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with sem:
            await job()

    async with asyncio.TaskGroup() as tg:
        for job in jobs:
            tg.create_task(one(job))


async def _put_tree(sftp: asyncssh.SFTPClient, src: Path, dst: str, tracker: _Tracker) -> None:
    """Upload directory ``src`` as new remote directory ``dst``, files in parallel."""
    listing = _local_listing(src)
    for rel, _mode in listing.dirs:  # writable while filling; final modes set at the end
        await sftp.mkdir(posixpath.join(dst, *rel), asyncssh.SFTPAttrs(permissions=0o700))

    def put(rel: tuple[str, ...]) -> Callable[[], Awaitable[None]]:
        return lambda: sftp.put(
            str(src.joinpath(*rel)), posixpath.join(dst, *rel), preserve=True,
            block_size=BLOCK_SIZE, max_requests=MAX_REQUESTS, progress_handler=tracker,
        )

    await _in_parallel([put(rel) for rel in listing.files])
    for rel, target in listing.links:
        await sftp.symlink(target, posixpath.join(dst, *rel))
    for rel, mode in reversed(listing.dirs):
        await sftp.chmod(posixpath.join(dst, *rel), mode)


async def _remote_listing(
    sftp: asyncssh.SFTPClient, root: str, rel: tuple[str, ...] = (), out: _Listing | None = None
) -> _Listing:
    out = out if out is not None else _Listing()
    here = posixpath.join(root, *rel)
    out.dirs.append((rel, (await sftp.stat(here)).permissions or 0o755))
    for entry in await sftp.readdir(here):
        name = entry.filename if isinstance(entry.filename, str) else entry.filename.decode()
        if name in (".", ".."):
            continue
        perms = entry.attrs.permissions or 0
        if stat.S_ISDIR(perms):
            await _remote_listing(sftp, root, (*rel, name), out)
        elif stat.S_ISLNK(perms):
            out.links.append(((*rel, name), str(await sftp.readlink(posixpath.join(here, name)))))
        elif stat.S_ISREG(perms):
            out.files.append((*rel, name))
    return out


def _make_local_dirs(dst: Path, listing: _Listing) -> None:
    for rel, _mode in listing.dirs:
        dst.joinpath(*rel).mkdir(mode=0o700, exist_ok=False)


def _finish_local_tree(dst: Path, listing: _Listing) -> None:
    for rel, target in listing.links:
        os.symlink(target, dst.joinpath(*rel))
    for rel, mode in reversed(listing.dirs):
        os.chmod(dst.joinpath(*rel), stat.S_IMODE(mode))


async def _get_tree(sftp: asyncssh.SFTPClient, src: str, dst: Path, tracker: _Tracker) -> None:
    """Download remote directory ``src`` as new local directory ``dst``, files in parallel."""
    listing = await _remote_listing(sftp, src)
    _make_local_dirs(dst, listing)

    def get(rel: tuple[str, ...]) -> Callable[[], Awaitable[None]]:
        return lambda: sftp.get(
            posixpath.join(src, *rel), str(dst.joinpath(*rel)), preserve=True,
            block_size=BLOCK_SIZE, max_requests=MAX_REQUESTS, progress_handler=tracker,
        )

    await _in_parallel([get(rel) for rel in listing.files])
    _finish_local_tree(dst, listing)


def _is_dir(path: Path) -> bool:
    return path.is_dir()


def _local_tree(src: Path) -> list[tuple[str, int, list[str]]]:
    """(relative dir, its mode, entries to move) for every directory under ``src``."""
    tree = []
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        tree.append((rel, os.stat(dirpath).st_mode & 0o7777, filenames + links))
    return tree


async def _upload(
    sftp: asyncssh.SFTPClient, src: Path, target: str, tracker: _Tracker, host: str
) -> None:
    existing = await _remote_isdir(sftp, target)
    is_dir = _is_dir(src)
    if is_dir and existing is False:
        raise _Failed(1, f"dispatch: copy_to: {target!r} exists and is not a directory")
    if not is_dir and existing is True:
        raise _Failed(1, f"dispatch: copy_to: {target!r} is a directory")
    tmp = _tmp_name(target)
    try:
        if is_dir:
            await _put_tree(sftp, src, tmp, tracker)
        else:
            await sftp.put(
                str(src), tmp, preserve=True,
                block_size=BLOCK_SIZE, max_requests=MAX_REQUESTS, progress_handler=tracker,
            )
        if not is_dir or existing is None:
            await _rename(sftp, tmp, target)
            return
        # Merge into an existing directory: each file renamed into place, atomically.
        for rel, mode, names in _local_tree(src):
            parts = Path(rel).parts if rel != "." else ()
            rdir = posixpath.join(target, *parts)
            tdir = posixpath.join(tmp, *parts)
            if parts and await _remote_isdir(sftp, rdir) is None:
                await sftp.mkdir(rdir, asyncssh.SFTPAttrs(permissions=mode))
            for name in names:
                rdst = posixpath.join(rdir, name)
                if await _remote_isdir(sftp, rdst):
                    raise _Failed(1, f"dispatch: copy_to: {rdst!r} is a directory")
                await _rename(sftp, posixpath.join(tdir, name), rdst)
        await sftp.rmtree(tmp)
    except BaseException as exc:
        err = _sftp_error(exc)
        clear = await asyncio.shield(_explain(sftp, err, host, target, tracker.total)) if err \
            else None
        await asyncio.shield(_rm_remote(sftp, tmp))
        if clear is not None:
            raise clear from None
        raise


async def copy_from(
    host: str,
    remote_path: str,
    local_path: str | Path,
    timeout: float | None = None,
    *,
    progress: Progress | None = None,
) -> RunResult:
    """Copy a remote file/directory to local (SFTP, recursive, modes preserved).

    The download lands atomically (temporary name next to the target, then rename). Like
    ``scp``: onto an existing local directory, the source goes inside it.

    Args:
        host: SSH host.
        remote_path: source path on remote host (``~/`` is the home directory).
        local_path: local destination path.
        timeout: optional timeout in seconds.
        progress: optional callback ``progress(bytes_done, bytes_total)``.

    Returns:
        RunResult with returncode, stdout, and stderr.
    """
    check_timeout(timeout)
    dst = _local_path(local_path)
    what = f"copy_from {remote_path!r} -> {str(dst)!r}"
    try:
        async with asyncio.timeout(timeout), _sftp(host) as sftp:
            src = _remote(remote_path)
            kind = await _remote_isdir(sftp, src)
            if kind is None:
                raise _Failed(1, f"dispatch: copy_from: {remote_path!r} does not exist on {host}")
            target = _local_target(dst, posixpath.basename(src.rstrip("/")) or "home")
            total = await _remote_size(sftp, src, kind)
            await _download(sftp, src, target, kind, _Tracker(total, progress))
    except Exception as exc:
        return _result(exc, what, host, timeout)
    return RunResult(0, "", "")


async def _remote_size(sftp: asyncssh.SFTPClient, path: str, isdir: bool) -> int:
    if not isdir:
        return int((await sftp.stat(path)).size or 0)
    total = 0
    for entry in await sftp.readdir(path):
        name = str(entry.filename)
        if name in (".", ".."):
            continue
        perms = entry.attrs.permissions or 0
        if stat.S_ISDIR(perms):
            total += await _remote_size(sftp, posixpath.join(path, name), True)
        elif stat.S_ISREG(perms):
            total += int(entry.attrs.size or 0)
    return total


def _local_target(dst: Path, name: str) -> Path:
    """Where a download lands (inside ``dst`` if it is a directory); parents created."""
    target = dst / name if dst.is_dir() else dst
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _check_local_target(target: Path, isdir: bool) -> None:
    if isdir and target.exists() and not target.is_dir():
        raise _Failed(1, f"dispatch: copy_from: {str(target)!r} exists and is not a directory")
    if not isdir and target.is_dir():
        raise _Failed(1, f"dispatch: copy_from: {str(target)!r} is a directory")


def _move_into_place(tmp: Path, target: Path, isdir: bool) -> None:
    """Rename the finished download; into an existing directory, file by file."""
    if not isdir or not target.exists():
        os.replace(tmp, target)
        return
    for dirpath, _dirnames, filenames in os.walk(tmp):
        rel = os.path.relpath(dirpath, tmp)
        ddir = target if rel == "." else target / rel
        if rel != ".":
            ddir.mkdir(exist_ok=True)
            shutil.copymode(dirpath, ddir)
        for name in filenames:
            os.replace(os.path.join(dirpath, name), ddir / name)
    shutil.rmtree(tmp, ignore_errors=True)


def _remove_local(tmp: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            tmp.unlink()


async def _download(
    sftp: asyncssh.SFTPClient, src: str, target: Path, isdir: bool, tracker: _Tracker
) -> None:
    _check_local_target(target, isdir)
    tmp = Path(_tmp_name(str(target), sep=os.sep))
    try:
        if isdir:
            await _get_tree(sftp, src, tmp, tracker)
        else:
            await sftp.get(
                src, str(tmp), preserve=True,
                block_size=BLOCK_SIZE, max_requests=MAX_REQUESTS, progress_handler=tracker,
            )
        _move_into_place(tmp, target, isdir)
    except BaseException:
        _remove_local(tmp)
        raise
