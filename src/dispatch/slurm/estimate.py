"""Where and when will it start: Slurm's own start estimates, and pending reasons in words.

For a job not yet submitted, ``sbatch --test-only`` with the job's directives makes
slurmctld plan it (nothing is queued) and say when and where it would start; for a
queued job, squeue's expected start (``%S``, what ``squeue --start`` shows) and its
pending reason (`explain_reason`). Each estimate is ONE remote command: the cluster's
clock (``date -u``) and the SLURM command together, run with ``TZ=UTC`` so the times are
unambiguous whatever the cluster's time zone.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..errors import InvalidValueError
from ..results import RunResult
from .arrays import JobRef, job_ref
from .job import SlurmJob
from .nodelist import expand_nodelist
from .reasons import PendingReason, explain_reason
from .states import is_pending, normalize_state
from .together import run_together

__all__ = [
    "StartEstimate",
    "estimate_start",
    "TEST_ONLY_ARGS",
    "SQUEUE_START_ARGS",
    "NOW_ARGS",
    "parse_test_only",
    "parse_squeue_start",
    "parse_slurm_time",
]

log = logging.getLogger(__name__)

#: ``sbatch --test-only`` in UTC; the job script (its ``#SBATCH`` lines) goes on stdin.
TEST_ONLY_ARGS: list[str] = ["env", "TZ=UTC", "sbatch", "--test-only"]
#: squeue in UTC, one line per job: job id | raw id | state | start (expected for a pending
#: job, as ``squeue --start`` shows it; actual once running) | nodes planned for a pending
#: job | nodes held | partition | CPUs | reason (last: may contain ``,`` and spaces).
#: Caller appends ``--jobs=ID``.
SQUEUE_START_ARGS: list[str] = [
    "env", "TZ=UTC", "squeue", "--noheader", "--states=all",
    "--format=%A|%i|%T|%S|%Y|%N|%P|%C|%r",
]
#: The cluster's clock, to tell "now" from "later" without trusting the local one.
NOW_ARGS: list[str] = ["date", "-u", "+%Y-%m-%dT%H:%M:%S"]

#: A start at most this far after the cluster's "now" counts as starting now.
STARTS_NOW_SLACK = timedelta(seconds=5)

_TEST_ONLY = re.compile(
    r"Job (?P<id>\d+) to start at (?P<start>\S+) using (?P<cpus>\d+) processors? on nodes? "
    r"(?P<nodes>\S+)(?: in partition (?P<partition>\S+))?"
)
_UNKNOWN_JOB = re.compile(r"Invalid job id specified", re.IGNORECASE)


@dataclass(frozen=True)
class StartEstimate:
    """When and where Slurm expects a job to start, and why it waits.

    ``start`` is Slurm's estimate in UTC (None when it has none: a held job, an unmet
    dependency, a request that can never run); ``now`` is the cluster's clock when asked.
    ``nodes`` are the nodes Slurm plans to use (or holds, once running). For a queued job
    ``job_id``/``raw_id``/``state`` are squeue's and ``reason`` explains a pending one;
    for a job that was only tested (`estimate_start` with a `SlurmJob`), they are
    None/""/"" and ``reason`` is None. ``ssh_result`` is the SLURM command's result: on
    failure (a request Slurm rejects, an unknown job id) its stderr says why.
    """

    start: datetime | None
    now: datetime | None
    nodes: tuple[str, ...]
    partition: str | None
    processors: int | None
    ssh_result: RunResult
    job_id: int | None = None
    raw_id: str = ""
    state: str = ""
    reason: PendingReason | None = None

    @property
    def ok(self) -> bool:
        """True when Slurm gave an answer (it may still have no start time)."""
        return self.ssh_result.ok

    @property
    def delay(self) -> timedelta | None:
        """How long from the cluster's ``now`` until ``start`` (zero if it already has)."""
        if self.start is None or self.now is None:
            return None
        return max(timedelta(0), self.start - self.now)

    @property
    def starts_now(self) -> bool:
        """True when the job would start (or did start) within `STARTS_NOW_SLACK`."""
        delay = self.delay
        return delay is not None and delay <= STARTS_NOW_SLACK

    def describe(self) -> str:
        """A one-line summary: when, where, and why it waits.

        Returns:
            Text such as ``starts 2026-12-01 16:47:04 UTC (in 1h00m) on node1 in
            partition gpu``.
        """
        if not self.ok:
            said = (self.ssh_result.stderr or self.ssh_result.stdout).strip().splitlines()
            return f"no estimate: {said[-1] if said else f'exit {self.ssh_result.returncode}'}"
        where = ""
        if self.nodes:
            where += f" on {','.join(self.nodes)}"
        if self.partition:
            where += f" in partition {self.partition}"
        if self.start is None:
            when = "no start time estimated"
        else:
            stamp = self.start.strftime("%Y-%m-%d %H:%M:%S UTC")
            delay = self.delay
            if self.starts_now:
                when = f"starts now ({stamp})"
            else:
                when = f"starts {stamp}" + (f" (in {_span(delay)})" if delay else "")
            if self.state and not is_pending(self.state):
                when = f"{self.state} since {stamp}"
        text = when + where
        if self.reason is not None:
            text += f"; waiting: {self.reason.describe()}"
        return text


