"""Job state-change events: the squeue format the shared poller asks, its parser, the event.

Pure (no I/O). The poller's one squeue per tick uses `WATCH_SQUEUE_ARGS`, which adds the
restart count, the reason and the exit code in front of the fields `parse.SQUEUE_ARGS`
prints, so each line's tail parses with `parse.parse_squeue_rows` unchanged and the
``JobStatus`` rows ``wait`` needs come from the same call as the events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from dataclasses import dataclass, field
from datetime import datetime

from . import parse
from .arrays import JobId, task_in
from .models import JobInfo, JobStatus
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

#: squeue, one job per line: restart count | exit code | reason, then the fields of
#: `parse.SQUEUE_ARGS` (name last). ``--Format`` fields of width 0 (no truncation), each
#: followed by ``|``. The caller appends ``--states=all`` and ``--jobs=...`` or ``--me``.
WATCH_SQUEUE_ARGS: list[str] = [
    "squeue",
    "--noheader",
    "--Format=RestartCnt:0|,exit_code:0|,Reason:0|,JobID:0|,JobArrayID:0|,Partition:0|,"
    "UserName:0|,State:0|,TimeUsed:0|,NumNodes:0|,ReasonList:0|,Name:0|",
]

_EXTRA_FIELDS = 3
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
        restarts: How many times the job has been requeued.
        nodelist: Allocated nodes (empty while pending).
        time: When the poller saw the change (UTC).
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

    @property
    def is_final(self) -> bool:
        """True when the new state is final (COMPLETED, FAILED, TIMEOUT ...)."""
        return is_terminal(self.new_state)


def _exit_code(text: str, state: str) -> str:
    """squeue prints the raw wait status (``256`` for exit 1, ``15`` for SIGTERM); give
    sacct's ``"status:signal"`` once the job is over, else ``""``."""
    text = text.strip()
    if not is_terminal(state) or not text.isdigit():
        return ""
    raw = int(text)
    return f"{raw >> 8}:{raw & 0x7F}"


def parse_watch_rows(text: str) -> list[WatchRow]:
    """Parse `WATCH_SQUEUE_ARGS` output (malformed lines skipped)."""
    rows: list[WatchRow] = []
    for line in text.splitlines():
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("|", _EXTRA_FIELDS)
        if len(parts) != _EXTRA_FIELDS + 1 or not parts[0].strip().isdigit():
            continue
        restarts, exit_code, reason, rest = parts
        rest = rest[:-1] if rest.endswith("|") else rest  # the name's suffix
        parsed = parse.parse_squeue_rows(rest)
        if len(parsed) != 1:
            continue
        row = parsed[0]
        rows.append(
            WatchRow(
                row=row,
                restarts=int(restarts),
                exit_code=_exit_code(exit_code, row.status.state),
                reason=reason.strip(),
            )
        )
    return rows


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


def raw_ref(raw_id: str) -> JobId:
    """The `JobId` to ask sacct about for a squeue raw id (``123``, ``123_4``)."""
    base, _, task = raw_id.partition("_")
    return JobId(int(base), int(task) if task.isdigit() else None)


@dataclass(eq=False)
class Subscriber:
    """One `watch` on the shared poller: which jobs, how often, and what it has seen.

    The poller feeds it each tick's rows (`update`) and the final states of jobs that left
    the queue between two ticks (`finish`); events go to ``queue``; an exception in the
    queue ends the watch with it, None ends it normally.
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

    def wants(self, row: parse.SqueueRow) -> bool:
        """True when this watch covers the row's job."""
        return self.jobs is None or any(row_matches(ref, row) for ref in self.jobs)

    def _emit(self, raw: str, seen: _Seen, old: str | None, when: datetime) -> None:
        self.queue.put_nowait(
            JobEvent(
                host=self.host, job_id=seen.job_id, raw_id=raw, array_task=seen.array_task,
                old_state=old, new_state=seen.state, reason=seen.reason,
                exit_code=seen.exit_code, restarts=seen.restarts, nodelist=seen.nodelist,
                time=when,
            )
        )

    def update(self, rows: list[WatchRow], when: datetime) -> list[str]:
        """Emit the changes ``rows`` show; return the raw ids that left the queue unfinished."""
        present: set[str] = set()
        for wr in rows:
            if not self.wants(wr.row):
                continue
            st = wr.status
            raw = st.raw_id
            present.add(raw)
            reason = "" if is_terminal(st.state) else wr.reason
            seen = _Seen(st.state, reason, wr.exit_code, wr.restarts,
                         "" if st.nodelist.startswith("(") else st.nodelist,
                         st.job_id, st.array_task)
            old = self.known.get(raw)
            if old is None or (old.state, old.restarts, old.reason) != (
                seen.state, seen.restarts, seen.reason
            ):
                self._emit(raw, seen, old.state if old else None, when)
            self.known[raw] = seen
        gone: list[str] = []
        for raw, seen in list(self.known.items()):
            if raw in present or _over(seen.state):
                continue
            if seen.array_task is not None and not seen.array_task.isdigit():
                del self.known[raw]  # a pending remainder: its elements show up instead
                continue
            gone.append(raw)
        return gone

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
        elif _over(seen.state):
            return
        state = normalize_state(state)
        new = _Seen(state, why, exit_code, seen.restarts, seen.nodelist, seen.job_id,
                    seen.array_task)
        self._emit(raw, new, seen.state or None, when)
        self.known[raw] = new if is_terminal(state) else dataclasses.replace(new, state=_GAVE_UP)

    def open_refs(self) -> list[JobId]:
        """Watched ids not over yet (the ones the poller still asks squeue about)."""
        if self.jobs is None:
            return []
        return [ref for ref in self.jobs if not self._ref_over(ref)]

    def _ref_over(self, ref: JobId) -> bool:
        mine = [s for raw, s in self.known.items() if _raw_matches(ref, raw)]
        return bool(mine) and all(_over(s.state) for s in mine)

    def unseen(self) -> list[JobId]:
        """Watched ids no row has matched yet."""
        if self.jobs is None:
            return []
        return [ref for ref in self.jobs if not any(
            _raw_matches(ref, raw) for raw in self.known
        )]

    def all_over(self) -> bool:
        """For a watch of given ids: every one has been seen and is over."""
        return self.jobs is not None and all(self._ref_over(ref) for ref in self.jobs)


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
