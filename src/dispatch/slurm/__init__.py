"""The SLURM half of the API: job scripts, submission, queries and shared waits.

Pure parts (rendering in `.job`, parsing in `.parse`, states in `.states`)
are separate from the I/O coroutines (`.query`, `.submission`, `.poller`), which
all ride the SSH pool of the current context.
"""

from __future__ import annotations

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
from .nodelist import first_node_from_nodelist
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
from .submission import submit, submit_packed

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
]
