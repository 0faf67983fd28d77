"""Submitting SLURM jobs: scripts uploaded over SFTP, ``sbatch --parsable``, exactly once.

Each submission renders a bootstrap script (what every node runs) and an sbatch wrapper,
uploads both atomically with mode 0700 into ``share_dir/.dispatch/jobs/<name>-<token>/``
(or ``~/.dispatch/jobs/<name>-<token>/`` without a share dir), then runs ``sbatch
--parsable --comment=dispatch:<token>``. If sbatch rejects the job, the uploaded files are
removed in the same remote command.

Exactly once: when the connection breaks after sbatch was sent (``may_have_run``) or the
call timed out, the token is looked up in squeue (and sacct) to recover the job id. The
job is submitted again only if the token is provably absent (two lookups a few seconds
apart answered without it, and no process carrying the token -- a still-running sbatch --
is left on the host), and never more than once. sacct shows comments only with
``AccountingStoreFlags=job_comment``; squeue always does, for MinJobAge after the end.

Scripts stay in place after the job (it needs them while it runs); nothing collects old
job directories yet.
"""

# The documented API takes timeout= (seconds for the SSH calls), not asyncio.timeout.

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import shlex
from dataclasses import dataclass

from .. import shipping as ship
from ..errors import InvalidValueError, SubmitError
from ..results import RunResult
from ..ssh.commands import run
from ..ssh.transfer import write_file
from . import parse
from .job import SLURM_MAX_SCRIPT_BYTES, SlurmJob
from .models import SlurmResult

__all__ = ["submit", "submit_packed"]

log = logging.getLogger(__name__)

#: The sbatch executable (tests point it at a shim that cuts the connection).
SBATCH = "sbatch"
#: Scripts go under this directory of ``share_dir`` or of the remote home directory.
JOBS_SUBDIR = ".dispatch/jobs"
#: Content-addressed payload tarballs go under this directory of ``share_dir``.
PAYLOADS_SUBDIR = ".dispatch/payloads"
#: How long to keep asking squeue/sacct for a token after an unknown outcome.
RECOVER_SECONDS = 60.0
#: Pause before the second lookup that must also miss the token before resubmitting.
RECOVER_CONFIRM_SECONDS = 3.0

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")

_homes: dict[str, str] = {}


@dataclass(frozen=True)
class _Paths:
    """Where one submission's scripts live on the remote host (absolute paths)."""

    wrapper: str
    bootstrap: str
    directory: str | None  # the per-submission directory (removed on failure), if any

    def cleanup_command(self) -> str:
        if self.directory is not None:
            return f"rm -rf -- {shlex.quote(self.directory)}"
        return f"rm -f -- {shlex.quote(self.wrapper)} {shlex.quote(self.bootstrap)}"


def _check_dir(kind: str, path: str | None) -> str | None:
    if path is None:
        return None
    if not isinstance(path, str) or not path.strip() or "\n" in path or "\0" in path:
        raise InvalidValueError(f"invalid {kind} {path!r}")
    return path.rstrip("/") or "/"


async def remote_home(host: str, timeout: float | None = None) -> str:
    """The remote user's home directory (cached per host alias)."""
    home = _homes.get(host)
    if home is not None:
        return home
    result = await run('printf "%s" "$HOME"', host, timeout=timeout, login_shell=False, retries=1)
    home = result.stdout.strip()
    if not result.ok or not home.startswith("/"):
        raise SubmitError(
            f"cannot find the home directory on {host!r}: "
            f"{result.stderr.strip() or result.stdout.strip() or 'empty $HOME'}"
        )
    _homes[host] = home
    return home


async def _absolute(path: str, host: str, timeout: float | None) -> str:
    """Resolve ``~``/``~/x`` and relative paths against the remote home directory."""
    if path.startswith("/"):
        return path
    home = await remote_home(host, timeout)
    if path == "~":
        return home
    if path.startswith("~/"):
        return f"{home}/{path[2:]}"
    if path.startswith("~"):
        raise InvalidValueError(f"~user paths are not supported: {path!r}")
    return f"{home}/{path}"


