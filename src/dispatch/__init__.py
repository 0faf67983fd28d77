"""Remote dispatch utilities for SSH and SLURM.

This module is the blocking API: every coroutine function of `dispatch.aio` appears
here under the same name, with the same parameters and docstring, made blocking by
``dispatch._blocking.blocking`` (one background event loop owns the connections, so they
persist across calls). Classes and plain functions are the same objects as in
`dispatch.aio`. ``Pool`` lives in `dispatch.aio` only.
"""

from __future__ import annotations

from . import aio
from ._blocking import blocking as _blocking
from .aio import (
    SUPPORTED_CHIPS,
    Chip,
    Cluster,
    ClusterConfig,
    ClusterMachine,
    ConfigError,
    ConnectError,
    DispatchConfig,
    DispatchError,
    HardwareRequest,
    HardwareResult,
    HostConfig,
    HostKeyConnectError,
    HostKeyError,
    InvalidValueError,
    JobInfo,
    JobInfoResult,
    JobSpec,
    JobStatus,
    JuiceFSMount,
    NodeGres,
    NodeInfo,
    PartitionConfig,
    PartitionInfo,
    PlainHostConfig,
    QueueResult,
    RemoteInventory,
    ReplResult,
    RunResult,
    ShipError,
    SlurmHostConfig,
    SlurmJob,
    SlurmResult,
    SolveError,
    SolveResult,
    StatusResult,
    SubmitError,
    TunnelResult,
    first_node_from_nodelist,
    get_chip,
    hosts,
    load_dispatch_config,
    pack_files,
    parse_dispatch_config,
    snapshot,
    snapshot_dirty,
)

__version__ = "0.1.0"

# The blocking twins: one line each, all made by the same function.
run = _blocking(aio.run)
run_many = _blocking(aio.run_many)
copy_to = _blocking(aio.copy_to)
copy_from = _blocking(aio.copy_from)
write_file = _blocking(aio.write_file)
is_reachable = _blocking(aio.is_reachable)
forward_port = _blocking(aio.forward_port)
close_tunnel = _blocking(aio.close_tunnel)
submit = _blocking(aio.submit)
submit_packed = _blocking(aio.submit_packed)
status = _blocking(aio.status)
cancel = _blocking(aio.cancel)
job_info = _blocking(aio.job_info)
queue = _blocking(aio.queue)
wait = _blocking(aio.wait)
partitions = _blocking(aio.partitions)
partition_nodes = _blocking(aio.partition_nodes)
node_info = _blocking(aio.node_info)
nodes_info = _blocking(aio.nodes_info)
available_gpus = _blocking(aio.available_gpus)
wait_until_running = _blocking(aio.wait_until_running)
discover_plain_host = _blocking(aio.discover_plain_host)
discover_slurm_partitions = _blocking(aio.discover_slurm_partitions)
solve_or_raise = _blocking(aio.solve_or_raise)
ship = _blocking(aio.ship)
ship_dirty = _blocking(aio.ship_dirty)
ship_files = _blocking(aio.ship_files)
dispatch_repl = _blocking(aio.dispatch_repl)
end_repl = _blocking(aio.end_repl)

__all__ = [
    "RunResult",
    "TunnelResult",
    "DispatchError",
    "ConfigError",
    "HostKeyError",
    "InvalidValueError",
    "SolveError",
    "ShipError",
    "SubmitError",
    "hosts",
    "ConnectError",
    "HostKeyConnectError",
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
    "first_node_from_nodelist",
    "Chip",
    "SUPPORTED_CHIPS",
    "get_chip",
    "Cluster",
    "ClusterMachine",
    "HardwareRequest",
    "HardwareResult",
    "JuiceFSMount",
    "JobSpec",
    "ClusterConfig",
    "PartitionConfig",
    "PlainHostConfig",
    "SlurmHostConfig",
    "HostConfig",
    "DispatchConfig",
    "RemoteInventory",
    "load_dispatch_config",
    "parse_dispatch_config",
    "SolveResult",
    "snapshot",
    "snapshot_dirty",
    "pack_files",
    "ReplResult",
    "run",
    "run_many",
    "copy_to",
    "copy_from",
    "write_file",
    "is_reachable",
    "forward_port",
    "close_tunnel",
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
    "wait_until_running",
    "discover_plain_host",
    "discover_slurm_partitions",
    "solve_or_raise",
    "ship",
    "ship_dirty",
    "ship_files",
    "dispatch_repl",
    "end_repl",
    "aio",
]
