"""copy_to, copy_from, write_file: SFTP over the pool, atomic on the receiving side.

Every file lands under a temporary name beside its final name and is renamed into place
(``posix-rename``), so a killed transfer never leaves a truncated file under the final
name. Where a copy lands, and what happens to what is there, follows ``scp`` and
``cp -r`` (docs/guides/copying.md): into an existing directory the source goes inside
it; an existing file keeps its mode and is refused if it is not writable; a symlink is
written through. A new directory tree lands as a whole (one rename); one merged into an
existing directory is checked completely before its files are renamed into place.

Round trips: each connection keeps one SFTP session (sftp.py) and requests are
pipelined: a small ``copy_to`` costs 3 round trips (look + create, write + close,
rename), a small ``copy_from`` 2 (look + open, read + close), ``write_file`` 3.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh

from .._validate import check_seconds
from ..errors import InvalidValueError
from ..results import RunResult
from . import sftp as sf
from .download import get_tree, local_file_target, write_local_file
from .errors import ConnectError
from .trees import Tracker, put_tree

__all__ = ["copy_to", "copy_from", "write_file"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Progress callback: ``progress(bytes_done, bytes_total)``."""

_Failed = sf.Failed


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


def _result(exc: BaseException, what: str, host: str, timeout: float | None) -> RunResult:
    exc = sf.first_error(exc)  # parallel tree transfers fail as an ExceptionGroup
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


def _sftp_error(exc: BaseException) -> asyncssh.SFTPError | None:
    err = sf.first_error(exc)
    return err if isinstance(err, asyncssh.SFTPError) else None


async def _create_tmp(
    sftp: asyncssh.SFTPClient, tmp: str, opened: object, host: str, final: str
) -> asyncssh.SFTPClientFile:
    """The handle of ``tmp`` (``opened``: a speculative open's result), parents made if needed."""
    if isinstance(opened, asyncssh.SFTPClientFile):
        return opened
    if isinstance(opened, asyncssh.SFTPNoSuchFile):
        await sf.makedirs(sftp, posixpath.dirname(tmp), host)
        try:
            return await sf.open_new(sftp, tmp)
        except asyncssh.SFTPError as exc:
            opened = exc
    if isinstance(opened, asyncssh.SFTPPermissionDenied):
        raise _Failed(1, f"dispatch: cannot create {host}:{final}: Permission denied")
    if isinstance(opened, asyncssh.SFTPError):
        raise _Failed(1, f"dispatch: cannot create {host}:{final}: {opened.reason}")
    if isinstance(opened, BaseException):
        raise opened
    raise AssertionError(opened)


async def _land(
    sftp: asyncssh.SFTPClient,
    host: str,
    tmp: str,
    fh: asyncssh.SFTPClientFile,
    final: str,
    read: Callable[[int, int], bytes],
    size: int,
    attrs: asyncssh.SFTPAttrs,
    progress: Callable[[int], None],
    *,
    check_writable: bool = False,
    side: list[Awaitable[Any]] | None = None,
) -> None:
    """Write ``tmp`` (open as ``fh``) and rename it onto ``final``; on failure remove it.

    ``check_writable``: ``final`` is an existing file that must stay untouched unless we
    may write it (scp's rule; the probe open is pipelined with the data for small files).
    ``side``: cleanup requests to send along with the data (a spare temp file's removal).
    """
    probe_fh: asyncssh.SFTPClientFile | None = None
    probe_res: object = None
    try:
        limit = int(sftp.limits.max_write_len or 32768)
        probe = sf.open_probe(sftp, final) if check_writable else None
        if probe is not None and size > 4 * limit:  # a big upload: ask before sending it all
            probe_res = (await sf.batch(probe))[0]
            probe = None
        extra = [probe] if probe is not None else []
        results = await sf.batch(
            sf.send_file(sftp, fh, read, size, attrs, progress), *extra, *(side or []))
        if check_writable:
            probe_res = probe_res if not extra else results[1]
            if isinstance(probe_res, asyncssh.SFTPClientFile):
                probe_fh = probe_res
            elif isinstance(probe_res, asyncssh.SFTPPermissionDenied):
                raise _Failed(1, f"dispatch: cannot write {host}:{final}: Permission denied "
                              "(not writable; left unchanged)")
        if isinstance(results[0], Exception):
            raise results[0]
        renamed = await sf.batch(sf.rename(sftp, tmp, final),
                                 *([probe_fh.close()] if probe_fh else []))
        probe_fh = None
        if isinstance(renamed[0], Exception):
            raise renamed[0]
    except BaseException as exc:
        err = _sftp_error(exc)
        clear = await asyncio.shield(_explain_write(sftp, err, host, final, size)) \
            if err else None
        await asyncio.shield(_cleanup(sftp, [fh, probe_fh], [tmp]))
        if clear is not None:
            raise clear from None
        raise


