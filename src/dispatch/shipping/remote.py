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
import logging
import shlex
from pathlib import Path

from ..errors import ShipError
from ..results import RunResult
from ..ssh.commands import run
from .tarball import pack_files, snapshot, snapshot_dirty

__all__ = ["ship", "ship_dirty", "ship_files", "extract_script"]

log = logging.getLogger(__name__)


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
