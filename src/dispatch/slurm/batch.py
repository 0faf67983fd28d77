"""One remote command per submission (or per batch of concurrent ones): scripts on stdin.

A submission's remote work is a single ``run``: its scripts travel as a small tar on the
command's stdin (never in the command line, which sshd logs and ``ps`` shows), and the
command checks the private directories (see `.userdir`), verifies a cached payload by
sha256 (see `.payload`), unpacks the scripts into a fresh 0700 staging directory inside
the verified jobs directory, checks their sizes, moves each job's directory into place
and runs ``sbatch`` with the job's exactly-once token. A job that fails anywhere removes
its own files; the staging directory goes when the command exits.

Submissions to the same host started in the same event-loop step (``asyncio.gather`` of
50 ``submit``) share one command: their sbatch calls run in parallel on the login node,
and the command reports every job's exit status, then each job's stdout and stderr
(sizes, then hex), so each caller gets its own `RunResult`. Each job forks only a few
processes (its subshell, ``mv``, ``sbatch``): a batch of 50 costs little more than its
sbatch calls.
"""

from __future__ import annotations

import asyncio
import io
import logging
import posixpath
import secrets
import shlex
import tarfile
import time
from dataclasses import dataclass, field

from ..results import RunResult
from ..ssh import PoolKey, current_pool, run
from . import tokens
from .payload import payload_ok_test
from .userdir import ensure_private_dirs

__all__ = ["ScriptSet", "run_submissions", "PAYLOAD_MISSING", "MAX_BATCH_JOBS"]

log = logging.getLogger(__name__)

#: Printed (stdout) by a job whose cached payload is missing or fails its sha256 check.
PAYLOAD_MISSING = "@@dispatch-payload-missing@@"
#: At most this many jobs (and about this many bytes of scripts) share one command.
MAX_BATCH_JOBS = 64
MAX_BATCH_BYTES = 16 * 1024 * 1024

_RCS = "@@dispatch-status "
_SIZES = "@@dispatch-sizes"
_HEX = "@@dispatch-hex"
_END = "@@dispatch-end"


@dataclass(frozen=True)
class ScriptSet:
    """One job's scripts and where they go.

    ``directory`` (a fresh job dir inside the private ``jobs`` dir ``base``/jobs) or
    ``prefix`` (``<prefix>.sbatch.sh``, ``<prefix>.bootstrap.sh``: the caller's
    script_path) says where; ``files`` are ``(name, bytes)`` with the wrapper first;
    ``payload`` is ``(path, sha256)`` of a cached payload the job needs.
    """

    token: str
    sbatch: str  # the sbatch executable (tests point it at a shim)
    files: tuple[tuple[str, bytes], ...]
    base: str | None = None
    directory: str | None = None
    prefix: str | None = None
    payload: tuple[str, str] | None = None
    prune: str | None = None  # shell code pruning old job dirs after a successful sbatch

    def target(self, name: str) -> str:
        """Final remote path of the file ``name`` (``sbatch.sh`` or ``bootstrap.sh``)."""
        if self.directory is not None:
            return f"{self.directory}/{name}"
        assert self.prefix is not None
        return f"{self.prefix}.{name}"

    @property
    def wrapper(self) -> str:
        return self.target(self.files[0][0])


def _tar(jobs: list[ScriptSet]) -> bytes:
    """The scripts of ``jobs`` as ``<i>/<name>`` members (mode 0700), uncompressed."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, job in enumerate(jobs):
            d = tarfile.TarInfo(str(i))
            d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o700, now
            tar.addfile(d)
            for name, data in job.files:
                info = tarfile.TarInfo(f"{i}/{name}")
                info.size, info.mode, info.mtime = len(data), 0o700, now
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


#: Shell functions every submission command defines (after ``st``, ``sz`` and ``terr``).
#: Few processes per job: a batch of 50 must not cost 50 x a dozen forks.
_FUNCTIONS = r"""bad() {
  printf 'dispatch: writing the job scripts for %s failed%s\n' "$1" "${terr:+: $terr}" >&2; }