async def _paths(
    job: SlurmJob, host: str, share_dir: str | None, script_path: str | None, token: str,
    timeout: float | None,
) -> _Paths:
    if script_path is not None:
        prefix = await _absolute(script_path, host, timeout)
        return _Paths(f"{prefix}.sbatch.sh", f"{prefix}.bootstrap.sh", None)
    base = await _absolute(share_dir, host, timeout) if share_dir else await remote_home(host)
    name = _UNSAFE.sub("_", job.name)[:40].strip("._") or "job"
    directory = f"{base}/{JOBS_SUBDIR}/{name}-{token}"
    return _Paths(f"{directory}/sbatch.sh", f"{directory}/bootstrap.sh", directory)


def _check_size(label: str, size: int) -> None:
    if size > SLURM_MAX_SCRIPT_BYTES:
        raise SubmitError(
            f"the {label} is {size} bytes, over slurmctld's limit of "
            f"{SLURM_MAX_SCRIPT_BYTES} bytes (probably an embedded payload): pass share_dir= "
            "so the payload is uploaded separately, or ship less code"
        )


def _render(job: SlurmJob, paths: _Paths, payload_path: str | None) -> tuple[bytes, bytes]:
    if payload_path is not None:
        bootstrap_text = job.to_bootstrap_script(payload_path=payload_path)
    else:
        bootstrap_text = job.to_bootstrap_script()
    wrapper_text = job.to_sbatch_script(paths.bootstrap)
    bootstrap, wrapper = bootstrap_text.encode(), wrapper_text.encode()
    _check_size("sbatch script", len(wrapper))
    _check_size("bootstrap script", len(bootstrap))
    return wrapper, bootstrap


def _sbatch_command(paths: _Paths, token: str) -> str:
    """sbatch with the token; on rejection remove the uploaded scripts, keep sbatch's status."""
    sbatch = (
        f"{shlex.quote(SBATCH)} --parsable --comment={shlex.quote('dispatch:' + token)} "
        f"{shlex.quote(paths.wrapper)}"
    )
    command = f"{sbatch} || {{ rc=$?; {paths.cleanup_command()}; exit $rc; }}"
    if paths.directory is not None:
        # write_file creates parents with the umask's mode; the job dir holds env values.
        command = f"chmod 700 -- {shlex.quote(paths.directory)}; {command}"
    return command


def _unknown(result: RunResult) -> bool:
    """True when sbatch may have run but we did not get its answer."""
    return result.may_have_run or result.returncode == -1


async def _cleanup(paths: _Paths, host: str, timeout: float | None) -> None:
    result = await run(paths.cleanup_command(), host, timeout=timeout, retries=2)
    if not result.ok:
        log.warning("could not remove job scripts on %s: %s", host, result.stderr.strip())


_INFLIGHT = "@@dispatch-sbatch-in-flight@@"


async def find_token(
    token: str, host: str, timeout: float | None = None
) -> tuple[list[int], bool]:
    """Job ids whose comment is ``dispatch:<token>``, and whether the lookup answered.

    squeue shows the comment of every job slurmctld still knows (finished ones for
    MinJobAge); sacct shows it only when ``AccountingStoreFlags=job_comment`` is set.
    While a process carrying the token in its argv (the earlier sbatch, still talking to
    slurmctld) runs on the host, an empty answer proves nothing: answered is False then.
    """
    tag = f"dispatch:{token}"
    me = '--user="$(id -un)"'  # (--me needs Slurm >= 20.11)
    squeue = shlex.join([*parse.SQUEUE_COMMENT_ARGS, "--states=all"])
    sacct = shlex.join([*parse.SACCT_COMMENT_ARGS, "--starttime=now-1days"])
    # "[x]yz" matches "xyz" but not this command line itself (which holds "[x]yz").
    pattern = shlex.quote(f"comment=dispatch:[{token[0]}]{token[1:]}")
    inflight = f"pgrep -u \"$(id -u)\" -f -- {pattern} >/dev/null && echo {_INFLIGHT}"
    cmd = f"{squeue} {me}; sq=$?; echo; {sacct} {me} 2>/dev/null; {inflight}; exit $sq"
    result = await run(cmd, host, timeout=timeout, retries=2)
    if not result.ok:
        return [], False
    # Both parsers skip the other command's lines (and each other's format is id|comment).
    pairs = parse.parse_squeue_comments(result.stdout) + parse.parse_sacct_comments(
        result.stdout
    )
    ids = sorted({job_id for job_id, comment in pairs if comment.strip() == tag})
    if not ids and _INFLIGHT in result.stdout:
        log.debug("sbatch with token %s still running on %s", token, host)
        return [], False
    return ids, True


