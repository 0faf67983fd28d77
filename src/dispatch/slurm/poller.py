"""One shared squeue poller per (pool, host): many ``wait``s cost one squeue call per interval.

Every `wait` / `wait_until_running` registers a waiter with the poller of its
host on the running event loop. The poller asks squeue about all waited job ids in one
call (``squeue --jobs=1,2,3``) every ``min(poll_interval of its waiters)`` seconds; jobs that
left squeue (or show a terminal state there) get their final state from one batched
``sacct --jobs=...`` call, retried briefly while slurmdbd catches up. The poller task ends
as soon as it has no waiters; cancelling a waiting task just removes its waiter.

On timeout, `wait` returns the last state the poller saw (built from squeue, so
``exit_code`` and ``max_rss`` are empty) with ``ssh_result.returncode == -1`` and a
"timed out" stderr; `wait_until_running` returns ``(None, StatusResult)`` likewise.
"""


from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from dataclasses import dataclass, field

from ..errors import InvalidValueError
from ..results import RunResult
from ..ssh.pool import current_pool
from .models import JobInfo, JobInfoResult, JobStatus, StatusResult
from .nodelist import first_node_from_nodelist
from .query import check_job_id, is_final, sacct_jobs, squeue_jobs
from .states import is_running, is_terminal

__all__ = ["wait", "wait_until_running"]

log = logging.getLogger(__name__)

#: A newly waited job id is polled within this many seconds (or its poll_interval if smaller).
FIRST_POLL_SECONDS = 1.0
#: How long the poller re-asks sacct for a final state after the job left squeue.
SETTLE_SECONDS = 30.0
#: Re-ask sacct this often while it catches up (or the poll interval if smaller).
SETTLE_POLL_SECONDS = 1.0
#: For a job id squeue never listed (and sacct does not know), the final answer comes
#: after this many seconds instead of SETTLE_SECONDS: it was never submitted (or is long
#: gone from both squeue and accounting).
UNKNOWN_JOB_SECONDS = 5.0
#: poll_interval values below this are raised to it (so a tiny interval cannot spin).
MIN_POLL_SECONDS = 0.2
#: SSH timeout of each squeue / sacct call the poller makes.
POLL_CALL_TIMEOUT = 60.0
#: Registrations arriving within this window share the first poll.
_COALESCE_SECONDS = 0.02


@dataclass
class PollerStats:
    """Counters per host, for tests and benchmarks (cumulative for the process)."""

    squeue_calls: int = 0
    sacct_calls: int = 0
    pollers_started: int = 0
    active_pollers: int = 0


_STATS: dict[str, PollerStats] = {}


def poller_stats(host: str) -> PollerStats:
    """The (live, mutable) counters of the pollers of ``host``."""
    return _STATS.setdefault(host, PollerStats())


@dataclass(eq=False)
class _Waiter:
    job_id: int
    interval: float
    want_running: bool
    future: asyncio.Future[object] = field(repr=False)


_Key = tuple[int, str]
_REGISTRY: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Key, _Poller]] = (
    weakref.WeakKeyDictionary()
)


