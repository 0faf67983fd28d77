"""Job state-change events: the squeue format the shared poller asks, its parser, the event.

Pure (no I/O). The poller's one squeue per tick uses `WATCH_SQUEUE_ARGS`, the one squeue
format `parse.SQUEUE_ARGS` (restart count, exit code and reason included), so the
``JobStatus`` rows ``status`` and ``wait`` need come from the same call as the events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from dataclasses import dataclass, field
from datetime import datetime

from ..results import RunResult
from . import parse
from .arrays import JobId, task_in
from .models import JobInfo, JobInfoResult, JobStatus
from .query import pick_status, status_of
from .states import is_terminal, normalize_state

__all__ = [
    "JobEvent",
    "WatchRow",
    "WATCH_SQUEUE_ARGS",
    "parse_watch_rows",
    "squeue_forgot_all",
    "accounting_disabled",
    "parse_scontrol_job",
    "row_matches",
]

#: The one squeue format (`parse.SQUEUE_ARGS`): restart count, exit code and reason in
#: front of the fields `status` reads. The caller appends ``--states=all`` and
#: ``--jobs=...`` or ``--me``.
WATCH_SQUEUE_ARGS: list[str] = parse.SQUEUE_ARGS

# squeue's answer when it knows none of the asked job ids (MinJobAge passed).
_UNKNOWN_JOB = re.compile(r"Invalid job id specified", re.IGNORECASE)
# sacct's answer on a cluster without slurmdbd.
_NO_ACCOUNTING = re.compile(r"accounting storage is disabled", re.IGNORECASE)
# `scontrol --oneliner show job` key=value pairs (a value runs up to the next " Key=").
_KV = re.compile(r"([A-Za-z][A-Za-z0-9_:/]*)=(.*?)(?= [A-Za-z][A-Za-z0-9_:/]*=|$)")


@dataclass(frozen=True)
class WatchRow:
    """One `WATCH_SQUEUE_ARGS` line: the squeue row plus restarts, exit code and reason."""

    row: parse.SqueueRow
    restarts: int
    exit_code: str
    reason: str

    @property
    def status(self) -> JobStatus:
        """The row's `JobStatus` (as `parse.parse_squeue` gives it)."""
        return self.row.status

    @property
    def is_remainder(self) -> bool:
        """True for the pending rest of an array (``123_[5-19%8]``), whose id changes as
        elements start (so its disappearance is no event)."""
        task = self.row.status.array_task
        return task is not None and not task.isdigit()


@dataclass(frozen=True)
class JobEvent:
    """A job (or array element) changed state, as the shared poller of its host saw it.

    ``old_state`` is None the first time a watcher sees the job. ``exit_code`` is
    ``"<status>:<signal>"`` once the job is over (from squeue, or sacct for a job that
    left the queue between two polls), else ``""``. ``restarts`` counts requeues
    (preemption, ``scontrol requeue``, dispatch's ``max_restarts``).

    Attributes:
        host: SSH host alias the job runs on.
        job_id: The id sbatch returned (an array's id for each of its elements).
        raw_id: The id as squeue prints it: ``123``, ``123_4``, ``123_[5-19%8]``.
        array_task: The element's index (or a pending remainder's index range), else None.
        old_state: The state seen before (None on the first sight).
        new_state: The state now (long name, like ``RUNNING``).
        reason: Slurm's reason (``Priority``, ``Resources``, ``BeginTime``, ``None`` ...).
        exit_code: ``"0:0"`` style exit status once over, else ``""``.
        restarts: How many times the job has come back: requeued (squeue's restart
            count), plus, for a job resubmitted in another's place with the same dispatch
            token, the restarts before it (its comment carries them: `JobStatus`).
        nodelist: Allocated nodes (empty while pending).
        time: When the poller saw the change (UTC).
        resubmitted_from: For a job followed from an earlier one (resubmitted with the
            same dispatch token after that one ended), the earlier job's
            id (for an element, the earlier array's: same index); else None.
    """

    host: str
    job_id: int
    raw_id: str
    array_task: str | None
    old_state: str | None
    new_state: str
    reason: str
    exit_code: str
    restarts: int
    nodelist: str
    time: datetime
    resubmitted_from: int | None = None

    @property
    def is_final(self) -> bool:
        """True when the new state is final (COMPLETED, FAILED, TIMEOUT ...)."""
        return is_terminal(self.new_state)