async def _cleanup(sftp: asyncssh.SFTPClient, handles: list[asyncssh.SFTPClientFile | None],
                   files: list[str]) -> None:
    for h in handles:
        await sf.close_quietly(h)
    await sf.remove_quietly(sftp, files)


async def _explain_write(
    sftp: asyncssh.SFTPClient, exc: asyncssh.SFTPError, host: str, path: str, size: int
) -> _Failed:
    """Like ``sf.explain``, but first: the rename failed because the target is a directory."""
    try:
        res = await asyncio.wait_for(sf.batch(*sf.probe(sftp, path)), 10.0)
        if sf.entry_of(path, *res).is_dir:
            return _Failed(1, f"dispatch: writing {host}:{path}: it is a directory")
    except (asyncssh.Error, OSError, TimeoutError):
        pass
    return await sf.explain(sftp, exc, host, path, size)


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
    the final name. Unlike ``copy_to``, the name itself is replaced (a symlink there is
    replaced by the file) and the file always gets ``mode``.

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
    check_seconds("timeout", timeout, optional=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif isinstance(data, bytearray | memoryview):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise InvalidValueError(f"write_file data must be bytes or str, not {type(data).__name__}")
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise InvalidValueError(f"write_file mode must be permission bits (0o600), not {mode!r}")
    what = f"write_file {remote_path!r}"
    payload = data
    try:
        async with asyncio.timeout(timeout), sf.session(host) as sftp:
            path = _remote(remote_path)
            tmp = sf.tmp_name(path)
            opened = (await sf.batch(sf.open_new(sftp, tmp)))[0]
            fh = await _create_tmp(sftp, tmp, opened, host, path)
            await _land(sftp, host, tmp, fh, path, lambda o, n: payload[o:o + n], len(payload),
                        asyncssh.SFTPAttrs(permissions=mode), lambda n: None)
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
    preserve: bool = False,
) -> RunResult:
    """Copy a local file/directory to a remote host (SFTP, recursive), like ``scp -r``.

    Where it lands follows ``scp``/``cp -r``: onto an existing remote directory (or a
    path ending in ``/``, created if missing) the source goes inside it; otherwise it
    lands at ``remote_path`` (missing parents are created). An existing file is replaced
    atomically and keeps its mode; one you cannot write (0444) is refused and left
    unchanged; a symlink is written through (the link stays, the file it points to is
    replaced). A new file gets the source's mode. Inside a copied directory, relative
    links that stay inside it are copied as links, every other link as what it points to.
    The rules in full: docs/guides/copying.md.

    Every file lands atomically (temporary name beside it, then rename). A new directory
    lands as a whole; one merged into an existing directory is checked before anything
    is renamed into place, and if a rename still fails the error names the files that
    landed. On a failure, timeout or cancellation temporary files are removed. Only if
    this process is killed outright (SIGKILL, power loss) can a
    ``.<name>.dispatch-<hex>.tmp`` file stay behind; a final name never holds a partial
    file.

    Args:
        local_path: local file or directory path.
        host: SSH host.
        remote_path: destination path on remote host (``~/`` is the home directory).
        timeout: optional timeout in seconds.
        progress: optional callback ``progress(bytes_done, bytes_total)``.
        preserve: like ``scp -p``: set modification times and modes from the source,
            also on files and directories that already existed.

    Returns:
        RunResult with returncode, stdout, and stderr.
    """
    check_seconds("timeout", timeout, optional=True)
    src = _local_path(local_path)
    what = f"copy_to {str(src)!r} -> {remote_path!r}"
    try:
        try:
            st = src.stat()
        except FileNotFoundError:
            raise _Failed(1, f"dispatch: copy_to: local path {str(src)!r} does not exist") \
                from None
        async with asyncio.timeout(timeout), sf.session(host) as sftp:
            dst = _remote(remote_path)
            into = remote_path.endswith("/") or dst == "."
            if stat.S_ISDIR(st.st_mode):
                await put_tree(sftp, src, dst, into, host, progress, preserve)
            else:
                await _put_file(sftp, src, st, dst, into, host,
                                Tracker(st.st_size, progress), preserve)
    except Exception as exc:
        return _result(exc, what, host, timeout)
    return RunResult(0, "", "")


