"""Keep a remote work dir up to date with local edits while a session lives (``sync_enabled``).

A background asyncio task polls the modification time and size of the repo's *tracked*
files (``git ls-files``) every ``interval`` seconds and uploads each changed file to the
same relative path under the remote directory, atomically, over SFTP
(`dispatch.ssh.transfer.write_file`). No extra dependency, no inotify.

What is synced: tracked files (including files ``git add``-ed after the session started)
whose content changed locally after the sync started. What is **not** synced:

- deletions and renames (the old remote file stays; the new name is uploaded);
- untracked and git-ignored files (``git add`` a new file to have it synced);
- symbolic links, and files over ``max_bytes`` (logged and skipped);
- remote edits (never pulled; a later local edit overwrites them);
- local differences that existed before the sync started (ship them with ``dirty=True``).

Stop it with `dispatch.repl.end_repl` (which stops the session's sync) or
`FileSync.stop`; it also stops when its event loop closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidValueError, ShipError
from ..ssh import write_file

__all__ = ["FileSync", "SyncStats", "tracked_files"]

log = logging.getLogger(__name__)

#: Files larger than this are not synced (a notebook session is no bulk transfer).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

_Stamp = tuple[int, int]  # (mtime_ns, size)


@dataclass(frozen=True)
class SyncStats:
    """Counters of one sync: polls done, files uploaded, uploads that failed, last error."""

    polls: int
    uploaded: int
    failed: int
    last_error: str | None


async def tracked_files(repo: Path) -> list[str]:
    """List the files git tracks in `repo`.

    Args:
        repo: A directory of a git work tree.

    Returns:
        Paths relative to `repo`, `/`-separated.

    Raises:
        ShipError: git ls-files failed (for example, not a git repository).
    """
    proc = await asyncio.create_subprocess_exec(
        "git", "-C", str(repo), "ls-files", "-z", "--cached",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise ShipError(
            f"git ls-files in {str(repo)!r} failed: {err.decode(errors='replace').strip()}"
        )
    return [p for p in out.decode("utf-8", errors="surrogateescape").split("\0") if p]


async def _toplevel(path: Path) -> Path:
    """The top of the git work tree containing ``path`` (what ship archives)."""
    proc = await asyncio.create_subprocess_exec(
        "git", "-C", str(path), "rev-parse", "--show-toplevel",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise ShipError(f"not a git repository: {str(path)!r}: "
                        f"{err.decode(errors='replace').strip()}")
    return Path(out.decode().strip())


def _stamp(path: Path) -> _Stamp | None:
    """(mtime_ns, size) of a regular file; None for missing files, links and others."""
    try:
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_mtime_ns, st.st_size)


def _remote_mode(path: Path) -> int:
    """The local permission bits, without group/other write (0644 or 0755 usually)."""
    try:
        return stat.S_IMODE(path.stat().st_mode) & 0o755 | 0o600
    except OSError:
        return 0o644


class FileSync:
    """Polls a local git repo's tracked files and uploads changed ones to `host:remote_dir`.

    `await sync.start()` records the current state (nothing is uploaded for it) and starts
    the background task; `await sync.stop()` ends it. `sync_once` runs one round.

    Args:
        host: SSH host to upload to.
        remote_dir: Remote directory the repository was shipped to.
        repo_path: Any directory inside the local repository (default: the current
            directory).
        interval: Seconds between polls.
        timeout: Seconds allowed for each upload (None: no limit).
        max_bytes: Files larger than this are not synced.

    Raises:
        InvalidValueError: `interval` is not positive or `remote_dir` is not a path.
    """

    def __init__(
        self,
        host: str,
        remote_dir: str,
        repo_path: str | Path | None = None,
        *,
        interval: float = 1.0,
        timeout: float | None = 60.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if not isinstance(interval, int | float) or interval <= 0:
            raise InvalidValueError(f"sync interval must be > 0 seconds, got {interval!r}")
        if not remote_dir or "\0" in remote_dir or "\n" in remote_dir:
            raise InvalidValueError(f"sync remote_dir must be a path: {remote_dir!r}")
        self.host = host
        self.remote_dir = remote_dir.rstrip("/") or "/"
        self.repo = Path(repo_path) if repo_path is not None else Path.cwd()
        self.interval = float(interval)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._seen: dict[str, _Stamp | None] = {}
        self._task: asyncio.Task[None] | None = None
        self._polls = 0
        self._uploaded = 0
        self._failed = 0
        self._last_error: str | None = None

    @property
    def running(self) -> bool:
        """True while the background task runs."""
        return self._task is not None and not self._task.done()

    @property
    def stats(self) -> SyncStats:
        """Counters so far."""
        return SyncStats(self._polls, self._uploaded, self._failed, self._last_error)

    async def snapshot(self) -> None:
        """Record the current state of every tracked file as already synced.

        Raises:
            ShipError: The repository cannot be listed.
        """
        self.repo = await _toplevel(self.repo)
        files = await tracked_files(self.repo)
        self._seen = {rel: _stamp(self.repo / rel) for rel in files}

    async def start(self) -> None:
        """Record the current state (unless `snapshot` ran) and start polling.

        Raises:
            ShipError: The repository cannot be listed.
        """
        if self.running:
            return
        if not self._seen:
            await self.snapshot()
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"dispatch-sync:{self.host}:{self.remote_dir}"
        )
        log.info("syncing tracked files of %s to %s:%s every %.1fs", self.repo, self.host,
                 self.remote_dir, self.interval)

    async def stop(self) -> None:
        """Stop polling (an upload in flight is cancelled; the remote file stays whole)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep syncing: the next round may work
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.warning("sync to %s:%s failed: %s", self.host, self.remote_dir,
                            self._last_error)

    async def sync_once(self) -> list[str]:
        """Upload every tracked file changed since the last round.

        Returns:
            The paths (relative to the repository) uploaded in this round.

        Raises:
            ShipError: The repository cannot be listed.
        """
        self._polls += 1
        files = await tracked_files(self.repo)
        changed: list[tuple[str, _Stamp]] = []
        for rel in files:
            if not _is_relative_safe(rel):
                continue
            now = _stamp(self.repo / rel)
            if now is not None and now != self._seen.get(rel):
                changed.append((rel, now))
        uploaded: list[str] = []
        for rel, now in changed:
            if await self._upload(rel, now):
                uploaded.append(rel)
        return uploaded

    async def _upload(self, rel: str, now: _Stamp) -> bool:
        local = self.repo / rel
        if now[1] > self.max_bytes:
            log.warning("not syncing %s: %d bytes > %d", rel, now[1], self.max_bytes)
            self._seen[rel] = now
            return False
        try:
            data = await asyncio.to_thread(local.read_bytes)
        except OSError as exc:
            log.debug("not syncing %s: %s", rel, exc)
            return False
        # The file may change while read; record the stamp from before reading, so a
        # write during the read is seen (and uploaded) next round.
        remote = posixpath.join(self.remote_dir, rel)
        result = await write_file(
            self.host, remote, data, mode=_remote_mode(local), timeout=self.timeout
        )
        if not result.ok:
            self._failed += 1
            self._last_error = result.stderr.strip() or f"write_file rc={result.returncode}"
            log.warning("sync of %s to %s:%s failed: %s", rel, self.host, remote,
                        self._last_error)
            return False
        self._seen[rel] = now
        self._uploaded += 1
        log.debug("synced %s -> %s:%s", rel, self.host, remote)
        return True


def _is_relative_safe(rel: str) -> bool:
    """True when ``rel`` stays inside the remote dir (git never tracks ``..`` paths)."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and ".." not in parts
