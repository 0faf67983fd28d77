"""One event stream per cluster: `watch` yields the job state changes the shared poller sees.

Every `watch` and every `wait` on a host in a pool share that host's poller (`.hub`): one
squeue per tick for all of them (``squeue --me`` when a watch wants all jobs), sacct only
for jobs that left the queue between two ticks, ``scontrol show job`` when the cluster
keeps no accounting. `wait` is itself a consumer of the same stream (`.poller`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

from ..errors import InvalidValueError
from .arrays import JobRef, job_ref
from .events import JobEvent, Subscriber
from .hub import check_interval, subscribe

__all__ = ["watch", "JobEvent"]


async def watch(
    host: str, jobs: Sequence[JobRef] | None = None, *, poll_interval: float = 10.0
) -> AsyncGenerator[JobEvent, None]:
    """Yield state changes of SLURM jobs on ``host`` as they happen.

    Each job (or array element) first appears with ``old_state`` None and its current
    state, then once per change of state, reason or restart count. A job that left the
    queue between two polls gets its final state and exit code from sacct. With ``jobs``
    the stream ends once every one of them is over (a job neither squeue nor sacct knows
    ends with one ``UNKNOWN`` event); without, it watches every job of the SSH user until
    the caller stops iterating.

    A listed job that ends other than COMPLETED while a later job with the same
    dispatch token exists (dispatch's bootstrap resubmitted it where the site
    will not requeue) is followed: after the old job's final event come the successor's,
    with ``resubmitted_from`` set to the old id and ``restarts`` counting on from the old
    job's (``restarts + 1``); the stream ends when the last job of the chain is over. An
    element (listed, or of a listed array) is followed to that element of a later array.
    Jobs whose comment is not a dispatch token are never followed.

    Args:
        host: SSH host alias with SLURM access.
        jobs: Job ids (``123``, or elements ``"123_4"``) to watch; None: all your jobs.
        poll_interval: Seconds between polls (> 0; shared: the host is polled at the
            smallest interval any watch or wait asked for).

    Returns:
        An async iterator (``async for event in watch(...)``); with ``jobs`` it ends once
        all of them are over, without it when the caller stops iterating.

    Yields:
        `JobEvent` per change, in the order the poller saw them.

    Raises:
        InvalidValueError: ``jobs`` is empty, a bare id instead of a list, or names a bad
            id; or ``poll_interval`` is not > 0.
        RuntimeError: The pool was closed while watching.
    """
    refs = None if jobs is None else frozenset(job_ref(j) for j in _listed(jobs))
    if refs is not None and not refs:
        raise InvalidValueError("watch: jobs must name at least one job (or be None)")
    interval = check_interval(poll_interval)
    sub = Subscriber(host, refs, interval, asyncio.get_running_loop().time(),
                     successors=refs is not None)
    poller = subscribe(sub)
    try:
        while True:
            item = await sub.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        poller.unsubscribe(sub)


def _listed(jobs: Sequence[JobRef]) -> Sequence[JobRef]:
    if isinstance(jobs, (str, int)):
        raise InvalidValueError(f"watch: jobs must be a list of job ids, got {jobs!r}")
    return jobs
