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
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..errors import InvalidValueError
from ..results import RunResult
from ..ssh import PoolKey, current_pool, run
from . import events
from .arrays import JobId, JobRef, job_ref
from .events import Subscriber, WatchRow
from .models import JobInfo, JobInfoResult, JobStatus, StatusResult
from .nodelist import first_node_from_nodelist
from .query import is_final, main_step, pick_status, sacct_jobs, status_of, steps_of
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
    """Counters per host, for tests and benchmarks (cumulative for the pool)."""

    squeue_calls: int = 0
    sacct_calls: int = 0
    scontrol_calls: int = 0
    pollers_started: int = 0
    active_pollers: int = 0


@dataclass
class _Pollers:
    """One pool's pollers (one per host while it has waiters) and their counters."""

    by_host: dict[str, _Poller] = field(default_factory=dict)
    stats: dict[str, PollerStats] = field(default_factory=dict)

    def stats_of(self, host: str) -> PollerStats:
        return self.stats.setdefault(host, PollerStats())


async def _stop_pollers(pollers: _Pollers) -> None:
    """Close hook: fail the pool's waiters with a clear error, cancel the pollers, wait."""
    loop = asyncio.get_running_loop()
    mine: list[asyncio.Task[None]] = []
    for poller in pollers.by_host.values():
        task = poller.task
        if task is None:
            continue
        if task.get_loop() is not loop:  # closed from another loop: ask the task's own
            with contextlib.suppress(RuntimeError):
                task.get_loop().call_soon_threadsafe(task.cancel)
            continue
        poller.fail(RuntimeError(
            f"the dispatch Pool was closed while waiting for SLURM jobs on {poller.host}"
        ))
        task.cancel()
        mine.append(task)
    pollers.by_host.clear()
    if mine:
        await asyncio.gather(*mine, return_exceptions=True)


#: The pollers of a pool: state that lives and dies with the pool.
POLLERS: PoolKey[_Pollers] = PoolKey("slurm.pollers", _Pollers, _stop_pollers)


def poller_stats(host: str) -> PollerStats:
    """The (live, mutable) counters of the pollers of ``host`` in the current pool.

    Call it from a coroutine (it uses `current_pool`).
    """
    return current_pool().registry.get(POLLERS).stats_of(host)


@dataclass(eq=False)
class _Waiter:
    job_id: JobId
    interval: float
    want_running: bool
    future: asyncio.Future[object] = field(repr=False)


