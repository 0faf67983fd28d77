"""Directory trees for copy_to: listings, the link rule, new trees and merges.

(copy_from's side, mirrored, is download.py.)

A tree copied to a path where nothing is lands as a whole: it is built under a hidden
temporary name and renamed once. A tree copied onto an existing directory is merged:
both sides are listed first (``lstat``: a symlink is a link, never followed by the
merge), every conflict (a directory where a file goes, a file that is not writable, a
symlink where a directory goes) is reported before anything changes, then the new
content is written beside each final name and renamed into place in one pipelined
step. If a rename still fails, the error names the files that landed and those that
did not.

The link rule (scp -r sends every link as content; we keep the links a user expects):
a relative link whose target, read lexically, stays inside the copied tree is copied
as a link; any other link is copied as what it points to; a dangling link stays a link.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from . import sftp as sf

__all__ = ["Tracker", "Listing", "Rel", "put_tree", "inside_tree", "names_of", "MAX_DEPTH", "SHOW"]

log = logging.getLogger(__name__)

Rel = tuple[str, ...]
MAX_DEPTH = 64  # deeper than this through followed links: a loop
SHOW = 20  # names listed in a partial-failure message


class Tracker:
    """Turns per-block progress into one ``progress(done, total)`` stream."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self.total, self.progress, self.done = total, progress, 0

    def add(self, n: int) -> None:
        """Count ``n`` more bytes transferred."""
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


def inside_tree(rel: Rel, target: str) -> bool:
    """Whether a link at ``rel`` pointing to ``target`` stays inside the tree (lexically)."""
    if not target or target.startswith("/"):
        return False
    n = posixpath.normpath(posixpath.join(*rel[:-1], target) if rel[:-1] else target)
    return n != ".." and not n.startswith("../")


