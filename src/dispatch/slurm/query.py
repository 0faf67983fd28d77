"""SLURM queries over the SSH pool: thin async wrappers around the pure parsers.

Every query is read-only, so a query whose connection broke is retried once; ``scancel`` is
not (cancelling is harmless to repeat, but the caller decides). Values that reach a
remote command line are validated (job ids are ints) or passed as ``--opt=value`` argv
items, which ``run`` quotes one by one.
"""


from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Sequence

from ..errors import InvalidValueError
from ..results import RunResult
from ..ssh import run
from . import parse
from .arrays import JobId, JobRef, job_ref, task_in
from .models import (
    JobInfo,
    JobInfoResult,
    JobStatus,
    NodeInfo,
    PartitionInfo,
    QueueResult,
    StatusResult,
)
from .states import is_running, is_terminal
from .together import run_together

__all__ = [
    "status",
    "cancel",
    "job_info",
    "queue",
    "partitions",
    "partition_nodes",
    "node_info",
    "nodes_info",
    "available_gpus",
]

log = logging.getLogger(__name__)

#: Read-only queries are retried this many times when the connection broke.
QUERY_RETRIES = 1
#: Node names per ``scontrol show node`` call in `nodes_info`.
NODES_PER_CALL = 50
#: How long `job_info` waits for slurmdbd to record the end of a job squeue forgot.
SACCT_SETTLE_SECONDS = 20.0

# squeue's answer for a job id it no longer knows (MinJobAge passed).
_UNKNOWN_JOB = re.compile(r"Invalid job id specified", re.IGNORECASE)
# squeue's complaint (with exit status 0) about a --user it does not know.
_INVALID_USER = re.compile(r"error: Invalid user", re.IGNORECASE)
# Node, partition and user names: what SLURM itself allows (no spaces, no shell metachars).
# sacct's complaints when slurmdbd is down or unreachable.
_DBD_DOWN = re.compile(
    r"Problem talking to the database|slurm_persist_conn_open|Connection refused"
)
_NAME = re.compile(r"^[A-Za-z0-9_.\[\]:@+-][A-Za-z0-9_.\[\],:@+-]*$")


def check_name(kind: str, value: str) -> str:
    """Validate a node/partition/user name before it reaches a command line."""
    if not isinstance(value, str) or not _NAME.match(value) or value.startswith("-"):
        raise InvalidValueError(f"invalid SLURM {kind} name {value!r}")
    return value


def _argv(command: str, args: list[str] | tuple[str, ...]) -> list[str]:
    """``[command, *args]``, tolerating arg constants that already start with the command."""
    items = list(args)
    if items and items[0] == command:
        return items
    return [command, *items]


async def query(argv: list[str], host: str, timeout: float | None) -> RunResult:
    """Run a read-only SLURM command (retried once if the connection broke)."""
    return await run(argv, host, timeout=timeout, retries=QUERY_RETRIES)


def _forgotten(result: RunResult) -> bool:
    """True when squeue failed only because it no longer knows the job id(s)."""
    return result.returncode == 1 and bool(_UNKNOWN_JOB.search(result.stderr))


def pick_status(rows: list[JobStatus]) -> JobStatus:
    """One status for a job id with several rows (array elements): a running row first,
    else one not finished (a pending remainder), else the first; so an array looks
    finished only when every element is."""
    return (
        next((r for r in rows if is_running(r.state)), None)
        or next((r for r in rows if not is_terminal(r.state)), None)
        or rows[0]
    )


def status_of(ref: JobId, row: parse.SqueueRow) -> JobStatus | None:
    """The status ``row`` gives for ``ref``, if any.

    A plain id matches the job (every element of an array) and an element's own id
    (``%A``); an element id matches its row, or the pending remainder holding it (then
    reported as that element, as ``squeue --jobs=123_4`` does).
    """
    st = row.status
    if ref.task is None:
        return st if ref.base in row.ids else None
    if st.job_id != ref.base or st.array_task is None:
        return None
    element = str(ref.task)
    if st.array_task == element:
        return st
    if task_in(st.array_task, ref.task):
        return dataclasses.replace(st, array_task=element, raw_id=str(ref))
    return None


