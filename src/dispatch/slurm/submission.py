"""Submitting SLURM jobs: one remote command writes the scripts and runs sbatch, exactly once.

Each submission renders a bootstrap script (what every node runs) and an sbatch wrapper
and sends both, as a small tar on stdin, to ONE remote command (see `.batch`) that
checks the per-user private directory, unpacks the scripts (mode 0700) into a fresh
0700 directory ``share_dir/.dispatch-<user>/jobs/<name>-<token>/`` (or
``~/.dispatch/jobs/...`` without a share dir), checks their sizes and runs
``sbatch --parsable --comment=dispatch:<token>``. If anything fails, or sbatch rejects
the job, the job's files are removed in the same command. A warm submission is one
``run``; concurrent submissions to one host share one.

Shared directories: the per-user directory keeps other users' (possibly world-writable)
directories off the path to our scripts. The command creates each level with
``mkdir -m 700`` and insists it is a real directory (not a symlink), owned by us and not
group/world-writable before anything is written; otherwise the submission returns
``job_id=None`` with an error naming the directory, its owner and mode (see `.userdir`).
Payloads live in ``.dispatch-<user>/payloads/<sha256>.tar.gz`` and a cached one is
reused only if it is ours, mode 0600 and has that sha256, checked by the same command
(see `.payload`); a missing one is uploaded and the command repeated.

Exactly once: when the connection breaks after the command was sent (``may_have_run``)
or the call timed out, the token is looked up in squeue (and sacct) to recover the job
id. The job is submitted again only if the token is provably absent (two lookups a few
seconds apart answered without it, and no process carrying the token -- a still-running
sbatch -- is left on the host), and never more than once. sacct shows comments only
with ``AccountingStoreFlags=job_comment``; squeue always does, for MinJobAge after the
end.

With ``sbcast=True`` only the wrapper is written: it embeds the bootstrap and, on the
batch node, ``sbcast``s it into a private node-local directory on every node (see
`SlurmJob.to_sbatch_script`), so multi-node jobs need no shared directory.

Scripts stay in place while the job may need them (nodes read the bootstrap when the job
starts). After a successful sbatch, the same remote command removes this user's job
directories older than `PRUNE_AFTER_DAYS` days whose ``sbatch.sh`` squeue no longer lists
as a job's command (so a job pending for weeks keeps its scripts); squeue runs only when
such old directories exist, and nothing is removed when it fails. Directories given via
``script_path`` are never pruned."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import shlex
from dataclasses import dataclass

from ..errors import InvalidValueError, SubmitError
from ..results import RunResult
from ..ssh import run
from ..ssh import write_file as write_file  # re-exported: tests use it
from . import parse, tokens
from .batch import PAYLOAD_MISSING, ScriptSet, run_submissions
from .job import NODE_LOCAL_BASE, SLURM_MAX_SCRIPT_BYTES, SlurmJob
from .models import SlurmResult
from .payload import payload_location, snapshot_repo, store_payload
from .payload import upload_payload as upload_payload  # re-exported: benchmarks use it
from .userdir import ProbeFailed, absolute_path, check_dir, private_base
from .userdir import remote_home as remote_home  # re-exported: tests and benchmarks use it

__all__ = ["submit", "submit_packed"]

log = logging.getLogger(__name__)

#: The sbatch executable (tests point it at a shim that cuts the connection).
SBATCH = "sbatch"
#: The squeue executable used when pruning old job directories.
SQUEUE = "squeue"
#: Scripts go under this subdirectory of the per-user directory.
JOBS_SUBDIR = "jobs"
#: After a successful sbatch, job directories older than this many days whose job is no
#: longer in squeue are removed (None: never).
PRUNE_AFTER_DAYS: int | None = 7
#: How long to keep asking squeue/sacct for a token after an unknown outcome.
RECOVER_SECONDS = 60.0
#: Pause before the second lookup that must also miss the token before resubmitting.
RECOVER_CONFIRM_SECONDS = 3.0

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class _Paths:
    """Where one submission's scripts live on the remote host (absolute paths)."""

    wrapper: str
    bootstrap: str
    directory: str | None  # the per-submission directory (removed on failure), if any
    base: str | None = None  # this user's private dispatch directory, if used
    prefix: str | None = None  # the caller's script_path, if given