class _Poller:
    """The poller of one host in one pool; its task lives while it has waiters."""

    def __init__(self, host: str, pollers: _Pollers) -> None:
        self.host = host
        self.pollers = pollers
        self.stats = pollers.stats_of(host)
        self.waiters: dict[JobId, set[_Waiter]] = {}
        self.last_status: dict[JobId, tuple[JobStatus | None, RunResult]] = {}
        self.settling: dict[JobId, float] = {}
        self.seen: set[JobId] = set()  # job ids squeue listed at least once
        # whole-array waits: the element indexes squeue listed (sacct must know each)
        self.elements: dict[JobId, set[str]] = {}
        self.urgent = False
        self.wake = asyncio.Event()
        self.last_poll = float("-inf")
        self.task: asyncio.Task[None] | None = None
        self.subscribers: set[Subscriber] = set()
        # raw id -> deadline: jobs that left squeue unfinished; sacct tells how they ended
        self.departed: dict[str, float] = {}

    # -- watchers (see .watch) -----------------------------------------------------------
    def subscribe(self, sub: Subscriber) -> None:
        """Add a watcher: it is polled from the next tick on (within FIRST_POLL_SECONDS)."""
        self.subscribers.add(sub)
        self.urgent = True
        self.wake.set()
        self._ensure_task()

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        self.wake.set()

    def _ensure_task(self) -> None:
        if self.task is None:
            self.stats.pollers_started += 1
            self.stats.active_pollers += 1
            self.task = asyncio.get_running_loop().create_task(
                self._main(), name=f"dispatch-slurm-poller[{self.host}]"
            )

    # -- waiters -------------------------------------------------------------------------
    def add(self, waiter: _Waiter) -> None:
        new_id = waiter.job_id not in self.waiters
        self.waiters.setdefault(waiter.job_id, set()).add(waiter)
        if new_id:
            self.urgent = True
        self.wake.set()
        self._ensure_task()

    def remove(self, waiter: _Waiter) -> None:
        group = self.waiters.get(waiter.job_id)
        if group is not None:
            group.discard(waiter)
            if not group:
                del self.waiters[waiter.job_id]
                self.settling.pop(waiter.job_id, None)
                self.last_status.pop(waiter.job_id, None)
                self.seen.discard(waiter.job_id)
                self.elements.pop(waiter.job_id, None)
        if not waiter.future.done():
            waiter.future.cancel()
        self.wake.set()

    def _resolve(self, job_id: JobId, *, running: bool, value: object) -> None:
        for waiter in list(self.waiters.get(job_id, ())):
            if waiter.want_running == running and not waiter.future.done():
                waiter.future.set_result(value)

    def _wants(self, job_id: JobId, *, running: bool) -> bool:
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
            self.fail(None)
            raise
        except Exception as exc:  # a bug must not leave waiters hanging forever
            log.exception("SLURM poller for %s failed", self.host)
            self.fail(exc)
        finally:
            self._stop()

    def _stop(self) -> None:
        self.task = None
        self.stats.active_pollers -= 1
        if self.pollers.by_host.get(self.host) is self:
            del self.pollers.by_host[self.host]

    def fail(self, exc: BaseException | None) -> None:
        """End every waiter still waiting: cancelled (None) or with ``exc``."""
        for group in self.waiters.values():
            for waiter in group:
                if waiter.future.done():
                    continue
                if exc is None:
                    waiter.future.cancel()
                else:
                    waiter.future.set_exception(exc)
        for sub in self.subscribers:
            sub.queue.put_nowait(exc if exc is not None else asyncio.CancelledError())

    def _interval(self) -> float:
        return min(
            [w.interval for group in self.waiters.values() for w in group]
            + [s.interval for s in self.subscribers]
        )

    async def _sleep_until_due(self) -> bool:
        """Sleep until the next poll is due; False (and the task ends) when no one waits."""
        loop = asyncio.get_running_loop()
        while True:
            if not self.waiters and not self.subscribers:
                return False
            interval = self._interval()
            due = self.last_poll + interval
            if self.urgent:
                due = min(due, self.last_poll + min(interval, FIRST_POLL_SECONDS))
            if self.settling or self.departed:
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
        return bool(self.waiters or self.subscribers)

    async def _poll_once(self) -> None:
        loop = asyncio.get_running_loop()
        self.last_poll = loop.time()
        active = [j for j in self.waiters if j not in self.settling]
        watched = {ref for sub in self.subscribers for ref in sub.open_refs()}
        want_all = any(sub.jobs is None for sub in self.subscribers)
        if active or watched or want_all:
            rows, result = await self._squeue(sorted(set(active) | watched, key=str), want_all)
            if result.ok:
                self._on_squeue(active, self._statuses(active, rows), result)
                self._publish(rows)
            else:
                log.debug("squeue on %s failed (will retry): %s", self.host, result.stderr.strip())
        finals = [j for j in self.settling if j in self.waiters]
        gone = self._gone_refs()
        if finals or gone:
            self.stats.sacct_calls += 1
            infos, result = await sacct_jobs(finals + gone, self.host, POLL_CALL_TIMEOUT)
            if not result.ok and events.accounting_disabled(result.stderr):
                infos, result = await self._scontrol_infos(finals + gone)
            self._finish_departed(infos, result)
            now = loop.time()
            for job_id in finals:
                deadline = self.settling.get(job_id)
                if deadline is None:
                    continue  # its last waiter left while sacct ran
                steps = steps_of(job_id, infos)
                if result.ok and self._all_final(job_id, steps):
                    info = JobInfoResult(steps, result)
                elif now >= deadline:
                    info = self._fallback_info(job_id, steps, result)
                else:
                    continue
                del self.settling[job_id]
                self._resolve(job_id, running=False, value=info)

    async def _squeue(
        self, refs: list[JobId], want_all: bool
    ) -> tuple[list[WatchRow], RunResult]:
        """This tick's squeue: ``--me`` when a watch wants every job (plus ``--jobs`` for
        asked ids it did not list, e.g. other users' jobs), else ``--jobs`` only."""
        rows: list[WatchRow] = []
        result = RunResult(0, "", "")
        if want_all:
            result = await self._squeue_call("--me")
            if not result.ok:
                return [], result
            rows = events.parse_watch_rows(result.stdout)
            refs = [r for r in refs if not any(events.row_matches(r, w.row) for w in rows)]
        if refs:
            ids = ",".join(str(base) for base in sorted({r.base for r in refs}))
            result = await self._squeue_call(f"--jobs={ids}")
            if events.squeue_forgot_all(result.returncode, result.stderr):
                result = RunResult(0, result.stdout, "")  # every id left squeue: an answer
            if not result.ok:
                return [], result
            rows += events.parse_watch_rows(result.stdout)
        return rows, result

    async def _squeue_call(self, selector: str) -> RunResult:
        self.stats.squeue_calls += 1
        argv = [*events.WATCH_SQUEUE_ARGS, "--states=all", selector]
        return await run(argv, self.host, timeout=POLL_CALL_TIMEOUT, retries=1)

    def _statuses(self, refs: list[JobId], rows: list[WatchRow]) -> dict[JobId, JobStatus]:
        """The status of each waited id, picked from its rows as `status` does (and, for
        a whole array, note which elements squeue listed)."""
        out: dict[JobId, JobStatus] = {}
        for ref in refs:
            group = [st for w in rows if (st := status_of(ref, w.row)) is not None]
            if group:
                out[ref] = pick_status(group)
            if ref.task is None:
                tasks = {st.array_task for st in group if st.array_task and st.array_task.isdigit()}
                if tasks:
                    self.elements.setdefault(ref, set()).update(tasks)
        return out

    def _all_final(self, job_id: JobId, steps: list[JobInfo]) -> bool:
        """sacct has the final state of the job and, for an array, of every element squeue
        listed (slurmdbd records elements one by one: a partial answer is not final)."""
        if not is_final(steps):
            return False
        for task in self.elements.get(job_id, ()):
            own = [r for r in steps if r.array_task == task and "." not in r.job_id]
            if not is_final(own):
                return False
        return True

    def _publish(self, rows: list[WatchRow]) -> None:
        """Give this tick's rows to every watcher; note the jobs that left unfinished."""
        loop_now = asyncio.get_running_loop().time()
        now = datetime.now(UTC)
        for sub in list(self.subscribers):
            for raw in sub.update(rows, now):
                self.departed.setdefault(raw, loop_now + SETTLE_SECONDS)
            for ref in sub.unseen():
                # Never listed: sacct may know it (long over); else it is unknown.
                self.departed.setdefault(str(ref), sub.started + UNKNOWN_JOB_SECONDS)
            if sub.all_over():
                sub.queue.put_nowait(None)
                self.subscribers.discard(sub)

    def _gone_refs(self) -> list[JobId]:
        return list(dict.fromkeys(events.raw_ref(raw) for raw in self.departed))

    def _finish_departed(self, rows: list[JobInfo], result: RunResult) -> None:
        """Final states (sacct, or scontrol) of jobs that left the queue, to the watchers."""
        loop_now = asyncio.get_running_loop().time()
        now = datetime.now(UTC)
        for raw, deadline in list(self.departed.items()):
            steps = steps_of(events.raw_ref(raw), rows) if result.ok else []
            main = main_step(steps)
            if result.ok and is_final(steps) and main is not None:
                state, code, why = main.state, main.exit_code, ""
            elif loop_now >= deadline:
                state, code = "UNKNOWN", ""
                why = "left the queue; neither sacct nor scontrol knows how it ended"
            else:
                continue
            del self.departed[raw]
            for sub in list(self.subscribers):
                sub.finish(raw, state, code, now, why)
                if sub.all_over():
                    sub.queue.put_nowait(None)
                    self.subscribers.discard(sub)

    async def _scontrol_infos(self, refs: list[JobId]) -> tuple[list[JobInfo], RunResult]:
        """Without accounting: what slurmctld still remembers (``scontrol show job``)."""
        self.stats.scontrol_calls += 1
        result = await run(["scontrol", "--oneliner", "show", "job"], self.host,
                           timeout=POLL_CALL_TIMEOUT, retries=1)
        if not result.ok:
            return [], result
        bases = {r.base for r in refs}
        infos = [info for rec in events.parse_scontrol_job(result.stdout)
                 if (info := events.info_from_scontrol(rec)) is not None
                 and (info.array_job_id or int(info.job_id)) in bases]
        return infos, result

    def _on_squeue(
        self, ids: list[JobId], by_id: dict[JobId, JobStatus], result: RunResult
    ) -> None:
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

    def _fallback_info(
        self, job_id: JobId, steps: list[JobInfo], result: RunResult
    ) -> JobInfoResult:
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
        job_id=job.raw_id if job.array_job_id is not None else str(job.job_id),
        name=job.name,
        partition=job.partition,
        state=job.state,
        exit_code="",
        elapsed=job.time_elapsed,
        max_rss="",
        nodelist=job.nodelist,
    )


