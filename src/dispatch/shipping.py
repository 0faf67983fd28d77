"""Ship code to a host: git snapshots (clean or dirty) or chosen files, extracted atomically.

The tarball is built locally in memory and streamed into ``tar xzf -`` on the host over
the pooled SSH connection (no temporary file anywhere). The host extracts into a private
temporary sibling of ``remote_path`` (``mktemp -d``, mode 0700) and then renames it over
the target (when ``remote_path`` is a symlink to a directory, the directory it points to
is replaced and the link kept), so a failed or interrupted ship never leaves a
half-written tree: either the old tree or the complete new one is at ``remote_path``.
The shipped directory keeps the temp directory's mode 0700 (private to the user).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import posixpath
import shlex
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

from .errors import ShipError
from .results import RunResult

__all__ = ["snapshot", "snapshot_dirty", "pack_files", "ship", "ship_dirty", "ship_files"]

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


# --- remote: atomic extraction ---------------------------------------------------------


def _remote_path_expr(remote_path: str) -> str:
    """Shell word for ``remote_path``: quoted, with a leading ``~/`` meaning $HOME."""
    if not isinstance(remote_path, str) or not remote_path.strip():
        raise ShipError(f"remote_path must be a non-empty path, got {remote_path!r}")
    if "\0" in remote_path or "\n" in remote_path:
        raise ShipError(f"remote_path contains a NUL or newline: {remote_path!r}")
    path = remote_path.rstrip("/") if remote_path != "/" else "/"
    if path in ("", "/", "~", ".", "..") or path.endswith(("/.", "/..")):
        raise ShipError(f"refusing to ship over {remote_path!r}: not a project directory")
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    if path.startswith("~"):
        raise ShipError(f"remote_path: only ~/ (own home) is expanded, got {remote_path!r}")
    return shlex.quote(path)


def extract_script(remote_path: str) -> str:
    """The POSIX sh script that extracts a gzip tarball from stdin atomically."""
    target = _remote_path_expr(remote_path)
    return f"""set -eu
target={target}
if [ -L "$target" ] && [ -d "$target" ]; then
    # A symlink to a directory (~/code -> /scratch/me/code): replace the directory it
    # points to and keep the link, so the code stays where the user put it.
    target=$(cd -P -- "$target" && pwd -P)
fi
parent=$(dirname -- "$target")
mkdir -p -- "$parent"
tmp=$(mktemp -d -- "$target.tmp.XXXXXX")
old=
cleanup() {{
    rm -rf -- "$tmp"
    [ -n "$old" ] || return 0
    # Interrupted between the two renames: put the old tree back before removing $old.
    if [ ! -e "$target" ] && [ ! -L "$target" ]; then
        mv -- "$old/$(basename -- "$target")" "$target" || return 0
    fi
    rm -rf -- "$old"
}}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
tar -xzf - -C "$tmp"
if [ -e "$target" ] || [ -L "$target" ]; then
    old=$(mktemp -d -- "$target.old.XXXXXX")
    mv -- "$target" "$old/"
fi
mv -- "$tmp" "$target"
"""


async def _ship_bytes(host: str, remote_path: str, data: bytes,
                      timeout: float | None) -> RunResult:
    from .ssh.commands import run

    script = extract_script(remote_path)
    log.debug("shipping %d bytes to %s:%s", len(data), host, remote_path)
    # Never retried: extraction may have started (it is atomic, but the caller decides).
    return await run(["sh", "-c", script], host, timeout=timeout, login_shell=False, input=data)


async def ship(host: str, remote_path: str, repo_path: str | Path | None = None,
               ref: str = "HEAD", timeout: float | None = None,
               ) -> RunResult:
    """Ship a snapshot of the repo to a remote host.

    Creates a tarball of the files git tracks at `ref` (see `snapshot`) and extracts it
    on the remote. The destination and its parents are created; an existing tree there is
    replaced atomically (the new tree is extracted beside it, then renamed into place).

    Args:
        host: SSH host (an alias from the SSH config).
        remote_path: Destination directory on the remote (created). A leading `~/` means
            the remote home directory.
        repo_path: Any directory inside the local git repository (default: the current
            directory).
        ref: Git ref to archive (default: `HEAD`).
        timeout: Seconds allowed for the upload and extraction (None: no limit).

    Returns:
        The `RunResult` of the extraction; `ok` is False (with `stderr` saying why) when the
        upload or extraction failed on the remote side.

    Raises:
        ShipError: A local problem: not a git repository, a bad `ref`, or an invalid
            `remote_path`.
    """
    data = await asyncio.to_thread(snapshot, repo_path, ref)
    return await _ship_bytes(host, remote_path, data, timeout)


async def ship_dirty(host: str, remote_path: str, repo_path: str | Path | None = None,
                     timeout: float | None = None,
                     ) -> RunResult:
    """Ship repo including uncommitted changes.

    Uses `git stash create` to capture tracked files' uncommitted changes (without touching
    the stash list or the index) and also ships untracked files that are not ignored
    (`git ls-files --others --exclude-standard`); ignored files are never shipped. Useful
    for development, when you want to run code you have not committed. Extraction is atomic,
    as for `ship`.

    Args:
        host: SSH host (an alias from the SSH config).
        remote_path: Destination directory on the remote (created; a leading `~/` means the
            remote home directory).
        repo_path: Any directory inside the local git repository (default: the current
            directory).
        timeout: Seconds allowed for the upload and extraction (None: no limit).

    Returns:
        The `RunResult` of the extraction; `ok` is False (with `stderr` saying why) when the
        upload or extraction failed on the remote side.

    Raises:
        ShipError: A local problem: not a git repository or an invalid `remote_path`.
    """
    data = await asyncio.to_thread(snapshot_dirty, repo_path)
    return await _ship_bytes(host, remote_path, data, timeout)


async def ship_files(host: str, remote_path: str, files: list[str | Path],
                     base_path: str | Path | None = None,
                     timeout: float | None = None,
                     ) -> RunResult:
    """Ship specific files to a remote host.

    Directories are shipped recursively. The tarball is built in memory; extraction is
    atomic, as for `ship`.

    Args:
        host: SSH host (an alias from the SSH config).
        remote_path: Destination directory on the remote (created; a leading `~/` means the
            remote home directory).
        files: Paths to include, relative to `base_path` or absolute (inside `base_path`).
        base_path: Base directory for relative paths (default: the current directory).
        timeout: Seconds allowed for the upload and extraction (None: no limit).

    Returns:
        The `RunResult` of the extraction; `ok` is False (with `stderr` saying why) when the
        upload or extraction failed on the remote side.

    Raises:
        ShipError: `files` is empty, a file is missing or outside `base_path`, or
            `remote_path` is invalid.
    """
    data = await asyncio.to_thread(pack_files, files, base_path)
    return await _ship_bytes(host, remote_path, data, timeout)