class _Poller:
    """The poller of one host on one event loop; its task lives while it has waiters."""

    def __init__(self, host: str, key: _Key, registry: dict[_Key, _Poller]) -> None:
        self.host = host
        self.key = key
        self.registry = registry
        self.stats = poller_stats(host)
        self.waiters: dict[int, set[_Waiter]] = {}
        self.last_status: dict[int, tuple[JobStatus | None, RunResult]] = {}
        self.settling: dict[int, float] = {}
        self.seen: set[int] = set()  # job ids squeue listed at least once
        self.urgent = False
        self.wake = asyncio.Event()
        self.last_poll = float("-inf")
        self.task: asyncio.Task[None] | None = None

    # -- waiters -------------------------------------------------------------------------
    def add(self, waiter: _Waiter) -> None:
        new_id = waiter.job_id not in self.waiters
        self.waiters.setdefault(waiter.job_id, set()).add(waiter)
        if new_id:
            self.urgent = True
        self.wake.set()
        if self.task is None:
            self.stats.pollers_started += 1
            self.stats.active_pollers += 1
            self.task = asyncio.get_running_loop().create_task(
                self._main(), name=f"dispatch-slurm-poller[{self.host}]"
            )

    def remove(self, waiter: _Waiter) -> None:
        group = self.waiters.get(waiter.job_id)
        if group is not None:
            group.discard(waiter)
            if not group:
                del self.waiters[waiter.job_id]
                self.settling.pop(waiter.job_id, None)
                self.last_status.pop(waiter.job_id, None)
                self.seen.discard(waiter.job_id)
        if not waiter.future.done():
            waiter.future.cancel()
        self.wake.set()

    def _resolve(self, job_id: int, *, running: bool, value: object) -> None:
        for waiter in list(self.waiters.get(job_id, ())):
            if waiter.want_running == running and not waiter.future.done():
                waiter.future.set_result(value)

    def _wants(self, job_id: int, *, running: bool) -> bool:
        return any(
            w.want_running == running and not w.future.done()
            for w in self.waiters.get(job_id, ())
        )

    # -- the task ------------------------------------------------------------------------
    async def _main(self) -> None:
        try:
            while await self._sleep_until_due():
                await self._poll_once()
        except asyncio.CancelledError:
            self._fail(None)
            raise
        except Exception as exc:  # a bug must not leave waiters hanging forever
            log.exception("SLURM poller for %s failed", self.host)
            self._fail(exc)
        finally:
            self._stop()

    def _stop(self) -> None:
        self.task = None
        self.stats.active_pollers -= 1
        if self.registry.get(self.key) is self:
            del self.registry[self.key]

    def _fail(self, exc: BaseException | None) -> None:
        for group in self.waiters.values():
            for waiter in group:
                if waiter.future.done():
                    continue
                if exc is None:
                    waiter.future.cancel()
                else:
                    waiter.future.set_exception(exc)

    def _interval(self) -> float:
        return min(w.interval for group in self.waiters.values() for w in group)

    async def _sleep_until_due(self) -> bool:
        """Sleep until the next poll is due; False (and the task ends) when no one waits."""
        loop = asyncio.get_running_loop()
        while True:
            if not self.waiters:
                return False
            interval = self._interval()
            due = self.last_poll + interval
            if self.urgent:
                due = min(due, self.last_poll + min(interval, FIRST_POLL_SECONDS))
            if self.settling:
                due = min(due, self.last_poll + min(interval, SETTLE_POLL_SECONDS))
            now = loop.time()
            if now >= due:
                break
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), due - now)
        if self.urgent:
            await asyncio.sleep(_COALESCE_SECONDS)  # let concurrent registrations join
            self.urgent = False
        return bool(self.waiters)

    async def _poll_once(self) -> None:
        loop = asyncio.get_running_loop()
        self.last_poll = loop.time()
        active = sorted(j for j in self.waiters if j not in self.settling)
        if active:
            self.stats.squeue_calls += 1
            jobs, result = await squeue_jobs(active, self.host, POLL_CALL_TIMEOUT)
            if result.ok:
                self._on_squeue(active, jobs, result)
            else:
                log.debug("squeue on %s failed (will retry): %s", self.host, result.stderr.strip())
        finals = sorted(j for j in self.settling if j in self.waiters)
        if finals:
            self.stats.sacct_calls += 1
            grouped, result = await sacct_jobs(finals, self.host, POLL_CALL_TIMEOUT)
            now = loop.time()
            for job_id in finals:
                deadline = self.settling.get(job_id)
                if deadline is None:
                    continue  # its last waiter left while sacct ran
                steps = grouped.get(str(job_id), [])
                if result.ok and is_final(steps):
                    info = JobInfoResult(steps, result)
                elif now >= deadline:
                    info = self._fallback_info(job_id, steps, result)
                else:
                    continue
                del self.settling[job_id]
                self._resolve(job_id, running=False, value=info)

    def _on_squeue(self, ids: list[int], by_id: dict[int, JobStatus], result: RunResult) -> None:
        now = asyncio.get_running_loop().time()
        for job_id in ids:
            if job_id not in self.waiters:
                continue
            job = by_id.get(job_id)
            self.last_status[job_id] = (job, result)
            if job is not None:
                self.seen.add(job_id)
            if job is not None and is_running(job.state):
                host = first_node_from_nodelist(job.nodelist)
                self._resolve(job_id, running=True, value=(host, StatusResult(job, result)))
            elif job is None or is_terminal(job.state):
                # Never seen running (or already over): there is no node to go to.
                self._resolve(job_id, running=True, value=(None, StatusResult(job, result)))
                if self._wants(job_id, running=False):
                    grace = SETTLE_SECONDS if job_id in self.seen else UNKNOWN_JOB_SECONDS
                    self.settling[job_id] = now + grace

    def _fallback_info(self, job_id: int, steps: list[JobInfo], result: RunResult) -> JobInfoResult:
        """sacct never recorded a final state: use what squeue last said, if it was final."""
        job, sq_result = self.last_status.get(job_id, (None, result))
        if job is not None and is_terminal(job.state):
            log.warning(
                "sacct has no final state for job %s on %s; using squeue's", job_id, self.host
            )
            return JobInfoResult([info_from_status(job)], sq_result)
        log.warning("sacct has no final state for job %s on %s", job_id, self.host)
        if steps or not result.ok:
            return JobInfoResult(steps, result)
        if job_id in self.seen:
            why = "it left squeue but sacct has no record of it (is accounting enabled?)"
        else:
            why = "neither squeue nor sacct knows it (wrong job id, or long gone)"
        stderr = f"dispatch: no final state for job {job_id} on {self.host}: {why}\n"
        return JobInfoResult(
            [], RunResult(result.returncode, result.stdout, result.stderr + stderr)
        )