def _job_ids(refs: list[JobId]) -> str:
    """The ``--jobs=`` value: each job once (an element is looked up through its job)."""
    return ",".join(str(base) for base in sorted({ref.base for ref in refs}))


async def squeue_jobs(
    job_ids: Sequence[JobRef | JobId], host: str, timeout: float | None = None
) -> tuple[dict[JobId, JobStatus], RunResult]:
    """One ``squeue --jobs=a,b,c`` call -> status by asked id; forgotten jobs are absent.

    ``--states=all`` keeps jobs that just ended (for MinJobAge) with their final state.
    When slurmctld has forgotten every id, the result is returncode 0 with empty stderr.
    """
    jobs, result, _ = await _squeue_jobs([job_ref(j) for j in job_ids], host, timeout)
    return jobs, result


async def _squeue_jobs(
    refs: list[JobId], host: str, timeout: float | None
) -> tuple[dict[JobId, JobStatus], RunResult, bool]:
    """Like `squeue_jobs`, plus whether slurmctld has forgotten all the ids."""
    return squeue_answer(refs, await query(_squeue_argv(refs), host, timeout))


def _squeue_argv(refs: list[JobId]) -> list[str]:
    return _argv("squeue", [*parse.SQUEUE_ARGS, "--states=all", f"--jobs={_job_ids(refs)}"])


def squeue_answer(
    refs: list[JobId], result: RunResult
) -> tuple[dict[JobId, JobStatus], RunResult, bool]:
    """Read `_squeue_argv`'s result: status by asked id, the result, and whether slurmctld
    has forgotten every id (then the result is returncode 0 with empty stderr)."""
    if _forgotten(result):
        # Every id has left squeue: that is an answer, not a failure.
        return {}, RunResult(0, result.stdout, ""), True
    if not result.ok:
        return {}, result, False
    rows = parse.parse_squeue_rows(result.stdout)
    jobs: dict[JobId, JobStatus] = {}
    for ref in refs:
        group = [st for row in rows if (st := status_of(ref, row)) is not None]
        if group:
            jobs[ref] = pick_status(group)
    return jobs, result, False


async def status(job_id: JobRef, host: str, timeout: float | None = None) -> StatusResult:
    """Check the status of a SLURM job.

    Reads squeue; ``job`` is None (and no error) once the job left squeue. A job that
    ended less than MinJobAge ago is shown with its final state. For a job array's id
    the row shown is a running element if any, else an unfinished one; an element id
    (``"123_4"``) gives that element (pending ones included).

    Args:
        job_id: SLURM job id (``123``), or an array element (``"123_4"``).
        host: SSH host alias with SLURM access.
        timeout: Seconds for the SSH call (None: no limit).

    Returns:
        `StatusResult` with the parsed `JobStatus` (or None) and the squeue result.
    """
    ref = job_ref(job_id)
    jobs, result, _ = await _squeue_jobs([ref], host, timeout)
    return StatusResult(jobs.get(ref), result)


async def cancel(job_id: JobRef, host: str, timeout: float | None = None) -> RunResult:
    """Cancel a SLURM job.

    Runs ``scancel --verbose`` once (not retried: the caller decides). scancel exits 0
    even for a job id it does not know; its verbose error line ("Invalid job id
    specified", "already completing or completed") turns the result into returncode 1.
    An element id (``"123_4"``) cancels only that element of the array.

    Args:
        job_id: SLURM job id to cancel (``123``: the whole array), or an array element
            (``"123_4"``).
        host: SSH host alias with SLURM access.
        timeout: Seconds for the SSH call (None: no limit).

    Returns:
        `RunResult` of scancel (its "Terminating job" progress lines dropped).
    """
    res = await run(["scancel", "--verbose", str(job_ref(job_id))], host, timeout=timeout)
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("scancel: Terminating")]
    stderr = "".join(f"{ln}\n" for ln in lines)
    failed = res.ok and any("error:" in ln for ln in lines)
    return RunResult(1 if failed else res.returncode, res.stdout, stderr,
                     may_have_run=res.may_have_run)


