"""Code payloads for SLURM jobs: a local git snapshot, uploaded once under its sha256.

``submit_packed`` ships the repository as a tar.gz. With a shared directory it goes to
``share_dir/.dispatch-<user>/payloads/<sha256>.tar.gz``; a cached copy is reused only if
it is ours, a regular file (not a symlink), mode 0600 and has that sha256. The check
(`payload_ok_test`) runs remotely in the same command that submits the job (see
`.batch`), so resubmitting the same code costs no extra round trip and uploads nothing;
only a missing or bad copy is uploaded (`store_payload`) and the submission repeated."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import posixpath
import shlex

from .. import shipping as ship
from ..results import RunResult
from ..ssh import run, write_file
from .userdir import ensure_private_dirs, private_base

__all__ = [
    "PAYLOADS_SUBDIR",
    "snapshot_repo",
    "upload_payload",
    "payload_location",
    "payload_ok_test",
    "store_payload",
]

log = logging.getLogger(__name__)

#: Content-addressed payload tarballs go under this subdirectory of the per-user directory.
PAYLOADS_SUBDIR = "payloads"

_CACHED = "@@dispatch-payload-cached@@"


async def snapshot_repo(repo_path: str | None, dirty: bool) -> bytes:
    """The repo as tar.gz (``snapshot`` / ``snapshot_dirty``), off-loop."""
    if dirty:
        return await asyncio.to_thread(ship.snapshot_dirty, repo_path)
    return await asyncio.to_thread(ship.snapshot, repo_path)


def payload_ok_test(path: str, digest: str) -> str:
    """Shell condition: ``path`` is our regular file (no symlink), mode 0600, sha256 ``digest``."""
    q = shlex.quote(path)
    return (
        f"[ -f {q} ] && [ ! -L {q} ] && [ -O {q} ] "
        f'&& [ "$(stat -c %a -- {q})" = 600 ] '
        f'&& [ "$(sha256sum < {q} | cut -d" " -f1)" = {digest} ]'
    )


async def payload_location(
    tarball: bytes, host: str, share_dir: str, timeout: float | None = None
) -> tuple[str, str, str]:
    """``(private base, remote path, sha256)`` of the payload (no remote call once the
    home and user of ``host`` are known to the pool)."""
    digest = hashlib.sha256(tarball).hexdigest()
    base = await private_base(host, share_dir, timeout)
    return base, f"{base}/{PAYLOADS_SUBDIR}/{digest}.tar.gz", digest


async def store_payload(
    tarball: bytes, host: str, path: str, timeout: float | None = None
) -> RunResult:
    """Upload the payload to ``path`` (atomic, 0600) inside the already-verified private
    payloads directory; a failed result names the host and path."""
    up = await write_file(host, path, tarball, mode=0o600, timeout=timeout)
    if not up.ok:
        stderr = f"uploading the payload to {host}:{path} failed: {up.stderr.strip()}\n"
        return RunResult(up.returncode, up.stdout, stderr, may_have_run=up.may_have_run)
    return up


async def upload_payload(
    tarball: bytes, host: str, share_dir: str, timeout: float | None = None
) -> tuple[str, RunResult]:
    """Upload a payload under its sha256 into ``share_dir/.dispatch-<user>/payloads``.

    The upload is skipped when a file of that name is already there, owned by us, mode
    0600 and with the right sha256 (checked remotely in the same command that checks the
    directories). Returns the absolute remote path and the result; the path is usable
    only when the result is ok (a failed result names the reason). (``submit_packed``
    folds this check into its submission command instead.)
    """
    base, path, digest = await payload_location(tarball, host, share_dir, timeout)
    directory = posixpath.dirname(path)
    check = (
        f"{ensure_private_dirs([base, directory])}; "
        f"if {payload_ok_test(path, digest)}; then echo {_CACHED}; fi"
    )
    checked = await run(check, host, timeout=timeout, retries=1)
    if not checked.ok:
        return path, checked
    if _CACHED in checked.stdout:
        log.debug("payload %s already on %s", digest[:12], host)
        return path, checked
    return path, await store_payload(tarball, host, path, timeout)
