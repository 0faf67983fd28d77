"""Submitting SLURM jobs: scripts uploaded over SFTP, ``sbatch --parsable``, exactly once.

Each submission renders a bootstrap script (what every node runs) and an sbatch wrapper,
uploads both atomically with mode 0700 into a fresh 0700 directory
``share_dir/.dispatch-<user>/jobs/<name>-<token>/`` (or ``~/.dispatch/jobs/...`` without
a share dir), then runs ``sbatch --parsable --comment=dispatch:<token>``. If sbatch
rejects the job, the uploaded files are removed in the same remote command.

Shared directories: the per-user directory keeps other users' (possibly world-writable)
directories off the path to our scripts. Before anything is uploaded, one remote command
creates each level with ``mkdir -m 700`` and insists it is a real directory (not a
symlink), owned by us and not group/world-writable; otherwise the submission returns
``job_id=None`` with an error naming the directory, its owner and mode. Payloads live in
``.dispatch-<user>/payloads/<sha256>.tar.gz`` and a cached one is reused only if it is
ours, mode 0600 and has that sha256 (checked remotely by ``sha256sum``).

Exactly once: when the connection breaks after sbatch was sent (``may_have_run``) or the
call timed out, the token is looked up in squeue (and sacct) to recover the job id. The
job is submitted again only if the token is provably absent (two lookups a few seconds
apart answered without it, and no process carrying the token -- a still-running sbatch --
is left on the host), and never more than once. sacct shows comments only with
``AccountingStoreFlags=job_comment``; squeue always does, for MinJobAge after the end.

With ``sbcast=True`` only the wrapper is uploaded: it embeds the bootstrap and, on the
batch node, ``sbcast``s it into a private node-local directory on every node (see
`SlurmJob.to_sbatch_script`), so multi-node jobs need no shared directory.

Scripts stay in place while the job may need them (nodes read the bootstrap when the job
starts). After each successful sbatch, the same remote command removes this user's job
directories older than `PRUNE_AFTER_DAYS` days whose ``sbatch.sh`` squeue no longer lists
as a job's command (so a job pending for weeks keeps its scripts); squeue runs only when
such old directories exist, and nothing is removed when it fails. Directories given via
``script_path`` are never pruned.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import posixpath
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
from .job import NODE_LOCAL_BASE, SLURM_MAX_SCRIPT_BYTES, SlurmJob
from .models import SlurmResult

__all__ = ["submit", "submit_packed"]

log = logging.getLogger(__name__)

#: The sbatch executable (tests point it at a shim that cuts the connection).
SBATCH = "sbatch"
#: The squeue executable used when pruning old job directories.
SQUEUE = "squeue"
#: Per-user directory under ``share_dir`` (``.dispatch-<user>``); ``.dispatch`` under home.
SHARE_PREFIX = ".dispatch-"
HOME_SUBDIR = ".dispatch"
#: Scripts go under this subdirectory of the per-user directory.
JOBS_SUBDIR = "jobs"
#: Content-addressed payload tarballs go under this subdirectory of the per-user directory.
PAYLOADS_SUBDIR = "payloads"
#: After a successful sbatch, job directories older than this many days whose job is no
#: longer in squeue are removed (None: never).
PRUNE_AFTER_DAYS: int | None = 7
#: How long to keep asking squeue/sacct for a token after an unknown outcome.
RECOVER_SECONDS = 60.0
#: Pause before the second lookup that must also miss the token before resubmitting.
RECOVER_CONFIRM_SECONDS = 3.0

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")

_homes: dict[str, str] = {}
_users: dict[str, str] = {}


@dataclass(frozen=True)
class _Paths:
    """Where one submission's scripts live on the remote host (absolute paths)."""

    wrapper: str
    bootstrap: str
    directory: str | None  # the per-submission directory (removed on failure), if any
    base: str | None = None  # this user's private dispatch directory, if used

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


class _ProbeFailed(SubmitError):
    """The host could not tell us who we are there (unreachable, auth, no $HOME)."""

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result


async def _identity(host: str, timeout: float | None) -> tuple[str, str]:
    """The remote home directory and user name (uid when the name is unusual in a path):
    one round trip per host alias, then cached."""
    if host in _homes and host in _users:
        return _homes[host], _users[host]
    result = await run('printf "%s\\n" "$HOME"; id -un; id -u', host, timeout=timeout,
                       login_shell=False, retries=1)
    lines = result.stdout.splitlines()
    if not result.ok or len(lines) != 3 or not lines[0].startswith("/") \
            or not lines[2].isdigit():
        reason = result.stderr.strip() or result.stdout.strip() or "no answer"
        # ssh's own message says it best when the host was not reached at all
        msg = reason if result.returncode == 255 else (
            f"dispatch: cannot read $HOME and the user name on {host}: {reason}")
        raise _ProbeFailed(msg, RunResult(result.returncode or 1, result.stdout, msg + "\n"))
    _homes[host] = lines[0]
    _users[host] = lines[1] if _USER.match(lines[1]) else lines[2]
    return _homes[host], _users[host]