def info_from_status(job: JobStatus) -> JobInfo:
    """A JobInfo built from a squeue row (no exit code or memory: squeue has neither)."""
    return JobInfo(
        job_id=str(job.job_id),
        name=job.name,
        partition=job.partition,
        state=job.state,
        exit_code="",
        elapsed=job.time_elapsed,
        max_rss="",
        nodelist=job.nodelist,
    )


def _poller(host: str) -> _Poller:
    loop = asyncio.get_running_loop()
    registry = _REGISTRY.setdefault(loop, {})
    key = (id(current_pool()), host)
    poller = registry.get(key)
    if poller is None:
        poller = registry[key] = _Poller(host, key, registry)
    return poller


def _check_interval(poll_interval: float) -> float:
    """A usable poll interval: > 0 (raised to MIN_POLL_SECONDS), else InvalidValueError."""
    if (
        isinstance(poll_interval, bool)
        or not isinstance(poll_interval, (int, float))
        or not poll_interval > 0
    ):
        raise InvalidValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
    return max(float(poll_interval), MIN_POLL_SECONDS)


def _check_timeout(timeout: float | None) -> None:
    """None or a number >= 0 (0: do not wait, answer "timed out" at once)."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise InvalidValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}")


async def _await_waiter(
    job_id: int, host: str, poll_interval: float, timeout: float | None, want_running: bool
) -> tuple[object | None, JobStatus | None]:
    """Register a waiter; return (its value or None on timeout, the last squeue row seen)."""
    check_job_id(job_id)
    interval = _check_interval(poll_interval)
    _check_timeout(timeout)
    poller = _poller(host)
    waiter = _Waiter(job_id, interval, want_running, asyncio.get_running_loop().create_future())
    poller.add(waiter)
    try:
        done, _ = await asyncio.wait({waiter.future}, timeout=timeout)
        last = poller.last_status.get(job_id, (None, None))[0]
        return (waiter.future.result() if done else None), last
    finally:
        poller.remove(waiter)


def _timed_out(job_id: int, timeout: float | None, job: JobStatus | None) -> RunResult:
    state = job.state if job is not None else "unknown"
    return RunResult(-1, "", f"timed out after {timeout}s waiting for job {job_id} (state {state})")


async def wait(
    job_id: int, host: str, poll_interval: float = 10.0, timeout: float | None = None
) -> JobInfoResult:
    """Wait for a SLURM job to complete.

    Jobs on the same host share one squeue poll per interval; the final state comes from
    sacct (or from squeue when accounting has nothing). On timeout, returns the last
    state seen with ``ssh_result.returncode`` -1 and a "timed out" message in
    ``ssh_result.stderr``.

    A job id that squeue never listed and sacct does not know (a wrong id, or one long
    gone) is answered after ``UNKNOWN_JOB_SECONDS`` with no steps and a stderr saying so;
    a job array's base id waits for every element (see `JobInfoResult.main`).

    Args:
        job_id: SLURM job id.
        host: SSH host alias with SLURM access.
        poll_interval: Seconds between status checks (> 0; values below
            ``MIN_POLL_SECONDS`` are raised to it).
        timeout: Total seconds to wait (None: wait forever; 0: answer "timed out" at
            once; negative: InvalidValueError).

    Returns:
        `JobInfoResult` with the job's final state.
    """
    value, job = await _await_waiter(job_id, host, poll_interval, timeout, False)
    if isinstance(value, JobInfoResult):
        return value
    steps = [info_from_status(job)] if job is not None else []
    return JobInfoResult(steps, _timed_out(job_id, timeout, job))


async def wait_until_running(
    job_id: int, host: str, poll_interval: float = 10.0, timeout: float | None = None
) -> tuple[str | None, StatusResult]:
    """Wait until a job is running and return the first allocated hostname.

    The node is None when the job ended (or left squeue) without being seen running, or
    on timeout (then ``ssh_result.returncode`` is -1).

    Args:
        job_id: SLURM job id.
        host: SSH host alias with SLURM access.
        poll_interval: Seconds between status checks (as for `wait`).
        timeout: Total seconds to wait (as for `wait`).

    Returns:
        ``(first node or None, last StatusResult)``.
    """
    value, job = await _await_waiter(job_id, host, poll_interval, timeout, True)
    if isinstance(value, tuple):
        node, st = value
        assert isinstance(st, StatusResult)
        return (node if isinstance(node, str) else None), st
    return None, StatusResult(job, _timed_out(job_id, timeout, job))