async def _put_file(
    sftp: asyncssh.SFTPClient,
    src: Path,
    st: os.stat_result,
    dst: str,
    into: bool,
    host: str,
    tracker: Tracker,
    preserve: bool,
) -> None:
    """One file: look at ``dst`` and ``dst/name`` and create both temp candidates at once."""
    inside = posixpath.join(dst, src.name)
    tmp_in, tmp_at = sf.tmp_name(inside), sf.tmp_name(dst.rstrip("/") or dst)
    opens = [sf.open_new(sftp, tmp_in)] + ([] if into else [sf.open_new(sftp, tmp_at)])
    first = await sf.batch(*sf.probe(sftp, dst), *sf.probe(sftp, inside), *opens)
    at, within = sf.entry_of(dst, *first[0:2]), sf.entry_of(inside, *first[2:4])
    opened = {tmp_in: first[4], tmp_at: first[5] if not into else None}
    if at.is_dir:
        target, entry, tmp = inside, within, tmp_in
    elif into:
        if at.exists:
            raise _Failed(1, f"dispatch: copy_to: {dst!r} exists and is not a directory")
        target, entry, tmp = inside, within, tmp_in
    else:
        target, entry, tmp = dst.rstrip("/") or dst, at, tmp_at
    side: list[Awaitable[Any]] = []  # removal of the speculative temp not used

    def drop(t: str) -> None:
        h = opened.get(t)
        if isinstance(h, asyncssh.SFTPClientFile):
            side.extend([sf.close_quietly(h), sf.remove_quietly(sftp, [t])])
        opened[t] = None

    for t in list(opened):
        if t != tmp:
            drop(t)
    try:
        final, existing = await _resolve(sftp, host, target, entry)
        if final != target:  # a symlink: the temp goes beside the file it points to
            drop(tmp)
            tmp = sf.tmp_name(final)
            opened[tmp] = (await sf.batch(sf.open_new(sftp, tmp)))[0]
        fh = await _create_tmp(sftp, tmp, opened[tmp], host, final)
    except BaseException:
        drop(tmp)
        await asyncio.shield(sf.batch(*side))
        raise
    mode = stat.S_IMODE(st.st_mode) if existing is None or preserve else existing
    attrs = asyncssh.SFTPAttrs(permissions=mode)
    if preserve:
        attrs = asyncssh.SFTPAttrs(permissions=mode, atime=int(st.st_atime),
                                   mtime=int(st.st_mtime))
    fd = os.open(src, os.O_RDONLY)
    try:
        await _land(sftp, host, tmp, fh, final, lambda o, n: os.pread(fd, n, o), st.st_size,
                    attrs, tracker.add, check_writable=existing is not None, side=side)
    finally:
        os.close(fd)


