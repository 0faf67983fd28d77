"""The SLURM half of the API: job scripts, submission, queries and shared waits.

Pure parts (rendering in `.job`, parsing in `.parse`, states in `.states`)
are separate from the I/O coroutines (`.query`, `.submission`, `.payload`, `.poller`),
which all ride the SSH pool of the current context (per-pool state lives on the pool).
"""

from __future__ import annotations

from .estimate import StartEstimate, estimate_start
from .events import JobEvent
from .follow import FollowError, follow
from .job import SlurmJob
from .models import (
    JobInfo,
    JobInfoResult,
    JobStatus,
    NodeGres,
    NodeInfo,
    PartitionInfo,
    QueueResult,
    SlurmResult,
    StatusResult,
)
from .mounts import JuiceFSMount as JuiceFSMount  # for placement; public as dispatch.JuiceFSMount
from .nodelist import first_node_from_nodelist
from .parse import SINFO_PARTITION_GRES_ARGS as SINFO_PARTITION_GRES_ARGS  # for placement
from .parse import parse_sinfo_gres as parse_sinfo_gres  # for placement
from .parse import parse_sinfo_gres_counts as parse_sinfo_gres_counts  # for placement
from .poller import wait, wait_until_running
from .query import (
    available_gpus,
    cancel,
    job_info,
    node_info,
    nodes_info,
    partition_nodes,
    partitions,
    queue,
    status,
)
from .reasons import PendingReason, explain_reason
from .submission import submit, submit_packed
from .watch import watch

__all__ = [
    "SlurmJob",
    "SlurmResult",
    "JobStatus",
    "JobInfo",
    "QueueResult",
    "StatusResult",
    "JobInfoResult",
    "NodeGres",
    "NodeInfo",
    "PartitionInfo",
    "submit",
    "submit_packed",
    "status",
    "cancel",
    "job_info",
    "queue",
    "wait",
    "partitions",
    "partition_nodes",
    "node_info",
    "nodes_info",
    "available_gpus",
    "first_node_from_nodelist",
    "wait_until_running",
    "follow", "FollowError", "watch", "JobEvent",
    "estimate_start", "StartEstimate", "PendingReason", "explain_reason",
]
