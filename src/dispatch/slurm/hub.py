"""The shared poller: one task per (pool, host) that serves every `Subscriber` of the host.

`watch`, `wait`, `wait_until_running` and `follow` are all subscribers. Each tick the
poller asks squeue about every subscribed job in ONE call (``squeue --jobs=1,2,3``, or
``squeue --me`` when a watch wants all jobs) every ``min(interval of its subscribers)``
seconds and feeds the rows to each subscriber, which turns them into events. Then ONE
``sacct --jobs=...`` call covers both the jobs that left the queue between two ticks (their
final state, for the events) and the jobs whose `wait` needs final rows (retried while
slurmdbd catches up, up to ``SETTLE_SECONDS``); ``scontrol show job`` stands in when the
cluster keeps no accounting. A followed job (or array element) that ended other than
COMPLETED costs one extra ``squeue --format=%F|%K|%k`` per user in that tick to find a
successor resubmitted with its dispatch token (for an element: that element of a later
array). The task ends as soon as it has no subscribers.
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
from . import events, settle
from .arrays import JobId
from .events import Subscriber, WatchRow
from .models import JobInfo, JobInfoResult
from .query import is_final, main_step, sacct_jobs, steps_of

__all__ = [
    "PollerStats",
    "POLLERS",
    "poller_stats",
    "subscribe",
    "check_interval",
    "FIRST_POLL_SECONDS",
    "SETTLE_SECONDS",
    "SETTLE_POLL_SECONDS",
    "UNKNOWN_JOB_SECONDS",
    "MIN_POLL_SECONDS",
    "POLL_CALL_TIMEOUT",
]

log = logging.getLogger(__name__)

#: A new subscriber is polled within this many seconds (or its interval if smaller).
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
#: Subscriptions arriving within this window share the first poll.
COALESCE_SECONDS = 0.02


@dataclass
class PollerStats:
    """Counters per host, for tests and benchmarks (cumulative for the pool).

    ``squeue_calls`` counts the one squeue per tick (two when a watch of all jobs also
    asks about other users' ids); ``successor_calls`` the extra comment lookups for
    followed jobs that ended other than COMPLETED.
    """

    squeue_calls: int = 0
    sacct_calls: int = 0
    scontrol_calls: int = 0
    pollers_started: int = 0
    active_pollers: int = 0
    successor_calls: int = 0


@dataclass
class Pollers:
    """One pool's pollers (one per host while it has subscribers) and their counters."""

    by_host: dict[str, HostPoller] = field(default_factory=dict)
    stats: dict[str, PollerStats] = field(default_factory=dict)

    def stats_of(self, host: str) -> PollerStats:
        return self.stats.setdefault(host, PollerStats())


async def _stop_pollers(pollers: Pollers) -> None:
    """Close hook: fail the pool's subscribers with a clear error, cancel the pollers."""
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
POLLERS: PoolKey[Pollers] = PoolKey("slurm.pollers", Pollers, _stop_pollers)


def poller_stats(host: str) -> PollerStats:
    """The (live, mutable) counters of the pollers of ``host`` in the current pool.

    Call it from a coroutine (it uses `current_pool`).

    Args:
        host: SSH host alias.

    Returns:
        The host's `PollerStats`.
    """
    return current_pool().registry.get(POLLERS).stats_of(host)


class HostPoller:
    """The poller of one host in one pool; its task lives while it has subscribers."""

    def __init__(self, host: str, pollers: Pollers) -> None:
        self.host = host
        self.pollers = pollers
        self.stats = pollers.stats_of(host)
        self.subscribers: set[Subscriber] = set()
        # raw id -> deadline: jobs that left squeue unfinished; sacct tells how they ended
        self.departed: dict[str, float] = {}
        # subscribers wanting final rows whose job is over in squeue -> settle deadline
        self.settling: dict[Subscriber, float] = {}
        self.urgent = False
        self.wake = asyncio.Event()
        self.last_poll = float("-inf")
        self.task: asyncio.Task[None] | None = None

    def subscribe(self, sub: Subscriber) -> None:
        """Add a subscriber: it is polled from the next tick on (within FIRST_POLL_SECONDS)."""
        self.subscribers.add(sub)
        self.urgent = True
        self.wake.set()
        if self.task is None:
            self.stats.pollers_started += 1
            self.stats.active_pollers += 1
            self.task = asyncio.get_running_loop().create_task(
                self._main(), name=f"dispatch-slurm-poller[{self.host}]"
            )

    def unsubscribe(self, sub: Subscriber) -> None:
        """Remove a subscriber (its consumer stopped, or its stream ended)."""
        self.subscribers.discard(sub)
        self.settling.pop(sub, None)
        self.wake.set()

    # -- the task ------------------------------------------------------------------------
    async def _main(self) -> None:
        try:
            while await self._sleep_until_due():
                await self._poll_once()
        except asyncio.CancelledError:
            self.fail(None)
            raise
        except Exception as exc:  # a bug must not leave consumers hanging forever
            log.exception("SLURM poller for %s failed", self.host)
            self.fail(exc)
        finally:
            self.task = None
            self.stats.active_pollers -= 1
            if self.pollers.by_host.get(self.host) is self:
                del self.pollers.by_host[self.host]

    def fail(self, exc: BaseException | None) -> None:
        """End every stream still open: cancelled (None) or with ``exc``."""
        for sub in self.subscribers:
            sub.end(exc if exc is not None else asyncio.CancelledError())

    async def _sleep_until_due(self) -> bool:
        """Sleep until the next poll is due; False (and the task ends) when no one listens."""
        loop = asyncio.get_running_loop()
        while True:
            if not self.subscribers:
                return False
            interval = min(s.interval for s in self.subscribers)
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
            await asyncio.sleep(COALESCE_SECONDS)  # let concurrent subscriptions join
            self.urgent = False
        return bool(self.subscribers)

    async def _poll_once(self) -> None:
        """One tick: squeue, then sacct, then successors, then end what is over."""
        self.last_poll = asyncio.get_running_loop().time()
        subs = list(self.subscribers)
        watched = {ref for sub in subs for ref in sub.open_refs()}
        want_all = any(sub.jobs is None for sub in subs)
        if watched or want_all:
            rows, result = await self._squeue(sorted(watched, key=str), want_all)
            if result.ok:
                self._publish(subs, rows, result)
            else:
                log.debug("squeue on %s failed (will retry): %s", self.host, result.stderr.strip())
        infos, sacct_result = await self._sacct()
        await self._follow(subs)
        self._settle(infos, sacct_result)
        for sub in subs:
            if sub in self.subscribers and (
                sub.final is not None if sub.wants_final else sub.all_over()
            ):
                sub.end()
                self.unsubscribe(sub)
            else:
                sub.polled.set()

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

    def _publish(self, subs: list[Subscriber], rows: list[WatchRow], result: RunResult) -> None:
        """Give this tick's rows to every subscriber; note the jobs that left unfinished
        and the waits whose job squeue shows over (their final rows come from sacct)."""
        loop_now = asyncio.get_running_loop().time()
        now = datetime.now(UTC)
        for sub in subs:
            for raw in sub.update(rows, now, result):
                self.departed.setdefault(raw, loop_now + SETTLE_SECONDS)
            for ref in sub.unseen():
                # Never listed: sacct may know it (long over); else it is unknown.
                self.departed.setdefault(str(ref), sub.started + UNKNOWN_JOB_SECONDS)
            if sub.wants_final and sub.final is None and sub not in self.settling \
                    and sub.squeue_done():
                seen = any(sub.head(r) in sub.seen_refs for r in sub.active())
                grace = SETTLE_SECONDS if seen else UNKNOWN_JOB_SECONDS
                self.settling[sub] = loop_now + grace

    async def _sacct(self) -> tuple[list[JobInfo], RunResult]:
        """One sacct (or scontrol) call for the departed jobs and the settling waits."""
        refs = [events.raw_ref(raw) for raw in self.departed]
        refs += [ref for sub in self.settling for ref in sub.active()]
        refs = list(dict.fromkeys(refs))
        if not refs:
            return [], RunResult(0, "", "")
        self.stats.sacct_calls += 1
        infos, result = await sacct_jobs(refs, self.host, POLL_CALL_TIMEOUT)
        if not result.ok and events.accounting_disabled(result.stderr):
            infos, result = await self._scontrol_infos(refs)
        self._finish_departed(infos, result)
        return infos, result

    def _finish_departed(self, rows: list[JobInfo], result: RunResult) -> None:
        """Final states (sacct, or scontrol) of jobs that left the queue, to the subscribers."""
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

    async def _follow(self, subs: list[Subscriber]) -> None:
        """Followed jobs that ended other than COMPLETED: one comment lookup per user finds
        a successor resubmitted with the same dispatch token; carry on with it."""
        wanted = [(sub, ref, user) for sub in subs for ref, user in sub.follow_candidates()]
        if not wanted:
            return
        answers: dict[str, str | None] = {}
        for user in sorted({user for _, _, user in wanted}):
            self.stats.successor_calls += 1
            try:
                argv = settle.successor_argv(user)
            except InvalidValueError:
                answers[user] = None
                continue
            result = await run(argv, self.host, timeout=POLL_CALL_TIMEOUT, retries=1)
            if not result.ok:
                log.warning("looking for resubmitted jobs on %s failed: %s",
                            self.host, result.stderr.strip())
            answers[user] = result.stdout if result.ok else None
        for sub, ref, user in wanted:
            text = answers.get(user)
            new = settle.successor(ref, text) if text is not None else None
            if new is not None:
                log.info("job %s on %s was resubmitted as job %s: following it",
                         ref, self.host, new)
                self.settling.pop(sub, None)
                self.urgent = True
            sub.follow(ref, new)

    def _settle(self, infos: list[JobInfo], result: RunResult) -> None:
        """Give each settling wait its final rows once sacct has them (or at the deadline,
        the best answer there is). A whole array whose elements were resubmitted gets
        each such element's rows from the last job of its chain."""
        now = asyncio.get_running_loop().time()
        for sub, deadline in list(self.settling.items()):
            roots = sub.roots()
            if len(roots) != 1:
                continue
            ref = sub.head(roots[0])
            steps = steps_of(ref, infos)
            final = result.ok and settle.all_final(steps, sub.elements.get(ref))
            for task, head in sorted(sub.element_heads(ref).items()):
                own = steps_of(head, infos)
                final = final and settle.all_final(own, None)
                steps = [r for r in steps if r.array_task != str(task)] + own
            if final:
                sub.final = JobInfoResult(steps, result)
            elif now >= deadline:
                last = (sub.statuses.get(ref), sub.last_result)
                sub.final = settle.fallback_info(
                    ref, self.host, steps, result, last, ref in sub.seen_refs
                )
            else:
                continue
            del self.settling[sub]


def subscribe(sub: Subscriber) -> HostPoller:
    """Add a subscriber to the poller of its host in the current pool.

    Args:
        sub: The subscriber (see `events.Subscriber`).

    Returns:
        The host's poller (call its ``unsubscribe`` when done).
    """
    pollers = current_pool().registry.get(POLLERS)
    poller = pollers.by_host.get(sub.host)
    if poller is None:
        poller = pollers.by_host[sub.host] = HostPoller(sub.host, pollers)
    poller.subscribe(sub)
    return poller


def check_interval(poll_interval: float) -> float:
    """A usable poll interval: > 0 (raised to MIN_POLL_SECONDS), else InvalidValueError.

    Args:
        poll_interval: Seconds between polls, as the caller gave it.

    Returns:
        The interval to use.

    Raises:
        InvalidValueError: ``poll_interval`` is not a number > 0.
    """
    if (
        isinstance(poll_interval, bool)
        or not isinstance(poll_interval, (int, float))
        or not poll_interval > 0
    ):
        raise InvalidValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
    return max(float(poll_interval), MIN_POLL_SECONDS)