async def _paths(
    job: SlurmJob, host: str, share_dir: str | None, script_path: str | None, token: str,
    timeout: float | None,
) -> _Paths:
    if script_path is not None:
        prefix = await absolute_path(script_path, host, timeout)
        return _Paths(f"{prefix}.sbatch.sh", f"{prefix}.bootstrap.sh", None, prefix=prefix)
    base = await private_base(host, share_dir, timeout)
    name = _UNSAFE.sub("_", job.name)[:40].strip("._") or "job"
    directory = f"{base}/{JOBS_SUBDIR}/{name}-{token}"
    return _Paths(f"{directory}/sbatch.sh", f"{directory}/bootstrap.sh", directory, base)


def _check_size(label: str, size: int) -> None:
    if size > SLURM_MAX_SCRIPT_BYTES:
        raise SubmitError(
            f"the {label} is {size} bytes, over slurmctld's limit of "
            f"{SLURM_MAX_SCRIPT_BYTES} bytes (probably an embedded payload): pass share_dir= "
            "so the payload is uploaded separately, or ship less code"
        )


def _render(
    job: SlurmJob, paths: _Paths, payload_path: str | None, sbcast: bool
) -> tuple[bytes, bytes | None]:
    """(wrapper, bootstrap) bytes; bootstrap is None when it is embedded for sbcast."""
    if payload_path is not None:
        bootstrap_text = job.to_bootstrap_script(payload_path=payload_path)
    else:
        bootstrap_text = job.to_bootstrap_script()
    if sbcast:
        wrapper = job.to_sbatch_script(NODE_LOCAL_BASE, embed_bootstrap=bootstrap_text).encode()
        _check_size("sbatch script (with the embedded bootstrap for sbcast)", len(wrapper))
        return wrapper, None
    wrapper = job.to_sbatch_script(paths.bootstrap).encode()
    bootstrap = bootstrap_text.encode()
    _check_size("sbatch script", len(wrapper))
    _check_size("bootstrap script", len(bootstrap))
    return wrapper, bootstrap


def _prune_command(jobs_dir: str, days: int) -> str:
    """Shell code removing our job dirs older than ``days`` whose job left squeue.

    slurmctld copies the sbatch script at submission, but each node reads the bootstrap
    when the job starts, so a dir is kept while squeue (all states, so also just-ended
    jobs) still lists its ``sbatch.sh`` as a job's command. squeue runs only when there
    are old dirs at all; when it fails nothing is removed. Always succeeds, silently.
    """
    q = shlex.quote(jobs_dir)
    squeue = shlex.join([SQUEUE, "-h", "--states=all", "-o", "%o"])
    return (
        f"( old=$(find {q} -mindepth 1 -maxdepth 1 -type d -mtime +{int(days)} -print) "
        f'&& [ -n "$old" ] && keep=$({squeue} -u "$(id -un)") && '
        f'printf "%s\\n" "$old" | while IFS= read -r d; do '
        f'case "$keep" in *"$d/"*) ;; *) rm -rf -- "$d" ;; esac; done ) >/dev/null 2>&1 || :'
    )


def _unknown(result: RunResult) -> bool:
    """True when sbatch may have run but we did not get its answer."""
    return result.may_have_run or result.returncode == -1


_INFLIGHT = "@@dispatch-sbatch-in-flight@@"


async def find_token(
    token: str, host: str, timeout: float | None = None
) -> tuple[list[int], bool]:
    """Job ids whose comment is ``dispatch:<token>`` (what submit's sbatch created; not a
    successor resubmitted in its place, ``dispatch:<token>/<n>``), and whether the lookup
    answered.

    squeue shows the comment of every job slurmctld still knows (finished ones for
    MinJobAge); sacct shows it only when ``AccountingStoreFlags=job_comment`` is set.
    While a process carrying the token in its argv (the earlier sbatch, still talking to
    slurmctld) runs on the host, an empty answer proves nothing: answered is False then.
    """
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
    ids = sorted({job_id for job_id, comment in pairs
                  if tokens.parse_comment(comment) == (token, 0)})
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


@dataclass(frozen=True)
class _Payload:
    """A cached payload the job extracts: its bytes, remote path and sha256."""

    tarball: bytes
    path: str
    digest: str


