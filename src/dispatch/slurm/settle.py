"""How a waited job's final answer is judged, and how a resubmitted successor is found.

Pure (no I/O): the shared poller (`.hub`) feeds these its sacct / squeue answers.

- Final rows: sacct has the final state of the job and, for an array, of every element
  squeue listed; when sacct never gets there, what squeue last said (`fallback_info`).
- Successors: where a site will not requeue, dispatch's bootstrap submits the job's script
  again with the same token (``--comment=dispatch:<token>/<n>``, `.tokens`) while the old
  job ends (an array element resubmits only itself: ``OLD_3`` goes on as ``NEW_3``).
  `successor` picks that job from ``squeue --format=%F|%K|%k`` output (`successor_argv`).
"""

from __future__ import annotations

import logging

from ..results import RunResult
from . import parse, tokens
from .arrays import JobId, task_in
from .models import JobInfo, JobInfoResult, JobStatus
from .query import check_name, is_final
from .states import is_terminal

__all__ = [
    "info_from_status",
    "all_final",
    "fallback_info",
    "is_dispatch_token",
    "successor",
    "successor_argv",
]

log = logging.getLogger(__name__)

def info_from_status(job: JobStatus) -> JobInfo:
    """A JobInfo built from a squeue row (no exit code or memory: squeue has neither)."""
    return JobInfo(
        job_id=job.raw_id if job.array_job_id is not None else str(job.job_id),
        name=job.name,
        partition=job.partition,
        state=job.state,
        exit_code="",
        elapsed=job.time_elapsed,
        max_rss="",
        nodelist=job.nodelist,
    )


def all_final(steps: list[JobInfo], elements: set[str] | None) -> bool:
    """sacct has the final state of the job and, for an array, of every element squeue
    listed (slurmdbd records elements one by one: a partial answer is not final)."""
    if not is_final(steps):
        return False
    for task in elements or ():
        own = [r for r in steps if r.array_task == task and "." not in r.job_id]
        if not is_final(own):
            return False
    return True


def fallback_info(
    ref: JobId,
    host: str,
    steps: list[JobInfo],
    result: RunResult,
    last: tuple[JobStatus | None, RunResult | None],
    seen: bool,
) -> JobInfoResult:
    """sacct never recorded a final state: use what squeue last said, if it was final;
    else sacct's partial rows, or no rows and a stderr line saying why."""
    job, sq_result = last
    if job is not None and sq_result is not None and is_terminal(job.state):
        log.warning("sacct has no final state for job %s on %s; using squeue's", ref, host)
        return JobInfoResult([info_from_status(job)], sq_result)
    log.warning("sacct has no final state for job %s on %s", ref, host)
    if steps or not result.ok:
        return JobInfoResult(steps, result)
    if seen:
        why = "it left squeue but sacct has no record of it (is accounting enabled?)"
    else:
        why = "neither squeue nor sacct knows it (wrong job id, or long gone)"
    stderr = f"dispatch: no final state for job {ref} on {host}: {why}\n"
    return JobInfoResult([], RunResult(result.returncode, result.stdout, result.stderr + stderr))


def is_dispatch_token(comment: str) -> bool:
    """True when ``comment`` is a dispatch token (`.tokens`): nothing else is followed."""
    return tokens.parse_comment(comment) is not None


def successor_argv(user: str) -> list[str]:
    """``squeue`` listing ``user``'s jobs (finished ones too): array id, index, comment."""
    return [*parse.SQUEUE_SUCCESSOR_ARGS, "--states=all", f"--user={check_name('user', user)}"]


def successor(old: JobId, squeue_successors: str) -> JobId | None:
    """The job resubmitted in place of ``old``: the first later job whose comment carries
    ``old``'s dispatch token (never for any other comment).

    A plain job is continued by a later plain job; an array element ``OLD_3`` by element 3
    of a later array (dispatch resubmits an element as a one-element array, so several
    later arrays of one token may each carry on a different element of ``OLD``).

    Args:
        old: The job (or array element) that ended.
        squeue_successors: `successor_argv` output (``array id|index|comment`` lines).

    Returns:
        The successor (an element for an element), or None (no token, ``old`` not
        listed, or no later job for it).
    """
    rows = parse.parse_squeue_successors(squeue_successors)
    mine = [(task, c.strip()) for job, task, c in rows if job == old.base]
    own = [c for task, c in mine
           if old.task is None or (task is not None and task_in(task, old.task))]
    comments = own or [c for _, c in mine]
    token = tokens.parse_comment(comments[0]) if comments else None
    if token is None:
        return None
    later = sorted(
        job for job, task, c in rows
        if job > old.base and (t := tokens.parse_comment(c)) and t[0] == token[0] and (
            task is None if old.task is None
            else task is not None and task_in(task, old.task)
        )
    )
    return JobId(later[0], old.task) if later else None