async def _recover(token: str, host: str, timeout: float | None) -> tuple[int | None, bool]:
    """After an unknown outcome: (job id, True) if found; (None, True) if provably absent
    (two lookups some seconds apart both answered without it, and no sbatch with the token
    still running); (None, False) if that could not be established in RECOVER_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECOVER_SECONDS
    misses = 0
    delay = 0.5
    while True:
        ids, answered = await find_token(token, host, timeout)
        if ids:
            if len(ids) > 1:
                log.error("token %s matches several jobs on %s: %s", token, host, ids)
            return ids[0], True
        if answered:
            misses += 1
            if misses >= 2:
                return None, True
            await asyncio.sleep(RECOVER_CONFIRM_SECONDS)
            continue
        if loop.time() >= deadline:
            return None, False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def _sbatch_once(
    paths: _Paths, token: str, host: str, timeout: float | None
) -> tuple[int | None, RunResult, bool]:
    """Run sbatch; (job id, result, known) where known=False means the outcome is unknown."""
    result = await run(_sbatch_command(paths, token), host, timeout=timeout)
    if result.ok:
        job_id = parse.parse_sbatch_parsable(result.stdout)
        return job_id, result, job_id is not None
    return None, result, not _unknown(result)


async def _upload(
    paths: _Paths, wrapper: bytes, bootstrap: bytes, host: str, timeout: float | None
) -> RunResult:
    """Upload both scripts (atomic, 0700); the first failure's result, else the last ok."""
    result = RunResult(0, "", "")
    for path, data in ((paths.bootstrap, bootstrap), (paths.wrapper, wrapper)):
        result = await write_file(host, path, data, mode=0o700, timeout=timeout)
        if not result.ok:
            break
    return result


async def _submit(
    job: SlurmJob,
    host: str,
    share_dir: str | None,
    script_path: str | None,
    timeout: float | None,
    payload_path: str | None = None,
) -> SlurmResult:
    if not isinstance(job, SlurmJob):
        raise InvalidValueError(f"job must be a SlurmJob, got {type(job).__name__}")
    share_dir = _check_dir("share_dir", share_dir)
    script_path = _check_dir("script_path", script_path)
    token = secrets.token_hex(8)
    paths = await _paths(job, host, share_dir, script_path, token, timeout)
    wrapper, bootstrap = _render(job, paths, payload_path)

    up = await _upload(paths, wrapper, bootstrap, host, timeout)
    if not up.ok:
        await _cleanup(paths, host, timeout)
        return SlurmResult(None, up)

    job_id, result, known = await _sbatch_once(paths, token, host, timeout)
    if known:
        if job_id is None and result.returncode == 255 and not result.may_have_run:
            await _cleanup(paths, host, timeout)  # sbatch never ran: nothing removed the files
        return SlurmResult(job_id, result)

    log.warning("sbatch on %s: outcome unknown (%s); looking up token", host, result.stderr.strip())
    found, certain = await _recover(token, host, timeout)
    if found is not None:
        return SlurmResult(found, result)
    if not certain:
        return SlurmResult(None, result)
    log.warning("job with token %s is not on %s: submitting again (once)", token, host)
    # A first sbatch that ran and failed removed the scripts: upload them again.
    up = await _upload(paths, wrapper, bootstrap, host, timeout)
    if not up.ok:
        await _cleanup(paths, host, timeout)
        return SlurmResult(None, up)
    job_id, retry, known = await _sbatch_once(paths, token, host, timeout)
    if known:
        return SlurmResult(job_id, retry)
    found, _ = await _recover(token, host, timeout)
    return SlurmResult(found, retry)