def _script_set(
    paths: _Paths, token: str, wrapper: bytes, bootstrap: bytes | None,
    payload: _Payload | None,
) -> ScriptSet:
    files = [("sbatch.sh", wrapper)]
    if bootstrap is not None:
        files.append(("bootstrap.sh", bootstrap))
    prune = None
    if paths.directory is not None and PRUNE_AFTER_DAYS is not None:
        prune = _prune_command(paths.directory.rsplit("/", 1)[0], PRUNE_AFTER_DAYS)
    return ScriptSet(
        token=token, sbatch=SBATCH, files=tuple(files), base=paths.base,
        directory=paths.directory, prefix=paths.prefix,
        payload=(payload.path, payload.digest) if payload else None, prune=prune,
    )


def _payload_missing(result: RunResult) -> bool:
    return result.returncode == 3 and PAYLOAD_MISSING in result.stdout


async def _send(
    scripts: ScriptSet, host: str, timeout: float | None, payload: _Payload | None
) -> RunResult:
    """The one submission command; when the job's cached payload is missing (or fails its
    sha256 check), upload it and send the command again (no job was submitted)."""
    result = await run_submissions(host, timeout, scripts)
    if payload is None or not _payload_missing(result):
        return result
    log.debug("payload %s not on %s yet: uploading", payload.digest[:12], host)
    up = await store_payload(payload.tarball, host, payload.path, timeout)
    if not up.ok:
        return up
    result = await run_submissions(host, timeout, scripts)
    if _payload_missing(result):
        msg = (f"dispatch: the payload {payload.path} on {host} is not ours, not mode 0600 "
               "or fails its sha256 check right after the upload\n")
        return RunResult(1, "", msg)
    return result


def _outcome(result: RunResult) -> tuple[int | None, bool]:
    """(job id, known): known=False means sbatch may have run but we lack its answer."""
    if result.ok:
        job_id = parse.parse_sbatch_parsable(result.stdout)
        return job_id, job_id is not None
    return None, not _unknown(result)


async def _submit(
    job: SlurmJob,
    host: str,
    share_dir: str | None,
    script_path: str | None,
    timeout: float | None,
    payload: _Payload | None = None,
    sbcast: bool = False,
) -> SlurmResult:
    if not isinstance(job, SlurmJob):
        raise InvalidValueError(f"job must be a SlurmJob, got {type(job).__name__}")
    if not isinstance(sbcast, bool):
        raise InvalidValueError(f"sbcast must be True or False, got {sbcast!r}")
    share_dir = check_dir("share_dir", share_dir)
    script_path = check_dir("script_path", script_path)
    token = secrets.token_hex(8)
    paths = await _paths(job, host, share_dir, script_path, token, timeout)
    wrapper, bootstrap = _render(job, paths, payload.path if payload else None, sbcast)
    scripts = _script_set(paths, token, wrapper, bootstrap, payload)

    result = await _send(scripts, host, timeout, payload)
    job_id, known = _outcome(result)
    if known:
        return SlurmResult(job_id, result)

    log.warning("sbatch on %s: outcome unknown (%s); looking up token", host, result.stderr.strip())
    found, certain = await _recover(token, host, timeout)
    if found is not None:
        return SlurmResult(found, result)
    if not certain:
        return SlurmResult(None, result)
    log.warning("job with token %s is not on %s: submitting again (once)", token, host)
    # The command writes the scripts afresh (replacing what the first attempt left).
    retry = await _send(scripts, host, timeout, payload)
    job_id, known = _outcome(retry)
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
    *,
    sbcast: bool = False,
) -> SlurmResult:
    """Submit a SLURM job to a remote host via SSH.

    Writes two scripts (mode 0700) and runs ``sbatch --parsable``, all in one remote
    command (the scripts travel on its stdin; warm, that is one request per call, and
    concurrent calls to one host share one): the bootstrap (what every task runs: setup,
    then the command) and the sbatch wrapper (the ``#SBATCH`` directives, then ``srun``
    on the bootstrap). They go into a fresh 0700 directory under
    ``share_dir/.dispatch-<user>/jobs/`` or ``~/.dispatch/jobs/``; every level must be a
    directory owned by the caller and writable by nobody else, otherwise nothing is
    written and the result names the directory and its owner.
    A rejected job returns ``job_id=None`` with sbatch's stderr and leaves no files
    behind. When the connection broke while sbatch ran, the job id is recovered by a
    token in the job's comment (``ssh_result`` is then the broken call's, with
    ``may_have_run``); ``job_id=None`` with ``may_have_run`` means the outcome could not
    be established. The job is never submitted twice.

    Args:
        job: The job to submit.
        host: SSH host alias with SLURM access (a login node).
        share_dir: Directory visible to all nodes (needed for multi-node jobs when the
            home directory is not shared); the scripts go to its ``.dispatch-<user>/``.
        script_path: Remote path prefix instead: the scripts become
            ``<prefix>.sbatch.sh`` and ``<prefix>.bootstrap.sh``.
        timeout: Seconds for each SSH call (None: no limit).
        sbcast: Embed the bootstrap in the sbatch wrapper instead of uploading it: on the
            batch node the wrapper stages it in a private file, ``sbcast``s it into a fresh
            0700 directory ``${TMPDIR:-/tmp}/dispatch-<jobid>-<random>/`` on every
            allocated node, runs it there and removes the copies when it ends. For
            multi-node jobs without a shared directory (only the wrapper is uploaded,
            and only the login host reads it). The bootstrap then counts toward the 4 MB
            script limit (`SubmitError` before anything is uploaded). Combines with
            ``share_dir``/``script_path``, which then only say where the wrapper goes.

    Returns:
        `SlurmResult` with the job id (None when no job was submitted) and the result of
        the sbatch call (or of the failed preparation/upload).

    Raises:
        SubmitError: The script with the embedded bootstrap would exceed the script size
            limit (raised before anything is uploaded).
    """
    try:
        return await _submit(job, host, share_dir, script_path, timeout, sbcast=sbcast)
    except ProbeFailed as exc:  # unreachable host: a result, like every remote failure
        return SlurmResult(None, exc.result)