async def remote_home(host: str, timeout: float | None = None) -> str:
    """The remote user's home directory (cached per host alias)."""
    return (await _identity(host, timeout))[0]


async def remote_user(host: str, timeout: float | None = None) -> str:
    """The remote user's name (or uid when the name is unusual in a path), cached per host."""
    return (await _identity(host, timeout))[1]


async def _private_base(
    host: str, share_dir: str | None, timeout: float | None
) -> str:
    """This user's dispatch directory: ``share_dir/.dispatch-<user>`` or ``~/.dispatch``.

    Per user, so that nobody else's (possibly world-writable) directory is ever on the
    path between ``share_dir`` and our scripts or payloads.
    """
    if share_dir:
        base = await _absolute(share_dir, host, timeout)
        user = await remote_user(host, timeout)
        return f"{base.rstrip('/')}/{SHARE_PREFIX}{user}"
    return f"{await remote_home(host, timeout)}/{HOME_SUBDIR}"


def _ensure_private_dirs(dirs: list[str]) -> str:
    """Shell code: create each directory (mode 0700) if missing, then insist it is ours.

    Each must be a real directory (not a symlink), owned by us and writable by nobody
    else; otherwise the command fails naming the directory, its owner and its mode. The
    parent of the first (``share_dir`` itself) is created if missing, with the user's
    umask: it is meant to be shared.
    """
    parent = shlex.quote(posixpath.dirname(dirs[0]) or "/")
    parts = [f"mkdir -p -- {parent} || exit 1"]
    for d in dirs:
        q = shlex.quote(d)
        parts.append(
            f"{{ [ -e {q} ] || [ -L {q} ] || mkdir -m 700 -- {q} || [ -d {q} ]; }} || exit 1; "
            f"if [ -d {q} ] && [ ! -L {q} ] && [ -O {q} ] "
            f"&& [ -z \"$(find {q} -maxdepth 0 -perm /022 -print)\" ]; then :; else "
            f"printf 'dispatch: refusing to use %s: owner %s, mode %s (it must be a "
            f"directory owned by you and writable only by you)\\n' {q} "
            f"\"$(stat -c %U -- {q} 2>/dev/null || echo unknown)\" "
            f"\"$(stat -c %a -- {q} 2>/dev/null || echo unknown)\" >&2; exit 1; fi"
        )
    return "; ".join(parts)


async def _prepare(paths: _Paths, host: str, timeout: float | None) -> RunResult:
    """One remote command: check (creating) the private levels, then make the job dir."""
    if paths.directory is None or paths.base is None:
        return RunResult(0, "", "")
    jobs = f"{paths.base}/{JOBS_SUBDIR}"
    # The job dir is new (random token) inside our private jobs dir; tolerating an
    # existing one only makes a retried call (connection broke after mkdir) succeed.
    q = shlex.quote(paths.directory)
    cmd = f"{_ensure_private_dirs([paths.base, jobs])}; [ -d {q} ] || mkdir -m 700 -- {q}"
    return await run(cmd, host, timeout=timeout, retries=1)


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
    base = await _private_base(host, share_dir, timeout)
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