async def _resolve(
    sftp: asyncssh.SFTPClient, host: str, target: str, entry: sf.Entry
) -> tuple[str, int | None]:
    """Where a file copied onto ``target`` really goes, and the mode of what is there."""
    if entry.kind == "dir":
        raise _Failed(1, f"dispatch: copy_to: {target!r} is a directory")
    if entry.kind == "other":
        raise _Failed(1, f"dispatch: copy_to: {target!r} is not a regular file")
    if entry.error is not None:
        raise entry.error
    if entry.kind == "file" and not entry.mode & 0o222:
        raise _Failed(1, f"dispatch: copy_to: cannot write {host}:{target}: read-only "
                      f"(mode {entry.mode:04o}; left unchanged)")
    if entry.link:
        if entry.kind is None:
            raise _Failed(1, f"dispatch: copy_to: {host}:{target} is a symlink to nothing")
        real = str(await sftp.realpath(target))
        return real, entry.mode
    return target, entry.mode if entry.kind == "file" else None


async def copy_from(
    host: str,
    remote_path: str,
    local_path: str | Path,
    timeout: float | None = None,
    *,
    progress: Progress | None = None,
    preserve: bool = False,
) -> RunResult:
    """Copy a remote file/directory to local (SFTP, recursive), like ``scp -r``.

    The same rules as ``copy_to``, mirrored (docs/guides/copying.md): onto an existing
    local directory the source goes inside it; an existing file is replaced atomically,
    keeps its mode, and is refused if not writable (0444); a local symlink is written
    through; a new file gets the remote file's mode.

    Args:
        host: SSH host.
        remote_path: source path on remote host (``~/`` is the home directory).
        local_path: local destination path.
        timeout: optional timeout in seconds.
        progress: optional callback ``progress(bytes_done, bytes_total)``.
        preserve: like ``scp -p``: set modification times and modes from the source,
            also on files and directories that already existed.

    Returns:
        RunResult with returncode, stdout, and stderr.
    """
    check_seconds("timeout", timeout, optional=True)
    dst = _local_path(local_path)
    what = f"copy_from {remote_path!r} -> {str(dst)!r}"
    try:
        async with asyncio.timeout(timeout), sf.session(host) as sftp:
            src = _remote(remote_path)
            first = await sf.batch(sftp.stat(src), sf.open_read(sftp, src))
            attrs, fh = first
            if not isinstance(attrs, asyncssh.SFTPAttrs) and isinstance(
                    fh, asyncssh.SFTPClientFile):
                await sf.close_quietly(fh)
            if isinstance(attrs, asyncssh.SFTPNoSuchFile):
                raise _Failed(1, f"dispatch: copy_from: {remote_path!r} does not exist on {host}")
            if not isinstance(attrs, asyncssh.SFTPAttrs):
                raise attrs if isinstance(attrs, Exception) else AssertionError(attrs)
            name = posixpath.basename(src.rstrip("/")) or "home"
            if stat.S_ISDIR(attrs.permissions or 0):
                spare = [sf.close_quietly(fh)] if isinstance(fh, asyncssh.SFTPClientFile) else []
                await get_tree(sftp, src, attrs, dst, name, progress, preserve, spare)
                return RunResult(0, "", "")
            if not isinstance(fh, asyncssh.SFTPClientFile):
                raise fh if isinstance(fh, Exception) else AssertionError(fh)
            await _get_file(sftp, src, fh, attrs, dst, name, progress, preserve)
    except Exception as exc:
        return _result(exc, what, host, timeout)
    return RunResult(0, "", "")


async def _get_file(
    sftp: asyncssh.SFTPClient,
    src: str,
    fh: asyncssh.SFTPClientFile,
    attrs: asyncssh.SFTPAttrs,
    dst: Path,
    name: str,
    progress: Progress | None,
    preserve: bool,
) -> None:
    """One remote file (already open as ``fh``) onto the local destination ``dst``."""
    try:
        final, existing = local_file_target(dst, name)
    except BaseException:
        await sf.close_quietly(fh)
        raise
    size = int(attrs.size or 0)
    tracker = Tracker(size, progress)
    mode = stat.S_IMODE(attrs.permissions or 0o644) if existing is None or preserve else existing
    times = (float(attrs.atime or 0), float(attrs.mtime or 0)) if preserve else None

    async def fetch(write: Callable[[int, bytes], None]) -> None:
        await sf.recv_file(sftp, src, fh, size, write, tracker.add)

    try:
        await write_local_file(final, mode, times, fetch)
    except BaseException:
        await asyncio.shield(sf.close_quietly(fh))
        raise