def subscribe(sub: Subscriber) -> _Poller:
    """Add a watcher to the poller of its host in the current pool (see `.watch`)."""
    poller = _poller(sub.host)
    poller.subscribe(sub)
    return poller


def check_interval(poll_interval: float) -> float:
    """A usable poll interval (see `wait`); InvalidValueError names a bad one."""
    return _check_interval(poll_interval)


def _poller(host: str) -> _Poller:
    pollers = current_pool().registry.get(POLLERS)
    poller = pollers.by_host.get(host)
    if poller is None:
        poller = pollers.by_host[host] = _Poller(host, pollers)
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
    job_id: JobId, host: str, poll_interval: float, timeout: float | None, want_running: bool
) -> tuple[object | None, JobStatus | None]:
    """Register a waiter; return (its value or None on timeout, the last squeue row seen)."""
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
    them up). An element id (``"123_4"``) waits for that element only.

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
    ref = job_ref(job_id)
    value, job = await _await_waiter(ref, host, poll_interval, timeout, False)
    if isinstance(value, JobInfoResult):
        return value
    steps = [info_from_status(job)] if job is not None else []
    return JobInfoResult(steps, _timed_out(ref, timeout, job))


async def wait_until_running(
    job_id: JobRef, host: str, poll_interval: float = 10.0, timeout: float | None = None
) -> tuple[str | None, StatusResult]:
    """Wait until a job is running and return the first allocated hostname.

    The node is None when the job ended (or left squeue) without being seen running, or
    on timeout (then ``ssh_result.returncode`` is -1).

    Args:
        job_id: SLURM job id (for an array: until any element runs), or an array
            element (``"123_4"``).
        host: SSH host alias with SLURM access.
        poll_interval: Seconds between status checks (as for `wait`).
        timeout: Total seconds to wait (as for `wait`).

    Returns:
        ``(first node or None, last StatusResult)``.
    """
    ref = job_ref(job_id)
    value, job = await _await_waiter(ref, host, poll_interval, timeout, True)
    if isinstance(value, tuple):
        node, st = value
        assert isinstance(st, StatusResult)
        return (node if isinstance(node, str) else None), st
    return None, StatusResult(job, _timed_out(ref, timeout, job))