def base_job_id(step_id: str) -> str:
    """``"123"`` for ``123``, ``123.batch``, ``123.0``, ``123+1`` (heterogeneous) and ``123_4``."""
    return re.split(r"[._+]", step_id, maxsplit=1)[0]


def steps_of(ref: JobId, rows: list[JobInfo]) -> list[JobInfo]:
    """The sacct rows (job and steps) of ``ref``.

    A job id gets all its rows (every element of an array); an element id gets its own,
    or the pending remainder holding it (reported as that element).
    """
    if ref.task is None:
        return [r for r in rows if base_job_id(r.job_id) == str(ref.base)]
    element = str(ref.task)
    out: list[JobInfo] = []
    for r in rows:
        if r.array_job_id != ref.base or r.array_task is None:
            continue
        if r.array_task == element:
            out.append(r)
        elif "." not in r.job_id and task_in(r.array_task, ref.task):
            out.append(dataclasses.replace(r, job_id=str(ref), array_task=element))
    return out


async def sacct_jobs(
    refs: list[JobId], host: str, timeout: float | None = None
) -> tuple[list[JobInfo], RunResult]:
    """One ``sacct -j a,b,c`` call for every asked job; pick each one's rows with
    `steps_of`."""
    return sacct_answer(await query(_sacct_argv(refs), host, timeout))


def _sacct_argv(refs: list[JobId]) -> list[str]:
    return _argv("sacct", [*parse.SACCT_ARGS, f"--jobs={_job_ids(refs)}"])


def sacct_answer(result: RunResult) -> tuple[list[JobInfo], RunResult]:
    """Read `_sacct_argv`'s result: the parsed rows (none when it failed) and the result."""
    if not result.ok:
        return [], result
    return parse.parse_sacct(result.stdout), result


def main_step(steps: list[JobInfo]) -> JobInfo | None:
    """The job's own row (no step suffix), as `JobInfoResult.main` picks it."""
    return JobInfoResult(steps, RunResult(0, "", "")).main


def is_final(steps: list[JobInfo]) -> bool:
    """True when sacct has recorded a terminal state for the job itself.

    A row without a partition is slurmdbd's placeholder (named "allocation") for a job
    whose step records arrived before its start record: not final yet.
    """
    main = main_step(steps)
    return main is not None and is_terminal(main.state) and bool(main.partition)


def _explain_dbd_down(result: RunResult, host: str) -> RunResult:
    """Say plainly that accounting is unavailable when sacct could not reach slurmdbd."""
    said = result.stderr.strip()
    if not _DBD_DOWN.search(said):
        return result
    log.warning("SLURM accounting (slurmdbd) is unavailable on %s: %s", host, said)
    stderr = (
        f"dispatch: SLURM accounting (slurmdbd) is unavailable on {host}; sacct said: {said}\n"
    )
    return RunResult(result.returncode, result.stdout, stderr, may_have_run=result.may_have_run)


