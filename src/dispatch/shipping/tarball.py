"""Build code tarballs locally, in memory: git snapshots (clean or dirty) or chosen files.

Pure of the network: these functions read the local repository and return gzip bytes
that `dispatch.shipping.remote` (or ``SlurmJob.pack``) sends to a host.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import ShipError

__all__ = ["snapshot", "snapshot_dirty", "pack_files"]

log = logging.getLogger(__name__)


# --- local: building tarballs ----------------------------------------------------------


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=300,
                              check=False)
    except FileNotFoundError as exc:
        raise ShipError("git is not installed (needed to snapshot a repository)") from exc
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise ShipError(f"git {' '.join(args[:2])} failed in {repo}: {err}")
    return proc


def _toplevel(repo_path: str | Path | None) -> Path:
    repo = Path(repo_path if repo_path is not None else os.getcwd()).expanduser()
    if not repo.is_dir():
        raise ShipError(f"not a directory: {repo}")
    proc = _git(repo, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise ShipError(f"not a git repository: {repo}")
    return Path(proc.stdout.decode().strip())


def _check_ref(top: Path, ref: str) -> str:
    """The object to archive: the commit when ``ref`` names one (its entries then carry the
    commit's time, so the same commit always gives the same bytes and the payload cache
    hits), else the tree (git stamps a bare tree's entries with the current time)."""
    if not isinstance(ref, str) or not ref or ref.startswith("-") or "\0" in ref:
        raise ShipError(f"invalid git ref: {ref!r}")
    proc = _git(top, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}",
                check=False)
    if proc.returncode == 0:
        return proc.stdout.decode().strip()
    proc = _git(top, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{tree}}",
                check=False)
    if proc.returncode != 0:
        if ref == "HEAD":
            # The usual cause: `git init` without a first commit.
            raise ShipError(f"repository {top} has no commits yet (HEAD names no commit); "
                            f"commit first, or ship chosen files with ship_files")
        raise ShipError(f"git ref {ref!r} does not name a commit or tree in {top}")
    return proc.stdout.decode().strip()


def _warn_submodules(top: Path, tree: str) -> None:
    # git archive stores a submodule as an empty directory: say so instead of silently
    # shipping a tree with holes.
    out = _git(top, "ls-tree", "-r", "-z", "--end-of-options", tree, check=False).stdout
    subs = [e.split(b"\t", 1)[1].decode(errors="replace") for e in out.split(b"\0")
            if e.startswith(b"160000 ")]
    if subs:
        log.warning("submodules are not shipped (only empty directories): %s",
                    ", ".join(subs))


def snapshot(repo_path: str | Path | None = None, ref: str = "HEAD") -> bytes:
    """Create a tarball snapshot of the repo using git archive.

    Only includes tracked files, respects .gitignore, excludes .git/. The whole repository
    is archived even when `repo_path` is a subdirectory of it. Symlinks are stored as
    symlinks; empty directories are not tracked by git, so they are not shipped; a
    submodule becomes an empty directory (logged as a warning): ship it separately.

    Args:
        repo_path: Any directory inside the git repository (default: the current directory).
        ref: Git ref to archive: a branch, tag or commit (default: `HEAD`).

    Returns:
        The tarball as gzip-compressed bytes.

    Raises:
        ShipError: `repo_path` is not in a git repository, the repository has no commit
            yet, `ref` names no commit or tree, or git is not installed.
    """
    top = _toplevel(repo_path)
    tree = _check_ref(top, ref)
    _warn_submodules(top, tree)
    return _git(top, "archive", "--format=tar.gz", tree).stdout


def _untracked(top: Path) -> list[str]:
    out = _git(top, "ls-files", "-z", "--others", "--exclude-standard").stdout
    # Entries ending in "/" are nested repositories; they are not shipped.
    return [p for p in out.decode("utf-8", "surrogateescape").split("\0")
            if p and not p.endswith("/")]


def snapshot_dirty(repo_path: str | Path | None = None) -> bytes:
    """Create a tarball snapshot of the working tree, including uncommitted changes.

    Tracked files with their uncommitted changes (`git stash create`; deleted files stay
    deleted) plus untracked files that are not ignored (`git ls-files --others
    --exclude-standard`). Ignored files are not included. Nothing in the repository
    (index, refs, stash list) is changed.

    Args:
        repo_path: Any directory inside the git repository (default: the current directory).

    Returns:
        The tarball as gzip-compressed bytes.

    Raises:
        ShipError: `repo_path` is not in a git repository (or it has no commit yet), or git
            is not installed.
    """
    top = _toplevel(repo_path)
    _check_ref(top, "HEAD")
    # The stash commit is never stored in a ref; a fixed identity keeps it working where
    # no user.name/user.email is configured.
    stash = _git(top, "-c", "user.name=dispatch", "-c", "user.email=dispatch@localhost",
                 "stash", "create").stdout.decode().strip()
    tree = _check_ref(top, stash or "HEAD")
    _warn_submodules(top, tree)
    plain = _git(top, "archive", "--format=tar", tree).stdout
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as src, \
            tarfile.open(fileobj=buf, mode="w:gz") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        for rel in _untracked(top):
            try:
                _add(dst, top / rel, rel)
            except FileNotFoundError:  # deleted between `git ls-files` and now: not shipped
                log.debug("untracked %s vanished while packing; skipped", rel)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    info = tar.gettarinfo(str(path), arcname=arcname)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if info.isfile():
        with path.open("rb") as fh:
            tar.addfile(info, fh)
    elif info.isdir():
        tar.addfile(info)
        for child in sorted(path.iterdir()):
            _add(tar, child, f"{arcname}/{child.name}")
    elif info.issym():
        tar.addfile(info)
    else:
        log.warning("not shipping %s: not a file, directory or symlink", path)


def pack_files(files: Sequence[str | Path], base_path: str | Path | None = None) -> bytes:
    """Create a gzip tarball of specific files.

    Directories are included recursively (`"."` is everything in `base_path`); a file
    named twice is packed once; symlinks are stored as symlinks. Files are stored under
    their path relative to `base_path`.

    Args:
        files: Paths to include, relative to `base_path` or absolute (inside `base_path`).
        base_path: Base directory for relative paths (default: the current directory).

    Returns:
        The tarball as gzip-compressed bytes.

    Raises:
        ShipError: `files` is empty or a single path, a file is missing, or a path lies
            outside `base_path`.
    """
    if isinstance(files, str | Path):
        raise ShipError(f"files must be a list of paths, got a single path: {files!r}")
    if not files:
        raise ShipError("no files to ship")
    base = Path(base_path if base_path is not None else os.getcwd()).expanduser().absolute()
    if not base.is_dir():
        raise ShipError(f"base path is not a directory: {base}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        seen: set[str] = set()
        for f in files:
            path = Path(f).expanduser()
            full = path if path.is_absolute() else base / path
            rel = posixpath.normpath(os.path.relpath(os.path.normpath(full), base))
            rel = rel.replace(os.sep, "/")
            if rel == ".." or rel.startswith("../"):
                raise ShipError(f"file is outside base path {base}: {f}")
            if not full.exists() and not full.is_symlink():
                raise ShipError(f"file to ship does not exist: {full}")
            # The base itself ("."): everything in it.
            entries = ([(base / c.name, c.name) for c in sorted(base.iterdir())]
                       if rel == "." else [(Path(os.path.normpath(full)), rel)])
            for src, arc in entries:
                if arc not in seen:
                    seen.add(arc)
                    _add(tar, src, arc)
    return buf.getvalue()