@dataclass
class Listing:
    """A tree: directories (root first, with their mode and times), files, kept links."""

    dirs: list[tuple[Rel, int, int, int]] = field(default_factory=list)  # rel, mode, at, mt
    files: list[tuple[Rel, str, int, int, int, int]] = field(default_factory=list)
    # rel, source path, size, mode, atime, mtime
    links: list[tuple[Rel, str]] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Bytes of file content."""
        return sum(f[2] for f in self.files)


def _attrs(mode: int, at: int, mt: int, preserve: bool) -> asyncssh.SFTPAttrs:
    if preserve:
        return asyncssh.SFTPAttrs(permissions=mode, atime=at, mtime=mt)
    return asyncssh.SFTPAttrs(permissions=mode)


def names_of(rels: Sequence[Rel]) -> str:
    shown = ", ".join("/".join(r) for r in rels[:SHOW])
    return shown + (f" and {len(rels) - SHOW} more" if len(rels) > SHOW else "")


def local_listing(root: Path) -> Listing:
    """The local tree under ``root`` (links outside it followed, loops refused)."""
    out = Listing()

    def walk(real: str, rel: Rel, seen: frozenset[tuple[int, int]]) -> None:
        st = os.stat(real)
        key = (st.st_dev, st.st_ino)
        if key in seen or len(rel) > MAX_DEPTH:
            raise sf.Failed(1, f"dispatch: copy_to: symlink loop at {os.path.join(root, *rel)}")
        out.dirs.append((rel, stat.S_IMODE(st.st_mode), int(st.st_atime), int(st.st_mtime)))
        for name in sorted(os.listdir(real)):
            full, crel = os.path.join(real, name), (*rel, name)
            lst = os.lstat(full)
            if stat.S_ISLNK(lst.st_mode):
                target = os.readlink(full)
                try:
                    lst = os.stat(full)
                except OSError:  # dangling: nothing to send but the link
                    out.links.append((crel, target))
                    continue
                if inside_tree(crel, target):
                    out.links.append((crel, target))
                    continue
            if stat.S_ISDIR(lst.st_mode):
                walk(full, crel, seen | {key})
            elif stat.S_ISREG(lst.st_mode):
                out.files.append((crel, full, lst.st_size, stat.S_IMODE(lst.st_mode),
                                  int(lst.st_atime), int(lst.st_mtime)))
            else:
                log.debug("copy_to: skipping %s (not a regular file)", full)

    walk(str(root), (), frozenset())
    return out


async def _readdirs(sftp: asyncssh.SFTPClient, paths: Sequence[str]) -> list[Any]:
    return await sf.batch(*(sftp.readdir(p) for p in paths))


# -- uploads ---------------------------------------------------------------------------


async def _send(
    sftp: asyncssh.SFTPClient, jobs: Sequence[tuple[str, str, int, asyncssh.SFTPAttrs]],
    tracker: Tracker, made: list[str],
) -> None:
    """Upload (local path, new remote path, size, final attrs) jobs, PARALLEL_FILES at once.

    Each created remote path is appended to ``made`` (for cleanup) as soon as it exists.
    """
    gate = asyncio.Semaphore(sf.PARALLEL_FILES)

    async def one(local: str, remote: str, size: int, attrs: asyncssh.SFTPAttrs) -> None:
        async with gate:
            fh = await sf.open_new(sftp, remote)
            made.append(remote)
            fd = os.open(local, os.O_RDONLY)
            try:
                await sf.send_file(sftp, fh, lambda o, n: os.pread(fd, n, o), size, attrs,
                                   tracker.add)
            except BaseException:
                await asyncio.shield(sf.close_quietly(fh))
                raise
            finally:
                os.close(fd)

    async with asyncio.TaskGroup() as tg:
        for job in jobs:
            tg.create_task(one(*job))


def _tree_name(src: Path) -> str:
    """The name a copied directory gets (``.`` is named after what it is)."""
    return src.name or os.path.basename(os.path.realpath(src))


async def put_tree(
    sftp: asyncssh.SFTPClient, src: Path, dst: str, into: bool, host: str,
    progress: Callable[[int, int], None] | None, preserve: bool,
) -> None:
    """Copy local directory ``src`` to ``dst`` (inside it if it is a directory)."""
    listing = local_listing(src)
    tracker = Tracker(listing.size, progress)
    name = _tree_name(src)
    inside = posixpath.join(dst, name)
    first = await sf.batch(*sf.probe(sftp, dst), *sf.probe(sftp, inside))
    at, within = sf.entry_of(dst, *first[0:2]), sf.entry_of(inside, *first[2:4])
    if at.is_dir:
        target, entry = inside, within
    elif into:
        if at.exists:
            raise sf.Failed(1, f"dispatch: copy_to: {dst!r} exists and is not a directory")
        await sf.makedirs(sftp, dst, host)
        target, entry = inside, sf.Entry(inside, False, False, None, 0)
    else:
        target, entry = dst.rstrip("/") or dst, at
    if entry.is_dir:
        await _merge_up(sftp, listing, target, host, tracker, preserve)
    elif entry.exists:
        raise sf.Failed(1, f"dispatch: copy_to: {target!r} exists and is not a directory")
    else:
        await _new_up(sftp, listing, target, host, tracker, preserve)


async def _new_up(sftp: asyncssh.SFTPClient, listing: Listing, target: str, host: str,
                  tracker: Tracker, preserve: bool) -> None:
    tmp = sf.tmp_name(target)
    dirs = [posixpath.join(tmp, *rel) for rel, *_ in listing.dirs]
    private = asyncssh.SFTPAttrs(permissions=0o700)  # writable while filling
    made = await sf.batch(*(sftp.mkdir(d, private) for d in dirs))
    if isinstance(made[0], asyncssh.SFTPNoSuchFile):
        await sf.makedirs(sftp, posixpath.dirname(target), host)
        made = await sf.batch(*(sftp.mkdir(d, private) for d in dirs))
    try:
        for res in made:
            if isinstance(res, asyncssh.SFTPPermissionDenied):
                raise sf.Failed(1, f"dispatch: cannot create {host}:{target}: Permission denied")
            if isinstance(res, Exception):
                raise res
        files = [(local, posixpath.join(tmp, *rel), size, _attrs(mode, at, mt, preserve))
                 for rel, local, size, mode, at, mt in listing.files]
        linked = await sf.batch(_send(sftp, files, tracker, []),
                                *(sftp.symlink(t, posixpath.join(tmp, *rel))
                                  for rel, t in listing.links))
        for res in linked:
            if isinstance(res, Exception):
                raise res
        final = await sf.batch(
            *(sftp.setstat(posixpath.join(tmp, *rel), _attrs(mode, at, mt, preserve))
              for rel, mode, at, mt in reversed(listing.dirs)),
            sf.rename(sftp, tmp, target))
        if isinstance(final[-1], Exception):
            raise final[-1]
    except BaseException as exc:
        err = sf.first_error(exc)
        clear = await asyncio.shield(sf.explain(sftp, err, host, target, tracker.total)) \
            if isinstance(err, asyncssh.SFTPError) else None
        await asyncio.shield(sf.rmtree_quietly(sftp, tmp))
        if clear is not None:
            raise clear from None
        raise


@dataclass
class _Plan:
    """What a merge will do; ``conflicts`` stop it before anything changes."""

    conflicts: list[str] = field(default_factory=list)
    new_dirs: list[tuple[Rel, int, int, int]] = field(default_factory=list)
    old_dirs: list[tuple[Rel, int, int, int]] = field(default_factory=list)
    files: list[tuple[Rel, str, str, int, int, int, int, bool]] = field(default_factory=list)
    # rel, source, final path, size, mode, atime, mtime, existed
    links: list[tuple[Rel, str, str]] = field(default_factory=list)  # rel, link target, final


async def _merge_up(sftp: asyncssh.SFTPClient, listing: Listing, target: str, host: str,
                    tracker: Tracker, preserve: bool) -> None:
    where = f"{host}:{target}"
    # List every directory the source has, all at once (only those matter); a listing
    # counts only where the remote path is a real directory (lstat), never a link to one.
    rels = [rel for rel, *_ in listing.dirs]
    found = await _readdirs(sftp, [posixpath.join(target, *r) for r in rels])
    if isinstance(found[0], Exception):
        raise found[0]
    remote: dict[Rel, asyncssh.SFTPAttrs] = {}
    real_dirs: set[Rel] = set()
    for rel, names in zip(rels, found, strict=True):
        bits = (remote[rel].permissions or 0) if rel in remote else 0
        if rel == () or (rel[:-1] in real_dirs and stat.S_ISDIR(bits)):
            real_dirs.add(rel)
            for n in names if not isinstance(names, Exception) else ():
                if str(n.filename) not in (".", ".."):
                    remote[(*rel, str(n.filename))] = n.attrs
    plan = _Plan()

    def path(rel: Rel) -> str:
        return posixpath.join(target, *rel)

    for rel, mode, at, mt in listing.dirs[1:]:
        perms = (remote[rel].permissions or 0) if rel in remote else None
        if perms is None:  # (under a conflicting directory: the conflict stops it all)
            plan.new_dirs.append((rel, mode, at, mt))
        elif stat.S_ISDIR(perms):
            plan.old_dirs.append((rel, mode, at, mt))
        elif stat.S_ISLNK(perms):
            plan.conflicts.append(f"{path(rel)} is a symlink on {host}, a directory here")
        else:
            plan.conflicts.append(f"{path(rel)} exists on {host} and is not a directory")
    through: list[tuple[Rel, str, int, int, int, int]] = []
    for rel, local, size, mode, at, mt in listing.files:
        perms = (remote[rel].permissions or 0) if rel in remote else None
        if perms is None:
            plan.files.append((rel, local, path(rel), size, mode, at, mt, False))
        elif stat.S_ISREG(perms):
            keep = mode if preserve else stat.S_IMODE(perms)
            plan.files.append((rel, local, path(rel), size, keep, at, mt, True))
            if not perms & 0o222:
                plan.conflicts.append(f"cannot write {path(rel)}: read-only (mode "
                                      f"{stat.S_IMODE(perms):04o})")
        elif stat.S_ISLNK(perms):
            through.append((rel, local, size, mode, at, mt))
        elif stat.S_ISDIR(perms):
            plan.conflicts.append(f"{path(rel)} is a directory")
        else:
            plan.conflicts.append(f"{path(rel)} is not a regular file")
    if through:  # remote links where files go: written through (stat + realpath at once)
        got = await sf.batch(*(sftp.stat(path(r[0])) for r in through),
                             *(sftp.realpath(path(r[0])) for r in through))
        for i, (rel, local, size, mode, at, mt) in enumerate(through):
            st, real = got[i], got[len(through) + i]
            if not isinstance(st, asyncssh.SFTPAttrs) or isinstance(real, Exception):
                plan.conflicts.append(f"{path(rel)} is a symlink to nothing on {host}")
            elif not stat.S_ISREG(st.permissions or 0):
                plan.conflicts.append(f"{path(rel)} is a symlink to a directory or special file")
            else:
                keep = mode if preserve else stat.S_IMODE(st.permissions or 0)
                plan.files.append((rel, local, str(real), size, keep, at, mt, True))
                if not (st.permissions or 0) & 0o222:
                    plan.conflicts.append(f"cannot write {real}: read-only (mode {keep:04o})")
    for rel, t in listing.links:
        perms = (remote[rel].permissions or 0) if rel in remote else None
        if perms is not None and stat.S_ISDIR(perms):
            plan.conflicts.append(f"{path(rel)} is a directory on {host}, a symlink here")
        else:
            plan.links.append((rel, t, path(rel)))
    if plan.conflicts:
        raise sf.Failed(1, f"dispatch: copy_to: nothing copied into {where}: "
                        f"{'; '.join(plan.conflicts[:SHOW])}")
    # New directories and the may-we-write probes of existing files, in one step.
    existing = [f for f in plan.files if f[7]]
    new_dirs = [path(rel) for rel, *_ in plan.new_dirs]
    got = await sf.batch(*(sftp.mkdir(d, asyncssh.SFTPAttrs(permissions=0o700))
                           for d in new_dirs),
                         *(sf.open_probe(sftp, f[2]) for f in existing))
    made = [d for d, r in zip(new_dirs, got, strict=False) if not isinstance(r, Exception)]
    probes = got[len(new_dirs):]
    handles = [p for p in probes if isinstance(p, asyncssh.SFTPClientFile)]
    for d, r in zip(new_dirs, got, strict=False):
        if isinstance(r, Exception):
            plan.conflicts.append(f"cannot create directory {d}: {getattr(r, 'reason', r)}")
    for f, p in zip(existing, probes, strict=True):
        if isinstance(p, asyncssh.SFTPPermissionDenied):
            plan.conflicts.append(f"cannot write {f[2]}: Permission denied")
    if plan.conflicts:
        await asyncio.shield(sf.batch(*(h.close() for h in handles),
                                      sf.remove_quietly(sftp, [], made)))
        raise sf.Failed(1, f"dispatch: copy_to: nothing copied into {where}: "
                        f"{'; '.join(plan.conflicts[:SHOW])}")
    await _apply_up(sftp, plan, host, where, tracker, preserve, handles)


async def _apply_up(sftp: asyncssh.SFTPClient, plan: _Plan, host: str, where: str,
                    tracker: Tracker, preserve: bool,
                    handles: list[asyncssh.SFTPClientFile]) -> None:
    root = where.split(":", 1)[1]
    new_dirs = [posixpath.join(root, *rel) for rel, *_ in plan.new_dirs]
    temps: list[str] = []
    tmp_of = {f[2]: sf.tmp_name(f[2]) for f in plan.files}
    link_tmp = {f[2]: sf.tmp_name(f[2]) for f in plan.links}
    try:
        # Files, links and the probes' closes all in flight together.
        sent, *rest = await sf.batch(
            _send(sftp, [(local, tmp_of[final], size, _attrs(mode, at, mt, preserve))
                         for _, local, final, size, mode, at, mt, _e in plan.files],
                  tracker, temps),
            *(sftp.symlink(t, link_tmp[final]) for _, t, final in plan.links),
            *(h.close() for h in handles))
        linked = rest[:len(plan.links)]
        temps += [link_tmp[f] for (_, _, f), r in zip(plan.links, linked, strict=True)
                  if not isinstance(r, Exception)]
        for r in [sent, *linked]:
            if isinstance(r, Exception):
                raise r
    except BaseException as exc:
        err = sf.first_error(exc)
        clear = await asyncio.shield(sf.explain(sftp, err, host, root, tracker.total)) \
            if isinstance(err, asyncssh.SFTPError) else None
        await asyncio.shield(sf.remove_quietly(sftp, temps, new_dirs))
        if clear is not None:
            raise sf.Failed(1, f"{clear} (nothing changed)") from None
        raise
    moves = [(f[0], tmp_of[f[2]], f[2]) for f in plan.files] + \
            [(lk[0], link_tmp[lk[2]], lk[2]) for lk in plan.links]
    dirs = list(reversed(plan.new_dirs)) + (plan.old_dirs if preserve else [])
    done = await sf.batch(*(sf.rename(sftp, t, f) for _, t, f in moves),
                          *(sftp.setstat(posixpath.join(root, *rel),
                                         _attrs(mode, at, mt, preserve))
                            for rel, mode, at, mt in dirs))
    failed = [(m, r) for m, r in zip(moves, done, strict=False) if isinstance(r, Exception)]
    if failed:
        await asyncio.shield(sf.remove_quietly(sftp, [t for (_, t, _), _ in failed]))
        landed = [rel for (rel, _, _), r in zip(moves, done, strict=False)
                  if not isinstance(r, Exception)]
        reason = getattr(failed[0][1], "reason", failed[0][1])
        raise sf.Failed(1, f"dispatch: copy_to: {len(failed)} of {len(moves)} files not "
                        f"replaced in {where} ({reason}): {names_of([m[0] for m, _ in failed])}; "
                        f"landed: {names_of(landed) or 'none'}")
