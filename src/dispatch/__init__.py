"""Remote dispatch utilities for SSH and SLURM.

This module is the blocking API: every coroutine function of `dispatch.aio` appears here
under the same name, with the same parameters and docstring, made blocking by
``dispatch._blocking`` (one background event loop owns the connections, so they persist
across calls). Classes and plain functions are the same objects as in `dispatch.aio`.
``Pool`` lives in `dispatch.aio` only.

Importing `dispatch` is cheap: the API (asyncssh, OmegaConf, the solver...) is imported on
first use of one of its names, so `dispatch --help` and short scripts start fast.
"""

from __future__ import annotations

import importlib

from ._version import __version__ as __version__

# Not `from typing import TYPE_CHECKING`: importing typing costs milliseconds on every CLI
# call, and type checkers treat any name TYPE_CHECKING as true.
TYPE_CHECKING = False

if TYPE_CHECKING:  # what type checkers see; at run time `__getattr__` below builds it
    from typing import Any

    from . import _blocking, aio
    from .aio import SUPPORTED_CHIPS as SUPPORTED_CHIPS
    from .aio import Chip as Chip
    from .aio import Cluster as Cluster
    from .aio import ClusterConfig as ClusterConfig
    from .aio import ClusterMachine as ClusterMachine
    from .aio import ConfigError as ConfigError
    from .aio import ConnectError as ConnectError
    from .aio import DispatchConfig as DispatchConfig
    from .aio import DispatchError as DispatchError
    from .aio import FollowError as FollowError
    from .aio import HardwareRequest as HardwareRequest
    from .aio import HardwareResult as HardwareResult
    from .aio import HostConfig as HostConfig
    from .aio import HostKeyConnectError as HostKeyConnectError
    from .aio import HostKeyError as HostKeyError
    from .aio import InvalidValueError as InvalidValueError
    from .aio import JobEvent as JobEvent
    from .aio import JobInfo as JobInfo
    from .aio import JobInfoResult as JobInfoResult
    from .aio import JobSpec as JobSpec
    from .aio import JobStatus as JobStatus
    from .aio import JuiceFSMount as JuiceFSMount
    from .aio import NodeGres as NodeGres
    from .aio import NodeInfo as NodeInfo
    from .aio import PartitionConfig as PartitionConfig
    from .aio import PartitionInfo as PartitionInfo
    from .aio import PendingReason as PendingReason
    from .aio import PlainHostConfig as PlainHostConfig
    from .aio import QueueResult as QueueResult
    from .aio import RemoteInventory as RemoteInventory
    from .aio import ReplResult as ReplResult
    from .aio import RunResult as RunResult
    from .aio import ShipError as ShipError
    from .aio import SlurmHostConfig as SlurmHostConfig
    from .aio import SlurmJob as SlurmJob
    from .aio import SlurmResult as SlurmResult
    from .aio import SolveError as SolveError
    from .aio import SolveResult as SolveResult
    from .aio import StartEstimate as StartEstimate
    from .aio import StatusResult as StatusResult
    from .aio import SubmitError as SubmitError
    from .aio import TunnelResult as TunnelResult
    from .aio import explain_reason as explain_reason
    from .aio import first_node_from_nodelist as first_node_from_nodelist
    from .aio import get_chip as get_chip
    from .aio import hosts as hosts
    from .aio import load_dispatch_config as load_dispatch_config
    from .aio import pack_files as pack_files
    from .aio import parse_dispatch_config as parse_dispatch_config
    from .aio import snapshot as snapshot
    from .aio import snapshot_dirty as snapshot_dirty

    run = _blocking.blocking(aio.run)
    run_many = _blocking.blocking(aio.run_many)
    copy_to = _blocking.blocking(aio.copy_to)
    copy_from = _blocking.blocking(aio.copy_from)
    write_file = _blocking.blocking(aio.write_file)
    is_reachable = _blocking.blocking(aio.is_reachable)
    forward_port = _blocking.blocking(aio.forward_port)
    close_tunnel = _blocking.blocking(aio.close_tunnel)
    submit = _blocking.blocking(aio.submit)
    submit_packed = _blocking.blocking(aio.submit_packed)
    status = _blocking.blocking(aio.status)
    cancel = _blocking.blocking(aio.cancel)
    job_info = _blocking.blocking(aio.job_info)
    queue = _blocking.blocking(aio.queue)
    wait = _blocking.blocking(aio.wait)
    partitions = _blocking.blocking(aio.partitions)
    partition_nodes = _blocking.blocking(aio.partition_nodes)
    node_info = _blocking.blocking(aio.node_info)
    nodes_info = _blocking.blocking(aio.nodes_info)
    available_gpus = _blocking.blocking(aio.available_gpus)
    wait_until_running = _blocking.blocking(aio.wait_until_running)
    estimate_start = _blocking.blocking(aio.estimate_start)
    discover_plain_host = _blocking.blocking(aio.discover_plain_host)
    discover_slurm_partitions = _blocking.blocking(aio.discover_slurm_partitions)
    solve_or_raise = _blocking.blocking(aio.solve_or_raise)
    ship = _blocking.blocking(aio.ship)
    ship_dirty = _blocking.blocking(aio.ship_dirty)
    ship_files = _blocking.blocking(aio.ship_files)
    dispatch_repl = _blocking.blocking(aio.dispatch_repl)
    end_repl = _blocking.blocking(aio.end_repl)
    follow = _blocking.blocking_iter(aio.follow)
    watch = _blocking.blocking_iter(aio.watch)

_SUBPACKAGES = frozenset({
    "agent", "aio", "cli", "errors", "jupyter", "placement", "results", "shipping", "slurm",
    "ssh",
})


def _build() -> dict[str, Any]:
    """Every public name: aio's objects, with coroutine functions made blocking (once)."""
    import inspect

    from . import _blocking, aio

    names: dict[str, Any] = {}
    for name in aio.__all__:
        if name in aio.AIO_ONLY:
            continue
        obj = getattr(aio, name)
        if inspect.iscoroutinefunction(obj):
            obj = _blocking.blocking(obj)
        elif inspect.isasyncgenfunction(obj):
            obj = _blocking.blocking_iter(obj)
        names[name] = obj
    names["__all__"] = [*names, "aio"]
    return names


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name.startswith("_") and name != "__all__":  # private modules: the import system
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    public = _build()
    globals().update(public)  # later lookups never come back here
    try:
        return public[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *__getattr__("__all__")})