def _sbatch_command(paths: _Paths, token: str) -> str:
    """sbatch with the token; on rejection remove the uploaded scripts, keep sbatch's status.

    After a successful sbatch, old job directories of this user are pruned in the same
    command (see `_prune_command`); that never changes the command's status or output.
    """
    sbatch = (
        f"{shlex.quote(SBATCH)} --parsable --comment={shlex.quote('dispatch:' + token)} "
        f"{shlex.quote(paths.wrapper)}"
    )
    command = f"{sbatch} || {{ rc=$?; {paths.cleanup_command()}; exit $rc; }}"
    if paths.directory is not None:
        # write_file creates parents with the umask's mode; the job dir holds env values.
        command = f"chmod 700 -- {shlex.quote(paths.directory)}; {command}"
        if PRUNE_AFTER_DAYS is not None:
            jobs_dir = paths.directory.rsplit("/", 1)[0]
            command = f"{command}; {_prune_command(jobs_dir, PRUNE_AFTER_DAYS)}"
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
    paths: _Paths, wrapper: bytes, bootstrap: bytes | None, host: str, timeout: float | None
) -> RunResult:
    """Upload the scripts (atomic, 0700); the first failure's result, else the last ok.

    Without a bootstrap (embedded for sbcast) only the wrapper is uploaded.
    """
    result = RunResult(0, "", "")
    files = [(paths.wrapper, wrapper)]
    if bootstrap is not None:
        files.insert(0, (paths.bootstrap, bootstrap))
    for path, data in files:
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
    sbcast: bool = False,
) -> SlurmResult:
    if not isinstance(job, SlurmJob):
        raise InvalidValueError(f"job must be a SlurmJob, got {type(job).__name__}")
    if not isinstance(sbcast, bool):
        raise InvalidValueError(f"sbcast must be True or False, got {sbcast!r}")
    share_dir = _check_dir("share_dir", share_dir)
    script_path = _check_dir("script_path", script_path)
    token = secrets.token_hex(8)
    paths = await _paths(job, host, share_dir, script_path, token, timeout)
    wrapper, bootstrap = _render(job, paths, payload_path, sbcast)

    prepared = await _prepare(paths, host, timeout)
    if not prepared.ok:
        log.warning("cannot use the job directory on %s: %s", host, prepared.stderr.strip())
        return SlurmResult(None, prepared)
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
    *,
    sbcast: bool = False,
) -> SlurmResult:
    """Submit a SLURM job to a remote host via SSH.

    Uploads two scripts (SFTP, atomic, mode 0700) and runs ``sbatch --parsable``: the
    bootstrap (what every task runs: setup, then the command) and the sbatch wrapper
    (the ``#SBATCH`` directives, then ``srun`` on the bootstrap). They go into a fresh
    0700 directory under ``share_dir/.dispatch-<user>/jobs/`` or ``~/.dispatch/jobs/``;
    every level must be a directory owned by the caller and writable by nobody else,
    otherwise nothing is uploaded and the result names the directory and its owner.
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
    except _ProbeFailed as exc:  # unreachable host: a result, like every remote failure
        return SlurmResult(None, exc.result)


async def _snapshot(repo_path: str | None, dirty: bool) -> bytes:
    """The repo as tar.gz (``snapshot`` / ``snapshot_dirty``), off-loop."""
    if dirty:
        return await asyncio.to_thread(ship.snapshot_dirty, repo_path)
    return await asyncio.to_thread(ship.snapshot, repo_path)


_CACHED = "@@dispatch-payload-cached@@"


async def upload_payload(
    tarball: bytes, host: str, share_dir: str, timeout: float | None = None
) -> tuple[str, RunResult]:
    """Upload a payload under its sha256 into ``share_dir/.dispatch-<user>/payloads``.

    The upload is skipped when a file of that name is already there, owned by us, mode
    0600 and with the right sha256 (checked remotely in the same command that checks the
    directories). Returns the absolute remote path and the result; the path is usable
    only when the result is ok (a failed result names the reason).
    """
    digest = hashlib.sha256(tarball).hexdigest()
    base = await _private_base(host, share_dir, timeout)
    directory = f"{base}/{PAYLOADS_SUBDIR}"
    path = f"{directory}/{digest}.tar.gz"
    q = shlex.quote(path)
    check = (
        f"{_ensure_private_dirs([base, directory])}; "
        f"if [ -f {q} ] && [ ! -L {q} ] && [ -O {q} ] "
        f'&& [ "$(stat -c %a -- {q})" = 600 ] '
        f'&& [ "$(sha256sum < {q} | cut -d" " -f1)" = {digest} ]; then echo {_CACHED}; fi'
    )
    checked = await run(check, host, timeout=timeout, retries=1)
    if not checked.ok:
        return path, checked
    if _CACHED in checked.stdout:
        log.debug("payload %s already on %s", digest[:12], host)
        return path, checked
    up = await write_file(host, path, tarball, mode=0o600, timeout=timeout)
    if not up.ok:
        stderr = f"uploading the payload to {host}:{path} failed: {up.stderr.strip()}\n"
        return path, RunResult(up.returncode, up.stdout, stderr, may_have_run=up.may_have_run)
    return path, up


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
    share_dir = _check_dir("share_dir", share_dir)
    tarball = await _snapshot(repo_path, dirty)
    try:
        return await _submit_tarball(job, host, tarball, share_dir, script_path, timeout, sbcast)
    except _ProbeFailed as exc:  # unreachable host: a result, like every remote failure
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
    payload_path, up = await upload_payload(tarball, host, share_dir, timeout)
    if not up.ok:
        return SlurmResult(None, up)
    return await _submit(
        job, host, share_dir, script_path, timeout, payload_path=payload_path, sbcast=sbcast
    )
