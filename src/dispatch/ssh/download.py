"""copy_from's local side: where a download lands, new local trees and merges.

The rules mirror copy_to's (trees.py, docs/guides/copying.md): temp file beside the final
name then rename, a local symlink written through, a read-only file refused, a new tree
renamed into place as a whole, a merge checked completely before anything is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import secrets
import shutil
import stat
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncssh

from . import sftp as sf
from .trees import MAX_DEPTH, SHOW, Listing, Rel, Tracker, inside_tree, names_of

__all__ = ["get_tree", "local_file_target", "remote_listing", "write_local_file"]


async def remote_listing(sftp: asyncssh.SFTPClient, root: str, top: asyncssh.SFTPAttrs,
                         side: Sequence[Awaitable[Any]] = ()) -> Listing:
    """The remote tree under ``root`` (``top``: its attributes), level by level.

    Each level's requests are pipelined; ``side`` requests go along with the first.
    """
    out = Listing()
    out.dirs.append(((), stat.S_IMODE(top.permissions or 0o755), int(top.atime or 0),
                     int(top.mtime or 0)))
    level: list[Rel] = [()]
    while level:
        if len(level[0]) > MAX_DEPTH:
            raise sf.Failed(1, f"dispatch: copy_from: symlink loop under {root}")
        found = await sf.batch(*(sftp.readdir(posixpath.join(root, *r)) for r in level), *side)
        found, side = found[:len(level)], ()
        links: list[tuple[Rel, asyncssh.SFTPAttrs]] = []
        nxt: list[Rel] = []
        for rel, names in zip(level, found, strict=True):
            if isinstance(names, Exception):
                raise names
            for n in sorted(names, key=lambda n: str(n.filename)):
                name = str(n.filename)
                if name in (".", ".."):
                    continue
                crel, perms = (*rel, name), n.attrs.permissions or 0
                if stat.S_ISLNK(perms):
                    links.append((crel, n.attrs))
                elif stat.S_ISDIR(perms):
                    out.dirs.append((crel, stat.S_IMODE(perms), int(n.attrs.atime or 0),
                                     int(n.attrs.mtime or 0)))
                    nxt.append(crel)
                elif stat.S_ISREG(perms):
                    out.files.append((crel, posixpath.join(root, *crel), int(n.attrs.size or 0),
                                      stat.S_IMODE(perms), int(n.attrs.atime or 0),
                                      int(n.attrs.mtime or 0)))
        if links:
            paths = [posixpath.join(root, *r) for r, _ in links]
            got = await sf.batch(*(sftp.readlink(p) for p in paths),
                                 *(sftp.stat(p) for p in paths))
            for i, (crel, _) in enumerate(links):
                target, st = got[i], got[len(links) + i]
                target = str(target) if not isinstance(target, Exception) else ""
                if not isinstance(st, asyncssh.SFTPAttrs) or inside_tree(crel, target):
                    out.links.append((crel, target))
                elif stat.S_ISDIR(st.permissions or 0):
                    out.dirs.append((crel, stat.S_IMODE(st.permissions or 0),
                                     int(st.atime or 0), int(st.mtime or 0)))
                    nxt.append(crel)
                elif stat.S_ISREG(st.permissions or 0):
                    out.files.append((crel, paths[i], int(st.size or 0),
                                      stat.S_IMODE(st.permissions or 0), int(st.atime or 0),
                                      int(st.mtime or 0)))
        level = nxt
    return out


# -- the local side -------------------------------------------------------------------------


def local_file_target(target: Path, name: str | None = None) -> tuple[Path, int | None]:
    """Where a downloaded file goes (through a symlink) and the mode of what is there.

    With ``name``: ``target`` is the destination given, and an existing directory there
    means ``target/name`` (scp's rule).

    Raises ``Failed`` for a directory, a special file or a file we may not write (scp's
    rule: it is left unchanged).
    """
    if name is not None and target.is_dir():
        target = target / name
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    if target.is_dir():
        raise sf.Failed(1, f"dispatch: copy_from: {str(target)!r} is a directory")
    if target.exists():
        if not target.is_file():
            raise sf.Failed(1, f"dispatch: copy_from: {str(target)!r} is not a regular file")
        mode = stat.S_IMODE(target.stat().st_mode)
        if not mode & 0o222:  # read-only for everyone: refused even where root could write
            raise sf.Failed(1, f"dispatch: copy_from: cannot write {str(target)!r}: "
                            f"read-only (mode {mode:04o}; left unchanged)")
        if not os.access(target, os.W_OK):
            raise sf.Failed(1, f"dispatch: copy_from: cannot write {str(target)!r}: "
                            "Permission denied (left unchanged)")
        return target, mode
    return target, None


def _local_tmp(final: Path) -> Path:
    return final.parent / f".{final.name}.dispatch-{secrets.token_hex(6)}.tmp"


async def _fetch_into(
    path: Path, mode: int, times: tuple[float, float] | None,
    fetch: Callable[[Callable[[int, bytes], None]], Awaitable[None]],
) -> None:
    """Create ``path`` (exclusively, 0600 while written), fill it, then set mode/times."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        def write(off: int, data: bytes) -> None:
            os.pwrite(fd, data, off)

        await fetch(write)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    if times is not None:
        os.utime(path, times)


async def write_local_file(
    final: Path, mode: int, times: tuple[float, float] | None,
    fetch: Callable[[Callable[[int, bytes], None]], Awaitable[None]],
) -> None:
    """Download into a temp file beside ``final``, then rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _local_tmp(final)
    try:
        await _fetch_into(tmp, mode, times, fetch)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


async def _recv(sftp: asyncssh.SFTPClient, jobs: Sequence[tuple[str, Path, int, int,
                tuple[float, float] | None]], tracker: Tracker, made: list[Path]) -> None:
    """Download (remote path, new local path, size, mode, times) jobs, several at once."""
    gate = asyncio.Semaphore(sf.PARALLEL_FILES)

    async def one(remote: str, local: Path, size: int, mode: int,
                  times: tuple[float, float] | None) -> None:
        async with gate:
            fh = await sf.open_read(sftp, remote)
            made.append(local)

            async def fetch(write: Callable[[int, bytes], None]) -> None:
                await sf.recv_file(sftp, remote, fh, size, write, tracker.add)

            try:
                await _fetch_into(local, mode, times, fetch)
            except BaseException:
                await asyncio.shield(sf.close_quietly(fh))
                raise

    async with asyncio.TaskGroup() as tg:
        for job in jobs:
            tg.create_task(one(*job))


async def get_tree(
    sftp: asyncssh.SFTPClient, src: str, top: asyncssh.SFTPAttrs, dst: Path, name: str,
    progress: Callable[[int, int], None] | None, preserve: bool,
    side: Sequence[Awaitable[Any]] = (),
) -> None:
    """Copy remote directory ``src`` to local ``dst`` (inside it if it is a directory)."""
    listing = await remote_listing(sftp, src, top, side)
    tracker = Tracker(listing.size, progress)
    target, kind = _local_kind(dst, name)
    if kind == "dir":
        await _merge_down(sftp, listing, target, tracker, preserve)
    elif kind is not None:
        raise sf.Failed(1, f"dispatch: copy_from: {str(target)!r} exists and is not a directory")
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _local_tmp(target)
        try:
            for rel, *_ in listing.dirs:
                tmp.joinpath(*rel).mkdir(mode=0o700)
            await _recv(sftp, [(r, tmp.joinpath(*rel), size, mode,
                                (at, mt) if preserve else None)
                               for rel, r, size, mode, at, mt in listing.files], tracker, [])
            for rel, t in listing.links:
                os.symlink(t, tmp.joinpath(*rel))
            for rel, mode, at, mt in reversed(listing.dirs):
                os.chmod(tmp.joinpath(*rel), mode)
                if preserve:
                    os.utime(tmp.joinpath(*rel), (at, mt))
            os.rename(tmp, target)
        except BaseException:
            _rmtree(tmp)
            raise


def _local_kind(dst: Path, name: str) -> tuple[Path, str | None]:
    """Where a downloaded tree goes (``dst/name`` if ``dst`` is a directory) and what is there."""
    target = dst / name if dst.is_dir() else dst
    if target.is_dir():
        return target, "dir"
    return target, "other" if os.path.lexists(target) else None


def _rmtree(path: Path) -> None:
    with contextlib.suppress(OSError):
        for dirpath, _dirs, _files in os.walk(path):
            os.chmod(dirpath, 0o700)  # a 0555 directory inside must not stop the cleanup
    shutil.rmtree(path, ignore_errors=True)


_DownFile = tuple[Rel, str, Path, int, int, tuple[float, float] | None]


def _plan_down(listing: Listing, target: Path, preserve: bool
               ) -> tuple[list[tuple[Rel, int, int, int]], list[_DownFile]]:
    """New local directories and files (final path, mode) of a merge; conflicts raise."""
    conflicts: list[str] = []
    new_dirs: list[tuple[Rel, int, int, int]] = []
    for rel, mode, at, mt in listing.dirs[1:]:
        p = target.joinpath(*rel)
        if p.is_symlink():
            conflicts.append(f"{p} is a symlink here, a directory on the host")
        elif os.path.lexists(p) and not p.is_dir():
            conflicts.append(f"{p} exists and is not a directory")
        elif not p.is_dir():
            new_dirs.append((rel, mode, at, mt))
    files: list[_DownFile] = []
    for rel, remote, size, mode, at, mt in listing.files:
        try:
            final, existing = local_file_target(target.joinpath(*rel))
        except sf.Failed as exc:
            conflicts.append(str(exc).removeprefix("dispatch: copy_from: "))
            continue
        keep = mode if existing is None or preserve else existing
        files.append((rel, remote, final, size, keep, (at, mt) if preserve else None))
    for rel, _t in listing.links:
        p = target.joinpath(*rel)
        if p.is_dir() and not p.is_symlink():
            conflicts.append(f"{p} is a directory here, a symlink on the host")
    if conflicts:
        raise sf.Failed(1, f"dispatch: copy_from: nothing copied into {str(target)!r}: "
                        f"{'; '.join(conflicts[:SHOW])}")
    return new_dirs, files


async def _merge_down(sftp: asyncssh.SFTPClient, listing: Listing, target: Path,
                      tracker: Tracker, preserve: bool) -> None:
    new_dirs, files = _plan_down(listing, target, preserve)
    made_dirs: list[Path] = []
    temps: list[Path] = []
    tmp_of = {f[2]: _local_tmp(f[2]) for f in files}
    try:
        for rel, *_ in new_dirs:
            target.joinpath(*rel).mkdir(mode=0o700)
            made_dirs.append(target.joinpath(*rel))
        await _recv(sftp, [(r, tmp_of[final], size, mode, times)
                           for _, r, final, size, mode, times in files], tracker, temps)
        for rel, t in listing.links:
            lt = _local_tmp(target.joinpath(*rel))
            os.symlink(t, lt)
            temps.append(lt)
            tmp_of[target.joinpath(*rel)] = lt
    except BaseException:
        for p in temps:
            with contextlib.suppress(OSError):
                p.unlink()
        for d in reversed(made_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    moves = [(f[0], f[2]) for f in files] + [(rel, target.joinpath(*rel)) for rel, _ in
                                             listing.links]
    landed: list[Rel] = []
    failed: list[tuple[Rel, OSError]] = []
    for rel, final in moves:
        try:
            os.replace(tmp_of[final], final)
            landed.append(rel)
        except OSError as exc:
            failed.append((rel, exc))
            with contextlib.suppress(OSError):
                tmp_of[final].unlink()
    for rel, mode, at, mt in reversed(new_dirs):
        os.chmod(target.joinpath(*rel), mode)
        if preserve:
            os.utime(target.joinpath(*rel), (at, mt))
    if failed:
        raise sf.Failed(1, f"dispatch: copy_from: {len(failed)} of {len(moves)} files not "
                        f"replaced in {str(target)!r} ({failed[0][1].strerror}): "
                        f"{names_of([r for r, _ in failed])}; landed: {names_of(landed) or 'none'}")