async def job_info(job_id: JobRef, host: str, timeout: float | None = None) -> JobInfoResult:
    """Get detailed info about a SLURM job (including completed jobs).

    Reads sacct, and squeue in the same remote command (one round of `run`). Right after
    a job ends slurmdbd may still have no row, or the row may still say RUNNING: when
    slurmctld still knows the job and says it is over, this retries briefly (up to
    ``SACCT_SETTLE_SECONDS``) until sacct records a final state.
    A job slurmctld has forgotten (or never had) is answered at once. When slurmdbd is
    unreachable, ``ssh_result.stderr`` says that SLURM accounting is unavailable (with
    sacct's own message).

    Args:
        job_id: SLURM job id (``123``: for an array, every element's rows; see
            `JobInfoResult.elements`), or an array element (``"123_4"``).
        host: SSH host alias with SLURM access.
        timeout: Seconds for each SSH call (None: no limit).

    Returns:
        `JobInfoResult` with the job's parsed sacct rows (job and steps) and the sacct
        result.
    """
    ref = job_ref(job_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SACCT_SETTLE_SECONDS
    delay = 0.25
    while True:
        # sacct and squeue asked together: one round trip instead of two in sequence.
        sacct_res, squeue_res = await run_together(
            [_sacct_argv([ref]), _squeue_argv([ref])], host, timeout)
        rows, result = sacct_answer(sacct_res)
        steps = steps_of(ref, rows)
        if not result.ok:
            return JobInfoResult(steps, _explain_dbd_down(result, host))
        if is_final(steps):
            return JobInfoResult(steps, result)
        jobs, sq_result, forgotten = squeue_answer([ref], squeue_res)
        job = jobs.get(ref)
        over = sq_result.ok and not forgotten and (job is None or is_terminal(job.state))
        if not over or loop.time() >= deadline:
            return JobInfoResult(steps, result)
        log.debug("job %s is over but sacct has no final state yet; retrying", ref)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def queue(host: str, user: str | None = None, timeout: float | None = None) -> QueueResult:
    """List jobs in the SLURM queue.

    Every array element is its own row (see `JobStatus.raw_id`, ``array_task``); the
    pending rest of an array is one row (``123_[5-19%8]``).

    A ``user`` SLURM does not know gives no jobs and ``ssh_result.returncode`` 1 with
    squeue's "Invalid user" message (squeue itself exits 0 then).

    Args:
        host: SSH host alias with SLURM access.
        user: Only this user's jobs (default: all users).
        timeout: Seconds for the SSH call (None: no limit).

    Returns:
        `QueueResult` with the parsed `JobStatus` rows and the squeue result.
    """
    args = list(parse.SQUEUE_ARGS)
    if user is not None:
        args.append(f"--user={check_name('user', user)}")
    result = await query(_argv("squeue", args), host, timeout)
    if result.ok and _INVALID_USER.search(result.stderr):
        # squeue exits 0 for a user it does not know; say it failed (stderr names the user).
        result = RunResult(1, result.stdout, result.stderr, may_have_run=result.may_have_run)
    jobs = parse.parse_squeue(result.stdout) if result.ok else []
    return QueueResult(jobs, result)


async def partitions(host: str, timeout: float | None = None) -> list[PartitionInfo]:
    """List all SLURM partitions.

    One sinfo call; the list is empty when the query failed (logged as a warning).

    Args:
        host: SSH host alias with SLURM access.
        timeout: Seconds for the SSH call (None: no limit).

    Returns:
        A `PartitionInfo` per partition.
    """
    result = await query(_argv("sinfo", parse.SINFO_PARTITION_ARGS), host, timeout)
    if not result.ok:
        log.warning("sinfo on %s failed: %s", host, result.stderr.strip())
        return []
    return parse.parse_sinfo_partitions(result.stdout)


async def partition_nodes(partition: str, host: str, timeout: float | None = None) -> list[str]:
    """List all nodes in a SLURM partition.

    Node names (``%N``), not hostnames; empty when the query failed.

    Args:
        partition: Partition name.
        host: SSH host alias with SLURM access.
        timeout: Seconds for the SSH call (None: no limit).

    Returns:
        The node names of the partition.
    """
    args = [*parse.SINFO_NODES_ARGS, f"--partition={check_name('partition', partition)}"]
    result = await query(_argv("sinfo", args), host, timeout)
    if not result.ok:
        log.warning("sinfo on %s failed: %s", host, result.stderr.strip())
        return []
    return parse.parse_partition_nodes(result.stdout)


async def _scontrol_nodes(
    names: list[str], host: str, timeout: float | None
) -> dict[str, NodeInfo]:
    """One ``scontrol show node a,b,c``. Unknown names only add "Node x not found" lines
    (and exit status 1): the nodes that exist are still printed, so they are kept."""
    argv = _argv("scontrol", [*parse.SCONTROL_NODE_ARGS, ",".join(names)])
    result = await query(argv, host, timeout)
    if result.returncode in (-1, 255):
        log.debug("scontrol show node on %s failed: %s", host, result.stderr.strip())
        return {}
    return parse.parse_scontrol_nodes(result.stdout)


async def node_info(nodename: str, host: str, timeout: float | None = None) -> NodeInfo | None:
    """Get detailed info about a SLURM node.

    Args:
        nodename: Name of the node.
        host: SSH host alias with SLURM access.
        timeout: Seconds for the SSH call (None: no limit).

    Returns:
        The node's `NodeInfo` from scontrol, or None when it does not exist (or the
        query failed).
    """
    nodes = await _scontrol_nodes([check_name("node", nodename)], host, timeout)
    return nodes.get(nodename)


async def nodes_info(
    nodenames: list[str], host: str, timeout: float | None = None
) -> dict[str, NodeInfo]:
    """Get info about multiple nodes in parallel.

    Chunks of ``NODES_PER_CALL`` names, one scontrol call each, run concurrently.

    Args:
        nodenames: Node names.
        host: SSH host alias with SLURM access.
        timeout: Seconds for each SSH call (None: no limit).

    Returns:
        Node name -> `NodeInfo`; nodes that could not be looked up are left out.
    """
    names = list(dict.fromkeys(check_name("node", n) for n in nodenames))
    chunks = [names[i : i + NODES_PER_CALL] for i in range(0, len(names), NODES_PER_CALL)]
    found: dict[str, NodeInfo] = {}
    for part in await asyncio.gather(*(_scontrol_nodes(c, host, timeout) for c in chunks)):
        found.update(part)
    wanted = set(names)
    return {name: info for name, info in found.items() if name in wanted}


def _at_least(name: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidValueError(f"{name} must be an int >= {least}, not {value!r}")
    return value


async def available_gpus(
    partition: str,
    host: str,
    gpu_type: str | None = None,
    timeout: float | None = None,
    *,
    min_cpus: int = 1,
    min_mem_mb: int = 1,
) -> list[tuple[str, int]]:
    """Find nodes with available GPUs in a partition.

    Uses ONE sinfo call for all nodes. Nodes that are down, drained or failing do not
    count, nor do nodes whose idle CPUs or unallocated memory are fewer than the job
    needs: a GPU on a node whose CPUs a CPU-only job holds cannot be used.

    Args:
        partition: Partition name.
        host: SSH host alias with SLURM access.
        gpu_type: Only GPUs of this type (e.g. ``"a100"``).
        timeout: Seconds for the SSH call (None: no limit).
        min_cpus: Idle CPUs a node needs for its GPUs to count (the job's CPUs).
        min_mem_mb: Unallocated memory (MB) a node needs for its GPUs to count.

    Returns:
        ``(node, free GPUs)`` tuples, most free first.
    """
    if gpu_type is not None:
        check_name("GPU type", gpu_type)
    _at_least("min_cpus", min_cpus, 0)
    _at_least("min_mem_mb", min_mem_mb, 0)
    args = [*parse.SINFO_GPU_USABLE_ARGS, f"--partition={check_name('partition', partition)}"]
    result = await query(_argv("sinfo", args), host, timeout)
    if not result.ok:
        log.warning("sinfo on %s failed: %s", host, result.stderr.strip())
        return []
    free = parse.parse_available_gpus(result.stdout, gpu_type, min_cpus=min_cpus,
                                      min_mem_mb=min_mem_mb)
    return sorted(free, key=lambda item: (-item[1], item[0]))