async def submit_packed(
    job: SlurmJob,
    host: str,
    repo_path: str | None = None,
    share_dir: str | None = None,
    dirty: bool = False,
    script_path: str | None = None,
    timeout: float | None = None,
    *,
    sbcast: bool = False,
) -> SlurmResult:
    """Submit a SLURM job with code packed into the script.

    The payload is a tar.gz snapshot of a local git repo, extracted on each node (to
    ``job.payload_extract_to``, by default ``$SLURM_TMPDIR/code``). With ``share_dir``
    the tarball is uploaded once into ``share_dir/.dispatch-<user>/payloads/`` under its
    sha256 (a cached copy is reused only if it is ours, mode 0600 and has that sha256)
    and every node extracts it from there; without it the tarball is embedded (base64)
    in the bootstrap script, which must stay under slurmctld's 4 MB script limit.

    Args:
        job: The job to submit (its ``payload`` is replaced).
        host: SSH host alias with SLURM access (a login node).
        repo_path: Local git repository to pack (default: the current directory).
        share_dir: Directory visible to all nodes, for the scripts and the payload.
        dirty: Include uncommitted changes (default: only committed files).
        script_path: Remote path prefix for the scripts (see `submit`).
        timeout: Seconds for each SSH call (None: no limit).
        sbcast: Embed the bootstrap (with the embedded payload, when there is no
            ``share_dir``) in the sbatch wrapper and ``sbcast`` it to every node (see
            `submit`), so multi-node jobs need no shared directory. ``share_dir`` still
            takes precedence for the payload: when given, the payload is uploaded (and
            cached) there and the nodes extract it from there; only the bootstrap is
            sbcast.

    Returns:
        `SlurmResult` as from `submit`; a failed payload upload gives ``job_id=None``
        and the upload's result.

    Raises:
        SubmitError: The embedded payload would exceed the script size limit (raised
            before anything is uploaded).
    """
    share_dir = check_dir("share_dir", share_dir)
    tarball = await snapshot_repo(repo_path, dirty)
    try:
        return await _submit_tarball(job, host, tarball, share_dir, script_path, timeout, sbcast)
    except ProbeFailed as exc:  # unreachable host: a result, like every remote failure
        return SlurmResult(None, exc.result)


async def _submit_tarball(
    job: SlurmJob, host: str, tarball: bytes, share_dir: str | None,
    script_path: str | None, timeout: float | None, sbcast: bool,
) -> SlurmResult:
    if share_dir is None:
        # Fail fast on size, before anything is uploaded.
        _check_size("embedded payload (base64)", (len(tarball) + 2) // 3 * 4)
        return await _submit(
            job.pack(tarball), host, None, script_path, timeout, sbcast=sbcast
        )
    _, path, digest = await payload_location(tarball, host, share_dir, timeout)
    return await _submit(
        job, host, share_dir, script_path, timeout, payload=_Payload(tarball, path, digest),
        sbcast=sbcast,
    )