async def submit(
    job: SlurmJob,
    host: str,
    share_dir: str | None = None,
    script_path: str | None = None,
    timeout: float | None = None,
) -> SlurmResult:
    """Submit a SLURM job: upload bootstrap + sbatch wrapper (SFTP, 0700), run sbatch.

    ``share_dir`` (visible to all nodes; needed for multi-node jobs when home is not
    shared) holds the scripts; without it they go to ``~/.dispatch/jobs/``.
    ``script_path`` is a remote path prefix: the scripts become ``<prefix>.sbatch.sh`` and
    ``<prefix>.bootstrap.sh``. A rejected job returns ``job_id=None`` with sbatch's stderr
    and leaves no files behind. When the connection broke while sbatch ran, the job id is
    recovered by its token (``ssh_result`` is then the broken call's, ``may_have_run``);
    ``job_id=None`` with ``may_have_run`` means the outcome could not be established.
    Multi-node jobs need the scripts on a directory every node sees: ``share_dir``, or a
    home directory shared by the nodes (the default location).
    """
    return await _submit(job, host, share_dir, script_path, timeout)


async def _snapshot(repo_path: str | None, dirty: bool) -> bytes:
    """The repo as tar.gz (:func:`dispatch.shipping.snapshot` / ``snapshot_dirty``), off-loop."""
    if dirty:
        return await asyncio.to_thread(ship.snapshot_dirty, repo_path)
    return await asyncio.to_thread(ship.snapshot, repo_path)


async def upload_payload(
    tarball: bytes, host: str, share_dir: str, timeout: float | None = None
) -> str:
    """Upload a payload under its sha256 into ``share_dir`` (skipped when already there);
    return its absolute remote path."""
    digest = hashlib.sha256(tarball).hexdigest()
    base = await _absolute(share_dir, host, timeout)
    path = f"{base}/{PAYLOADS_SUBDIR}/{digest}.tar.gz"
    exists = await run(["test", "-f", path], host, timeout=timeout, retries=1)
    if exists.ok:
        log.debug("payload %s already on %s", digest[:12], host)
        return path
    up = await write_file(host, path, tarball, mode=0o600, timeout=timeout)
    if not up.ok:
        raise SubmitError(f"uploading the payload to {host}:{path} failed: {up.stderr.strip()}")
    return path


async def submit_packed(
    job: SlurmJob,
    host: str,
    repo_path: str | None = None,
    share_dir: str | None = None,
    dirty: bool = False,
    script_path: str | None = None,
    timeout: float | None = None,
) -> SlurmResult:
    """Submit a job with a snapshot of a local git repo as its payload.

    With ``share_dir`` the tarball is uploaded there once (named by its sha256, so
    unchanged code is not uploaded again) and every node extracts it from there;
    without it the tarball is embedded (base64) in the bootstrap script, which must stay
    under slurmctld's 4 MB script limit (SubmitError otherwise, before any upload).
    """
    share_dir = _check_dir("share_dir", share_dir)
    tarball = await _snapshot(repo_path, dirty)
    if share_dir is None:
        # Fail fast on size, before anything is uploaded.
        _check_size("embedded payload (base64)", (len(tarball) + 2) // 3 * 4)
        return await _submit(job.pack(tarball), host, None, script_path, timeout)
    payload_path = await upload_payload(tarball, host, share_dir, timeout)
    return await _submit(job, host, share_dir, script_path, timeout, payload_path=payload_path)
