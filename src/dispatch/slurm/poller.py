"""`wait` and `wait_until_running`: thin consumers of the shared poller (`.hub`).

Each one subscribes for its job (or array, or element) on the poller of its host in the
running pool, exactly as `watch` does, and consumes the stream: every `wait`, `watch` and
`follow` on a host share one squeue call per interval. `wait` ends when the job (every
element of an array) is over and the poller has settled its final sacct rows (one sacct
call per tick for every wait, retried briefly while slurmdbd catches up; ``scontrol show
job`` without accounting; squeue's last word when sacct never records it). A job that ends
other than COMPLETED and was resubmitted with the same dispatch token is
followed to its successor: `wait` returns the last job's result. Cancelling a waiting
task just removes its subscriber.

On timeout, `wait` returns the last state the poller saw (built from squeue, so
``exit_code`` and ``max_rss`` are empty) with ``ssh_result.returncode == -1`` and a
"timed out" stderr; `wait_until_running` returns ``(None, StatusResult)`` likewise.
"""


from __future__ import annotations

import asyncio

from ..errors import InvalidValueError
from ..results import RunResult
from .arrays import JobId, JobRef, job_ref
from .events import Subscriber
from .hub import (
    FIRST_POLL_SECONDS,
    MIN_POLL_SECONDS,
    POLL_CALL_TIMEOUT,
    POLLERS,
    SETTLE_POLL_SECONDS,
    SETTLE_SECONDS,
    UNKNOWN_JOB_SECONDS,
    PollerStats,
    check_interval,
    poller_stats,
    subscribe,
)
from .models import JobInfoResult, JobStatus, StatusResult
from .nodelist import first_node_from_nodelist
from .settle import info_from_status
from .states import is_running, is_terminal

__all__ = [
    "wait",
    "wait_until_running",
    "info_from_status",
    "PollerStats",
    "poller_stats",
    "subscribe",
    "check_interval",
    "POLLERS",
    "FIRST_POLL_SECONDS",
    "SETTLE_SECONDS",
    "SETTLE_POLL_SECONDS",
    "UNKNOWN_JOB_SECONDS",
    "MIN_POLL_SECONDS",
    "POLL_CALL_TIMEOUT",
]


def _check_timeout(timeout: float | None) -> None:
    """None or a number >= 0 (0: do not wait, answer "timed out" at once)."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise InvalidValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}")


def _subscriber(
    job_id: JobRef, host: str, poll_interval: float, timeout: float | None, *, final: bool
) -> tuple[JobId, Subscriber]:
    """Check the arguments; a subscriber for the job that follows resubmissions."""
    ref = job_ref(job_id)
    interval = check_interval(poll_interval)
    _check_timeout(timeout)
    sub = Subscriber(host, frozenset({ref}), interval, asyncio.get_running_loop().time(),
                     successors=True, wants_final=final)
    return ref, sub


def _drain(sub: Subscriber) -> bool:
    """Take the events queued so far (their effect is in ``sub``); True once the stream
    ended; raise what ended it with an error."""
    ended = False
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        if isinstance(item, BaseException):
            raise item
        ended = ended or item is None
    return ended


def _timed_out(job_id: JobId, timeout: float | None, job: JobStatus | None) -> RunResult:
    state = job.state if job is not None else "unknown"
    return RunResult(-1, "", f"timed out after {timeout}s waiting for job {job_id} (state {state})")


async def wait(
    job_id: JobRef, host: str, poll_interval: float = 10.0, timeout: float | None = None
) -> JobInfoResult:
    """Wait for a SLURM job to complete.

    Jobs on the same host share one squeue poll per interval; the final state comes from
    sacct (or from squeue when accounting has nothing). On timeout, returns the last
    state seen with ``ssh_result.returncode`` -1 and a "timed out" message in
    ``ssh_result.stderr``.

    A job id that squeue never listed and sacct does not know (a wrong id, or one long
    gone) is answered after ``UNKNOWN_JOB_SECONDS`` with no steps and a stderr saying so;
    a job array's id waits until every element has ended, and the result lists each
    element's state and exit code (`JobInfoResult.elements`; `JobInfoResult.main` sums
    them up). An element id (``"123_4"``) waits for that element only. A job that ends
    other than COMPLETED while a later job with the same dispatch token
    exists (dispatch's bootstrap resubmitted it) is followed: the result is the last
    job's of that chain. An element is followed to that element of a later array; a
    whole array follows each such element, and its result lists each element's last job.

    Args:
        job_id: SLURM job id (``123``), or an array element (``"123_4"``).
        host: SSH host alias with SLURM access.
        poll_interval: Seconds between status checks (> 0; values below
            ``MIN_POLL_SECONDS`` are raised to it).
        timeout: Total seconds to wait (None: wait forever; 0: answer "timed out" at
            once; negative: InvalidValueError).

    Returns:
        `JobInfoResult` with the job's final state.
    """
    ref, sub = _subscriber(job_id, host, poll_interval, timeout, final=True)
    poller = subscribe(sub)
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            while True:
                item = await sub.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    break
    except TimeoutError:
        if not scope.expired():
            raise
        job = sub.statuses.get(sub.head(ref))
        steps = [info_from_status(job)] if job is not None else []
        return JobInfoResult(steps, _timed_out(ref, timeout, job))
    finally:
        poller.unsubscribe(sub)
    if sub.final is None:  # the stream ended without an answer: a bug, say so
        raise RuntimeError(f"the SLURM poller on {host} ended without a result for job {ref}")
    return sub.final


async def wait_until_running(
    job_id: JobRef, host: str, poll_interval: float = 10.0, timeout: float | None = None
) -> tuple[str | None, StatusResult]:
    """Wait until a job is running and return the first allocated hostname.

    The node is None when the job ended (or left squeue) without being seen running, or
    on timeout (then ``ssh_result.returncode`` is -1). A job resubmitted with its
    dispatch token after it ended is followed, as `wait` does.

    Args:
        job_id: SLURM job id (for an array: until any element runs), or an array
            element (``"123_4"``).
        host: SSH host alias with SLURM access.
        poll_interval: Seconds between status checks (as for `wait`).
        timeout: Total seconds to wait (as for `wait`).

    Returns:
        ``(first node or None, last StatusResult)``.
    """
    ref, sub = _subscriber(job_id, host, poll_interval, timeout, final=False)
    poller = subscribe(sub)
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            while True:
                await sub.polled.wait()
                sub.polled.clear()
                ended = _drain(sub)
                current = sub.head(ref)
                result = sub.last_result
                if current not in sub.statuses or result is None:
                    if ended:  # over before any squeue answered (cannot happen normally)
                        return None, StatusResult(None, RunResult(0, "", ""))
                    continue  # not asked about yet (a successor just found)
                job = sub.statuses[current]
                if job is not None and is_running(job.state):
                    return first_node_from_nodelist(job.nodelist), StatusResult(job, result)
                if job is None or is_terminal(job.state):
                    # Never seen running (or already over): there is no node to go to.
                    return None, StatusResult(job, result)
    except TimeoutError:
        if not scope.expired():
            raise
        job = sub.statuses.get(sub.head(ref))
        return None, StatusResult(job, _timed_out(ref, timeout, job))
    finally:
        poller.unsubscribe(sub)
