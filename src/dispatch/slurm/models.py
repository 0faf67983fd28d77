"""Result types of the SLURM half of the API (frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass

from ..results import RunResult
from . import states
from .arrays import split_array_id

__all__ = [
    "SlurmResult",
    "JobStatus",
    "JobInfo",
    "QueueResult",
    "StatusResult",
    "JobInfoResult",
    "NodeGres",
    "NodeInfo",
    "PartitionInfo",
]


@dataclass(frozen=True)
class SlurmResult:
    """Result of a SLURM job submission."""

    job_id: int | None
    ssh_result: RunResult

    @property
    def ok(self) -> bool:
        """True when sbatch accepted the job."""
        return self.job_id is not None


@dataclass(frozen=True)
class JobStatus:
    """Status of a SLURM job from squeue.

    ``job_id`` is the id sbatch returned (for every element of a job array, the array's);
    an array element also has ``array_job_id``, ``array_task`` (its index, or the index
    list of a pending remainder such as ``5-19%8``) and ``raw_id`` (``123_4``,
    ``123_[5-19%8]``) as squeue prints it. ``raw_id`` defaults to ``str(job_id)``.

    ``restarts`` is how many times the job came back: squeue's restart count (requeues by
    Slurm, preemption or dispatch's ``max_restarts``), plus, for a job resubmitted in
    another's place (``restart_by="resubmit"``), the restarts before it along the chain:
    its comment ``dispatch:<token>/<n>`` carries them, so every squeue row of it
    (`status`, `queue`, `watch`) counts the same as ``$DISPATCH_RESTART`` in the job.
    """

    job_id: int
    partition: str
    name: str
    user: str
    state: str
    time_elapsed: str
    nodes: int
    nodelist: str
    array_job_id: int | None = None
    array_task: str | None = None
    raw_id: str = ""
    restarts: int = 0

    def __post_init__(self) -> None:
        if not self.raw_id:
            object.__setattr__(self, "raw_id", str(self.job_id))

    @property
    def is_pending(self) -> bool:
        """Waiting for resources or held (PENDING, REQUEUED, ...)."""
        return states.is_pending(self.state)

    @property
    def is_running(self) -> bool:
        """Holding nodes and running (RUNNING, COMPLETING, CONFIGURING, ...)."""
        return states.is_running(self.state)

    @property
    def is_finished(self) -> bool:
        """In a final state (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...)."""
        return states.is_terminal(self.state)


@dataclass(frozen=True)
class JobInfo:
    """Detailed info about a SLURM job from sacct.

    ``job_id`` is sacct's id (``123``, ``123.batch``, ``123_4``, ``123_[5-19%8]``); for a
    job array element ``array_job_id`` and ``array_task`` are filled in from it when not
    given, and ``raw_id`` defaults to ``job_id``.
    """

    job_id: str
    name: str
    partition: str
    state: str
    exit_code: str
    elapsed: str
    max_rss: str
    nodelist: str
    array_job_id: int | None = None
    array_task: str | None = None
    raw_id: str = ""

    def __post_init__(self) -> None:
        if not self.raw_id:
            object.__setattr__(self, "raw_id", self.job_id)
        if self.array_job_id is None and self.array_task is None:
            array_job_id, array_task = split_array_id(self.job_id)
            object.__setattr__(self, "array_job_id", array_job_id)
            object.__setattr__(self, "array_task", array_task)

    @property
    def is_finished(self) -> bool:
        """In a final state (COMPLETED, FAILED, CANCELLED by N, TIMEOUT, OUT_OF_MEMORY, ...)."""
        return states.is_terminal(self.state)

    @property
    def is_success(self) -> bool:
        """Finished with state COMPLETED."""
        return states.is_success(self.state)


@dataclass(frozen=True)
class QueueResult:
    """Result of a queue query."""

    jobs: list[JobStatus]
    ssh_result: RunResult


@dataclass(frozen=True)
class StatusResult:
    """Result of a job status query."""

    job: JobStatus | None
    ssh_result: RunResult


@dataclass(frozen=True)
class JobInfoResult:
    """Result of a job info query."""

    steps: list[JobInfo]
    ssh_result: RunResult

    @property
    def main(self) -> JobInfo | None:
        """Get the main job entry (without step suffix).

        For a job array (one such row per element, ``123_1``, ``123_2``...) this is the
        element that sums up the array: the first one still unfinished, else the first
        one that did not complete, else the first.
        """
        rows = [step for step in self.steps if "." not in step.job_id]
        if len(rows) <= 1:
            return rows[0] if rows else None
        return (
            next((r for r in rows if not states.is_terminal(r.state)), None)
            or next((r for r in rows if not states.is_success(r.state)), None)
            or rows[0]
        )

    @property
    def elements(self) -> list[JobInfo]:
        """The job's own rows (no step suffix): one per array element, in index order.

        A pending remainder of an array (``123_[5-19%8]``) is one row; a plain job has
        just its own row. Each row has the element's ``state`` and ``exit_code``. An
        element cancelled while still pending has no row: SLURM keeps no record of it.
        """
        rows = [step for step in self.steps if "." not in step.job_id]
        return sorted(rows, key=_element_order)


def _element_order(row: JobInfo) -> int:
    """Sort key: the element's (first) array index; -1 for a row that is not an element."""
    task = row.array_task or ""
    digits = ""
    for ch in task:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else -1


@dataclass(frozen=True)
class NodeGres:
    """GRES (generic resource) info for a node."""

    name: str
    type: str | None
    configured: int
    allocated: int


@dataclass(frozen=True)
class NodeInfo:
    """Detailed info about a SLURM node."""

    name: str
    state: str
    cpus_total: int
    cpus_allocated: int
    memory_total: int
    memory_allocated: int
    gres: list[NodeGres]
    partitions: list[str]
    features: list[str]

    def get_gres(self, name: str) -> NodeGres | None:
        """Get GRES by name (e.g., 'gpu').

        Args:
            name: GRES name, such as ``"gpu"``.

        Returns:
            The node's `NodeGres` of that name, or None when it has none.
        """
        for g in self.gres:
            if g.name == name:
                return g
        return None


@dataclass(frozen=True)
class PartitionInfo:
    """Info about a SLURM partition."""

    name: str
    state: str
    nodes: list[str]
    total_cpus: int
    total_nodes: int