has() { case "$sz" in *"
$1
"*) return 0 ;; esac; return 1; }
into_dir() { { [ ! -e "$2" ] && [ ! -L "$2" ] || rm -rf -- "$2"; } && mv -- "$st/$1" "$2" \
  && [ -d "$2" ] && [ ! -L "$2" ] && [ -O "$2" ]; }"""


def _job_section(i: int, job: ScriptSet, payload_var: str | None) -> str:
    """Shell for one job, run in the background with stdout/stderr to ``$ot/<i>.o|e``:
    check the unpacked files (regular, exact sizes), move them into place, sbatch; on any
    failure remove what was moved and exit non-zero (3 with `PAYLOAD_MISSING` when the
    payload is missing)."""
    checks = " && ".join(f'has "{len(d)} {i}/{n}"' for n, d in job.files)
    parts = []
    if payload_var is not None:
        parts.append(f'[ "${payload_var}" = 1 ] || {{ echo {PAYLOAD_MISSING}; exit 3; }}')
    if job.directory is not None:
        q = shlex.quote(job.directory)
        remove = f"rm -rf -- {q}"
        place = f"into_dir {i} {q}"
    else:
        targets = [shlex.quote(job.target(n)) for n, _ in job.files]
        remove = f"rm -f -- {' '.join(targets)}"
        place = " && ".join(
            f'mv -f -- "$st"/{i}/{n} {t}' for (n, _), t in zip(job.files, targets, strict=True)
        )
    wrapper = shlex.quote(job.wrapper)
    parts.append(
        f"{{ [ $trc = 0 ] && {checks} && {place}; }} || {{ bad {wrapper}; {remove}; exit 1; }}"
    )
    parts.append(
        f"{shlex.quote(job.sbatch)} --parsable "
        f"--comment={shlex.quote(tokens.comment(job.token))} {wrapper} "
        f"|| {{ rc=$?; {remove}; exit $rc; }}"
    )
    return "( " + "\n  ".join(parts) + f' ) >"$ot"/{i}.o 2>"$ot"/{i}.e </dev/null & p{i}=$!'


def batch_command(jobs: list[ScriptSet], batch_token: str) -> str:
    """The remote shell script for ``jobs`` (all with the same base, or one prefix job)."""
    first = jobs[0]
    lines = ["umask 077"]
    payload_dirs = sorted({posixpath.dirname(j.payload[0]) for j in jobs if j.payload})
    if first.base is not None:
        jobs_dir = posixpath.dirname(first.directory or "")
        lines.append(ensure_private_dirs([first.base, jobs_dir, *payload_dirs]))
        stage = shlex.quote(f"{jobs_dir}/.batch-{batch_token}")
        lines.append(f"st={stage}; mkdir -m 700 -- \"$st\" || exit 1")
    else:
        assert first.prefix is not None and len(jobs) == 1
        if payload_dirs:  # script_path and a cached payload: its private dirs still count
            lines.append(ensure_private_dirs([posixpath.dirname(payload_dirs[0]), *payload_dirs]))
        parent = shlex.quote(posixpath.dirname(first.prefix) or "/")
        lines.append(
            f"mkdir -p -- {parent} && st=$(mktemp -d {parent}/.dispatch-stage-XXXXXXXX) "
            "|| exit 1"
        )
    # Each job's stdout/stderr: off the target file system (it may be the full one).
    lines.append('ot=$(mktemp -d 2>/dev/null) || ot="$st"')
    lines.append("trap 'rm -rf -- \"$st\" \"$ot\"' EXIT")
    lines.append('terr=$(tar -x -m -f - -C "$st" 2>&1 >/dev/null); trc=$?')
    # what was unpacked: "<size> <i>/<name>" lines (regular files only, no symlinks)
    lines.append('sz="\n$(find "$st" -mindepth 2 -maxdepth 2 -type f -printf \'%s %P\\n\')\n"')
    lines.append(_FUNCTIONS)
    payload_vars: dict[str, str] = {}
    for path, digest in sorted({j.payload for j in jobs if j.payload}):
        var = f"pk{len(payload_vars)}"
        payload_vars[path] = var
        lines.append(f"{var}=0; if {payload_ok_test(path, digest)}; then {var}=1; fi")
    for i, job in enumerate(jobs):
        gate = payload_vars[job.payload[0]] if job.payload else None
        lines.append(_job_section(i, job, gate))
    waits = [f'wait "$p{i}"; r{i}=$?' for i in range(len(jobs))]
    lines += waits
    rcs = " ".join(f"$r{i}" for i in range(len(jobs)))
    if first.prune is not None:
        lines.append(f'case " {rcs} " in *" 0 "*) {first.prune} ;; esac')
    outputs = " ".join(f'"$ot"/{i}.o "$ot"/{i}.e' for i in range(len(jobs)))
    lines.append(f'printf "{_RCS}%s\\n{_SIZES}\\n" "{rcs}"; wc -c -- {outputs} 2>/dev/null')
    lines.append(f"echo {_HEX}; od -An -v -tx1 -- {outputs} 2>/dev/null | tr -d ' \\n'; "
                 f"echo; echo {_END}")
    lines.append("exit 0")
    return "\n".join(lines)


def split_results(result: RunResult, n: int) -> list[RunResult]:
    """Each job's result from the batch command's stdout: the exit statuses, the sizes of
    each job's stdout/stderr files and all of them hex-encoded. The raw result stands for
    every job when that report is missing or incomplete (the command failed before its
    jobs ran, or the connection broke)."""
    lines = result.stdout.splitlines()
    try:
        at = {mark: lines.index(mark) for mark in (_SIZES, _HEX, _END)}
        rcs_line = lines[at[_SIZES] - 1]
        if not rcs_line.startswith(_RCS) or at[_END] != at[_HEX] + 2:
            return [result] * n
        rcs = [int(x) for x in rcs_line[len(_RCS):].split()]
        blob = bytes.fromhex(lines[at[_HEX] + 1])
    except ValueError:
        return [result] * n
    if len(rcs) != n:
        return [result] * n
    sizes: dict[str, int] = {}
    for line in lines[at[_SIZES] + 1:at[_HEX]]:
        count, _, path = line.strip().partition(" ")
        if count.isdigit():
            sizes[path.rsplit("/", 1)[-1]] = int(count)
    out: list[RunResult] = []
    pos = 0
    for i, rc in enumerate(rcs):
        texts = []
        for kind in ("o", "e"):
            size = sizes.get(f"{i}.{kind}", 0)
            texts.append(blob[pos:pos + size].decode("utf-8", "replace"))
            pos += size
        out.append(RunResult(rc, texts[0], texts[1]))
    if pos != len(blob):
        return [result] * n
    return out


async def _run_batch(host: str, timeout: float | None, jobs: list[ScriptSet]) -> list[RunResult]:
    """One remote command for ``jobs``. A command that did not start (255 without
    ``may_have_run``: nothing ran) is tried once more, as the directory step always was."""
    command = batch_command(jobs, secrets.token_hex(6))
    stdin = _tar(jobs)
    result = await run(command, host, timeout=timeout, input=stdin)
    if result.returncode == 255 and not result.may_have_run:
        result = await run(command, host, timeout=timeout, input=stdin)
    return split_results(result, len(jobs))


@dataclass
class _Pending:
    """Submissions waiting for the next command, and the task that will send it."""

    jobs: list[ScriptSet] = field(default_factory=list)
    waiters: list[asyncio.Future[RunResult]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def abandoned(self, _: asyncio.Future[RunResult]) -> None:
        """A waiter finished: cancel the command once every waiter was cancelled."""
        if self.task is not None and not self.task.done() \
                and all(w.cancelled() for w in self.waiters):
            self.task.cancel()


_Key = tuple[str, "float | None", str]


@dataclass
class _Batches:
    """Per pool: the batch still collecting per (host, timeout, base), and live tasks."""

    pending: dict[_Key, _Pending] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


async def _close_batches(state: _Batches) -> None:
    for task in list(state.tasks):
        task.cancel()


_BATCHES: PoolKey[_Batches] = PoolKey("slurm.submit_batches", _Batches, _close_batches)


def _chunks(jobs: list[ScriptSet]) -> list[tuple[int, int]]:
    """(start, end) slices of at most MAX_BATCH_JOBS jobs and about MAX_BATCH_BYTES."""
    out, start, size = [], 0, 0
    for i, job in enumerate(jobs):
        n = sum(len(d) for _, d in job.files)
        if i > start and (i - start >= MAX_BATCH_JOBS or size + n > MAX_BATCH_BYTES):
            out.append((start, i))
            start, size = i, 0
        size += n
    out.append((start, len(jobs)))
    return out


async def _flush(state: _Batches, key: _Key, batch: _Pending) -> None:
    host, timeout, _ = key

    async def one(start: int, end: int) -> None:
        try:
            results = await _run_batch(host, timeout, batch.jobs[start:end])
        except Exception as exc:  # a bug, not a remote failure: every waiter sees it
            for fut in batch.waiters[start:end]:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for fut, res in zip(batch.waiters[start:end], results, strict=True):
            if not fut.done():
                fut.set_result(res)

    try:
        await asyncio.sleep(0)  # let the rest of this loop step's submissions join
        if state.pending.get(key) is batch:
            del state.pending[key]
        await asyncio.gather(*(one(s, e) for s, e in _chunks(batch.jobs)))
    finally:
        if state.pending.get(key) is batch:
            del state.pending[key]
        for fut in batch.waiters:  # cancelled (pool closed, or every caller gone)
            if not fut.done():
                fut.cancel()


async def run_submissions(host: str, timeout: float | None, job: ScriptSet) -> RunResult:
    """Write ``job``'s scripts and sbatch it in one remote command (shared with the other
    submissions to ``host`` started in the same loop step); the job's own result.

    Cancelling the caller does not stop a command other submissions share; when every
    submission of a command was cancelled, the command is cancelled (its remote process
    killed), as a lone submission's would be.
    """
    if job.base is None:  # an explicit script_path: alone
        return (await _run_batch(host, timeout, [job]))[0]
    state = current_pool().registry.get(_BATCHES)
    key: _Key = (host, timeout, job.base)
    loop = asyncio.get_running_loop()
    batch = state.pending.get(key)
    if batch is None:
        batch = state.pending[key] = _Pending()
        batch.task = task = loop.create_task(_flush(state, key, batch))
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)
    fut: asyncio.Future[RunResult] = loop.create_future()
    batch.jobs.append(job)
    batch.waiters.append(fut)
    fut.add_done_callback(batch.abandoned)
    return await fut
