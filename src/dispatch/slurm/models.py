"""Result types of the SLURM half of the API (frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass

from ..results import RunResult
from . import states

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
    """Status of a SLURM job from squeue."""

    job_id: int
    partition: str
    name: str
    user: str
    state: str
    time_elapsed: str
    nodes: int
    nodelist: str

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
    """Detailed info about a SLURM job from sacct."""

    job_id: str
    name: str
    partition: str
    state: str
    exit_code: str
    elapsed: str
    max_rss: str
    nodelist: str

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