def _span(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    days, rem = divmod(minutes, 24 * 60)
    hours, mins = divmod(rem, 60)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{mins:02d}m" if hours else f"{mins}m"


def parse_slurm_time(text: str) -> datetime | None:
    """``2026-12-01T15:47:01`` (printed with ``TZ=UTC``) -> an aware UTC datetime.

    Args:
        text: A SLURM timestamp; ``N/A``, ``Unknown``, ``None`` or junk give None.

    Returns:
        The time in UTC, or None.
    """
    try:
        return datetime.fromisoformat(text.strip()).replace(tzinfo=UTC)
    except ValueError:
        return None


def _nodes(text: str) -> tuple[str, ...]:
    text = text.strip()
    if not text or text in ("(null)", "N/A", "n/a", "None"):
        return ()
    return tuple(expand_nodelist(text))


def parse_test_only(stderr: str) -> tuple[datetime | None, tuple[str, ...], str | None,
                                          int | None]:
    """Read ``sbatch --test-only``'s line "Job N to start at T using C processors on
    nodes X in partition P".

    Args:
        stderr: What sbatch printed (it writes the line on stderr).

    Returns:
        ``(start, nodes, partition, processors)``; all empty/None when the line is absent.
    """
    m = _TEST_ONLY.search(stderr)
    if m is None:
        return None, (), None, None
    return (parse_slurm_time(m["start"]), _nodes(m["nodes"]), m["partition"],
            int(m["cpus"]))


def parse_squeue_start(text: str) -> list[StartEstimate]:
    """Read `SQUEUE_START_ARGS` output: one estimate per line (malformed lines skipped).

    ``now`` is None and ``ssh_result`` empty: `estimate_start` fills them in.

    Args:
        text: squeue's stdout.

    Returns:
        One `StartEstimate` per job (array element or pending remainder) listed.
    """
    out: list[StartEstimate] = []
    empty = RunResult(0, "", "")
    for line in text.splitlines():
        parts = line.rstrip("\r").split("|", 8)
        if len(parts) != 9 or not parts[0].strip().isdigit():
            if line.strip():
                log.debug("squeue --start: skipping malformed line %r", line)
            continue
        _, raw, state_s, start_s, planned, held, partition, cpus, reason = parts
        head = re.match(r"\d+", raw.strip())
        state = normalize_state(state_s)
        pending = is_pending(state)
        out.append(StartEstimate(
            start=parse_slurm_time(start_s),
            now=None,
            nodes=_nodes(planned if pending else held),
            partition=partition.strip() or None,
            processors=int(cpus) if cpus.strip().isdigit() else None,
            ssh_result=empty,
            job_id=int(head.group(0)) if head else int(parts[0]),
            raw_id=raw.strip(),
            state=state,
            reason=explain_reason(reason) if pending else None,
        ))
    return out


def probe_script(job: SlurmJob) -> str:
    """The job's ``#SBATCH`` lines (as `submit` renders them) over a trivial body."""
    lines = "".join(f"#SBATCH {d}\n" for d in job.sbatch_directives())
    return f"#!/bin/bash\n{lines}true\n"


async def estimate_start(
    job: SlurmJob | JobRef, host: str, timeout: float | None = None
) -> StartEstimate:
    """Ask Slurm when and where a job would start (or, for a queued job, will start).

    For a `SlurmJob`: ``sbatch --test-only`` with the job's directives (nothing is
    queued); Slurm ignores ``--dependency`` and ``--hold`` there. For a job id (``123``
    or ``"123_4"``): squeue's expected start and, while pending, its reason in words.
    One remote command either way.

    Args:
        job: The job to test, or the id of a queued job.
        host: SSH host alias with SLURM access.
        timeout: Seconds for the SSH call (None: no limit).

    Returns:
        The `StartEstimate`; when Slurm refused (a request no node can satisfy, an
        unknown partition, a job id it does not know) ``ok`` is False and
        ``ssh_result.stderr`` says why.

    Raises:
        InvalidValueError: ``job`` is neither a `SlurmJob` nor a valid job id.
    """
    if isinstance(job, SlurmJob):
        # The script rides in the command line, not on stdin (stdin costs round trips):
        # sh -c 'printf "%s" "$1" | env TZ=UTC sbatch --test-only' sh SCRIPT
        pipe = f'printf "%s" "$1" | {shlex.join(TEST_ONLY_ARGS)}'
        now_res, res = await run_together(
            [NOW_ARGS, ["sh", "-c", pipe, "sh", probe_script(job)]], host, timeout)
        now = parse_slurm_time(now_res.stdout) if now_res.ok else None
        start, nodes, partition, cpus = parse_test_only(res.stderr)
        if res.ok and start is None:
            said = res.stderr.strip() or res.stdout.strip()
            res = RunResult(1, res.stdout, f"dispatch: sbatch --test-only gave no estimate: "
                            f"{said or '(no output)'}\n")
        return StartEstimate(start, now, nodes, partition, cpus, res)
    if isinstance(job, bool) or not isinstance(job, int | str):
        raise InvalidValueError(f"job must be a SlurmJob or a job id, not {job!r}")
    ref = job_ref(job)
    now_res, res = await run_together([NOW_ARGS, [*SQUEUE_START_ARGS, f"--jobs={ref}"]], host,
                                      timeout)
    now = parse_slurm_time(now_res.stdout) if now_res.ok else None
    rows = parse_squeue_start(res.stdout) if res.ok else []
    if ref.task is not None:
        rows = [r for r in rows if r.raw_id == str(ref)] or rows
    if not rows:
        if res.ok or _UNKNOWN_JOB.search(res.stderr):
            res = RunResult(1, res.stdout, f"dispatch: job {ref} is not in squeue on {host} "
                            "(it ended, or never existed)\n")
        return StartEstimate(None, now, (), None, None, res, job_id=ref.base, raw_id=str(ref))
    # A whole array: the pending element that starts first, else the first row.
    pending = [r for r in rows if is_pending(r.state)]
    pick = min(pending, key=lambda r: r.start or datetime.max.replace(tzinfo=UTC),
               default=rows[0])
    return dataclasses.replace(pick, now=now, ssh_result=res)