def parse_watch_rows(text: str) -> list[WatchRow]:
    """Parse `WATCH_SQUEUE_ARGS` output (malformed lines skipped)."""
    return [WatchRow(row=r, restarts=r.status.restarts, exit_code=r.exit_code, reason=r.reason)
            for r in parse.parse_squeue_rows(text)]


def squeue_forgot_all(returncode: int, stderr: str) -> bool:
    """True when squeue failed only because it knows none of the asked job ids."""
    return returncode == 1 and bool(_UNKNOWN_JOB.search(stderr))


def accounting_disabled(stderr: str) -> bool:
    """True when sacct says the cluster keeps no accounting (no slurmdbd)."""
    return bool(_NO_ACCOUNTING.search(stderr))


def parse_scontrol_job(text: str) -> list[dict[str, str]]:
    """``scontrol --oneliner show job`` output -> one key/value dict per job record.

    Values run up to the next `` Key=`` (so a value with spaces is kept whole unless it
    contains `` Word=``).
    """
    records: list[dict[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("JobId="):
            continue
        records.append({m.group(1): m.group(2) for m in _KV.finditer(line)})
    return records


def row_matches(ref: JobId, row: parse.SqueueRow) -> bool:
    """True when ``row`` is (part of) the job or element ``ref`` names."""
    st = row.status
    if ref.task is None:
        return ref.base in row.ids
    if st.job_id != ref.base or st.array_task is None:
        return False
    return st.array_task == str(ref.task) or task_in(st.array_task, ref.task)


def scontrol_state(record: dict[str, str]) -> str:
    """The normalized ``JobState`` of a `parse_scontrol_job` record."""
    return normalize_state(record.get("JobState", ""))


@dataclass
class _Seen:
    state: str
    reason: str
    exit_code: str
    restarts: int
    nodelist: str
    job_id: int
    array_task: str | None
    user: str = ""


def raw_ref(raw_id: str) -> JobId:
    """The `JobId` to ask sacct about for a squeue raw id (``123``, ``123_4``)."""
    base, _, task = raw_id.partition("_")
    return JobId(int(base), int(task) if task.isdigit() else None)


@dataclass(eq=False)
class Subscriber:
    """One consumer of the shared poller (`watch`, `wait`, `follow`): which jobs, how
    often, and what it has seen.

    The poller feeds it each tick's rows (`update`) and the final states of jobs that left
    the queue between two ticks (`finish`); events go to ``queue``; an exception in the
    queue ends the stream with it, None ends it normally. With ``successors`` a watched
    job resubmitted under its dispatch token is followed to the new job (`follow`); with
    ``wants_final`` the poller also settles the job's final sacct rows into ``final``
    before it ends the stream (what `wait` returns).
    """

    host: str
    jobs: frozenset[JobId] | None
    interval: float
    started: float
    queue: asyncio.Queue[JobEvent | BaseException | None] = field(
        default_factory=asyncio.Queue
    )
    known: dict[str, _Seen] = field(default_factory=dict)
    ended: bool = False
    successors: bool = False
    wants_final: bool = False
    #: The status of each active id in the last tick (None: squeue did not list it).
    statuses: dict[JobId, JobStatus | None] = field(default_factory=dict)
    last_result: RunResult | None = None
    #: Whole-array ids: the element indexes squeue listed (sacct must know each).
    elements: dict[JobId, set[str]] = field(default_factory=dict)
    seen_refs: set[JobId] = field(default_factory=set)
    #: A followed id -> the id of the job resubmitted in its place.
    chain: dict[JobId, JobId] = field(default_factory=dict)
    #: A successor's base id -> the base id of the job it replaces.
    predecessors: dict[int, int] = field(default_factory=dict)
    checked: set[JobId] = field(default_factory=set)
    #: Successors added to ``jobs`` by `follow` (the rest of ``jobs`` are the roots).
    followed: set[JobId] = field(default_factory=set)
    final: JobInfoResult | None = None
    polled: asyncio.Event = field(default_factory=asyncio.Event)

    def active(self) -> list[JobId]:
        """Watched ids not replaced by a successor (empty for a watch of all jobs)."""
        if self.jobs is None:
            return []
        return sorted((r for r in self.jobs if r not in self.chain), key=str)

    def head(self, ref: JobId) -> JobId:
        """The last job of ``ref``'s chain of resubmissions (``ref`` itself if none)."""
        while ref in self.chain:
            ref = self.chain[ref]
        return ref

    def wants(self, row: parse.SqueueRow) -> bool:
        """True when this watch covers the row's job."""
        return self.jobs is None or any(row_matches(ref, row) for ref in self.active())

    def _emit(self, raw: str, seen: _Seen, old: str | None, when: datetime) -> None:
        self.queue.put_nowait(
            JobEvent(
                host=self.host, job_id=seen.job_id, raw_id=raw, array_task=seen.array_task,
                old_state=old, new_state=seen.state, reason=seen.reason,
                exit_code=seen.exit_code, restarts=seen.restarts, nodelist=seen.nodelist,
                time=when, resubmitted_from=self._predecessor(seen.job_id),
            )
        )

    def update(
        self, rows: list[WatchRow], when: datetime, result: RunResult | None = None
    ) -> list[str]:
        """Emit the changes ``rows`` show; return the raw ids that left the queue unfinished."""
        self._note_statuses(rows, result)
        present: set[str] = set()
        for wr in rows:
            if not self.wants(wr.row):
                continue
            st = wr.status
            raw = st.raw_id
            if st.array_task is not None and st.array_task.isdigit():
                raw = f"{st.job_id}_{st.array_task}"  # a pending one-element array: 5_[3]
            present.add(raw)
            reason = "" if is_terminal(st.state) else wr.reason
            seen = _Seen(st.state, reason, wr.exit_code, wr.restarts,
                         "" if st.nodelist.startswith("(") else st.nodelist,
                         st.job_id, st.array_task, st.user)
            old = self.known.get(raw)
            if old is None or (old.state, old.restarts, old.reason) != (
                seen.state, seen.restarts, seen.reason
            ):
                self._emit(raw, seen, old.state if old else None, when)
            self.known[raw] = seen
        gone: list[str] = []
        for raw, seen in list(self.known.items()):
            if raw in present or _over(seen.state) or not self._covers(raw):
                continue
            if seen.array_task is not None and not seen.array_task.isdigit():
                del self.known[raw]  # a pending remainder: its elements show up instead
                continue
            gone.append(raw)
        return gone

    def _predecessor(self, job_id: int) -> int | None:
        return self.predecessors.get(job_id)

    def _covers(self, raw: str) -> bool:
        return self.jobs is None or any(_raw_matches(ref, raw) for ref in self.active())

    def _note_statuses(self, rows: list[WatchRow], result: RunResult | None) -> None:
        """Each active id's status this tick, picked as `status` picks it, and the
        elements squeue listed for a whole array."""
        if result is not None:
            self.last_result = result
        before, self.statuses = self.statuses, {}
        for ref in self.active():
            group = [st for w in rows if (st := status_of(ref, w.row)) is not None]
            if not group:
                # Over and no longer asked about: keep its final row (the last word
                # squeue had, for a wait whose sacct never answers).
                last = before.get(ref)
                self.statuses[ref] = last if last is not None and is_terminal(last.state) else None
                continue
            self.seen_refs.add(ref)
            job = pick_status(group)
            self.statuses[ref] = job
            if ref.task is None:
                tasks = {s.array_task for s in group if s.array_task and s.array_task.isdigit()}
                if tasks:
                    self.elements.setdefault(ref, set()).update(tasks)

    def squeue_done(self) -> bool:
        """True when the last tick showed every active id over or gone from squeue."""
        refs = self.active()
        return bool(refs) and all(
            ref in self.statuses
            and ((job := self.statuses[ref]) is None or is_terminal(job.state))
            for ref in refs
        )

    def finish(
        self, raw: str, state: str, exit_code: str, when: datetime, why: str = ""
    ) -> None:
        """A job that left the queue (or was never listed) ended in ``state`` (from sacct
        or scontrol; ``UNKNOWN`` with ``why`` when nobody knows)."""
        seen = self.known.get(raw)
        if seen is None:
            ref = raw_ref(raw)
            if ref not in self.unseen():
                return
            seen = _Seen("", "", "", 0, "", ref.base,
                         None if ref.task is None else str(ref.task))
        elif _over(seen.state) or not self._covers(raw):
            return
        state = normalize_state(state)
        new = _Seen(state, why, exit_code, seen.restarts, seen.nodelist, seen.job_id,
                    seen.array_task, seen.user)
        self._emit(raw, new, seen.state or None, when)
        self.known[raw] = new if is_terminal(state) else dataclasses.replace(new, state=_GAVE_UP)

    def follow_candidates(self) -> list[tuple[JobId, str]]:
        """``(id, user)`` of followed jobs that just ended other than COMPLETED and were
        not looked up yet: a resubmitted successor may carry on for them. That is a plain
        job, an element, or each such element of a followed whole array."""
        if not self.successors:
            return []
        out: list[tuple[JobId, str]] = []
        for ref in self.active():
            if ref.task is not None:
                found = [(ref, self.known.get(str(ref)))]
            elif str(ref.base) in self.known:
                found = [(ref, self.known[str(ref.base)])]
            else:  # a whole array: its elements, one by one
                found = [(JobId(ref.base, int(seen.array_task)), seen)
                         for seen in self.known.values() if seen.job_id == ref.base
                         and seen.array_task is not None and seen.array_task.isdigit()]
            for old, seen in found:
                if (old not in self.checked and seen is not None and seen.user
                        and is_terminal(seen.state) and seen.state != "COMPLETED"):
                    out.append((old, seen.user))
        return out

    def follow(self, old: JobId, successor: JobId | None) -> None:
        """Carry on with ``successor`` (resubmitted in ``old``'s place: a job, or an
        element of a later array), or note that ``old`` has none. (The successor's rows
        count its restarts along the chain themselves: its comment carries them.)"""
        self.checked.add(old)
        if successor is None:
            return
        self.chain[old] = successor
        self.predecessors[successor.base] = old.base
        self.followed.add(successor)
        self.jobs = (self.jobs or frozenset()) | {successor}

    def roots(self) -> list[JobId]:
        """The ids the caller asked about (not the successors found since)."""
        return sorted((self.jobs or frozenset()) - self.followed, key=str)

    def element_heads(self, ref: JobId) -> dict[int, JobId]:
        """For a whole array ``ref``: each resubmitted element's index -> the last job of
        its chain (empty for anything else)."""
        if ref.task is not None:
            return {}
        return {old.task: self.head(old) for old in self.chain
                if old.base == ref.base and old.task is not None}

    def open_refs(self) -> list[JobId]:
        """Watched ids not over yet (the ones the poller still asks squeue about)."""
        return [ref for ref in self.active() if not self._ref_over(ref)]

    def _ref_over(self, ref: JobId) -> bool:
        mine = [s for raw, s in self.known.items() if _raw_matches(ref, raw)]
        return bool(mine) and all(_over(s.state) for s in mine)

    def unseen(self) -> list[JobId]:
        """Watched ids no row has matched yet."""
        return [ref for ref in self.active() if not any(
            _raw_matches(ref, raw) for raw in self.known
        )]

    def all_over(self) -> bool:
        """For a watch of given ids: every one has been seen and is over."""
        return self.jobs is not None and all(self._ref_over(ref) for ref in self.active())

    def end(self, item: BaseException | None = None) -> None:
        """End the stream (normally, or with ``item``) and wake a waiting consumer."""
        self.queue.put_nowait(item)
        self.polled.set()


_GAVE_UP = "UNKNOWN_FINAL"  # a watched id nobody knows: over, with no more events


def _over(state: str) -> bool:
    return state == _GAVE_UP or is_terminal(state)


def _raw_matches(ref: JobId, raw: str) -> bool:
    base, _, task = raw.partition("_")
    if not base.isdigit() or int(base) != ref.base:
        return False
    if ref.task is None:
        return True
    task = task.strip("[]")
    return task == str(ref.task) or (bool(task) and task_in(task, ref.task))


def info_from_scontrol(record: dict[str, str]) -> JobInfo | None:
    """A `JobInfo` from a `parse_scontrol_job` record (for clusters without accounting)."""
    job_id = record.get("JobId", "")
    if not job_id.isdigit():
        return None
    array_id, task = record.get("ArrayJobId", ""), record.get("ArrayTaskId", "")
    raw = f"{array_id}_{task}" if array_id.isdigit() and task.isdigit() else job_id
    return JobInfo(
        job_id=raw,
        name=record.get("JobName", ""),
        partition=record.get("Partition", ""),
        state=scontrol_state(record),
        exit_code=record.get("ExitCode", ""),
        elapsed=record.get("RunTime", ""),
        max_rss="",
        nodelist=record.get("NodeList", "") if record.get("NodeList") != "(null)" else "",
    )
