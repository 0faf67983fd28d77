"""Placement: where work runs.

``hardware`` (chips, requests, results) and ``models`` (the config's types) are values;
``config`` reads the YAML file and ``inventory`` resolves it; ``nvidia_smi`` parses GPU
queries and holds the busy rule; ``claims`` renders the shell that claims GPUs on a host;
``probe`` asks hosts (nvidia-smi, claims, sinfo) what is free; ``solve`` is the solver,
which takes those answers from an injected `AvailabilitySource`.

``__all__`` is the public list (what ``dispatch`` and ``dispatch.aio`` export from here);
the other names imported below are for the layers above (jupyter, cli), not public API.
"""

from __future__ import annotations

from .claims import CLAIM_FAILED_EXIT as CLAIM_FAILED_EXIT
from .claims import CLAIMED_PREFIX as CLAIMED_PREFIX
from .claims import claim_gpus_script as claim_gpus_script
from .claims import parse_claimed as parse_claimed
from .config import load_dispatch_config, parse_dispatch_config
from .hardware import (
    SUPPORTED_CHIPS,
    Chip,
    Cluster,
    ClusterMachine,
    HardwareRequest,
    HardwareResult,
    JobSpec,
    JuiceFSMount,
    get_chip,
)
from .hardware import GpuRef as GpuRef
from .inventory import RemoteInventory
from .models import (
    ClusterConfig,
    DispatchConfig,
    HostConfig,
    PartitionConfig,
    PlainHostConfig,
    SlurmHostConfig,
)
from .probe import AvailabilitySource as AvailabilitySource
from .probe import SshAvailability as SshAvailability
from .probe import discover_plain_host, discover_slurm_partitions
from .solve import SolveResult, solve_or_raise
from .solve import solve_with_reasons as solve_with_reasons

__all__ = [
    # hardware
    "Chip",
    "SUPPORTED_CHIPS",
    "get_chip",
    "Cluster",
    "ClusterMachine",
    "HardwareRequest",
    "HardwareResult",
    "JuiceFSMount",
    "JobSpec",
    # the config
    "ClusterConfig",
    "PartitionConfig",
    "PlainHostConfig",
    "SlurmHostConfig",
    "HostConfig",
    "DispatchConfig",
    "RemoteInventory",
    "load_dispatch_config",
    "parse_dispatch_config",
    "discover_plain_host",
    "discover_slurm_partitions",
    # the solver
    "SolveResult",
    "solve_or_raise",
]
