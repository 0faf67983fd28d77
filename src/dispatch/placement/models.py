"""The dispatch config's types: clusters, partitions, plain and SLURM hosts, validated.

Frozen dataclasses checked in ``__post_init__``; every error is a `ConfigError` naming the
key and the bad value. Reading them from YAML is `dispatch.placement.config`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from .hardware import SUPPORTED_CHIPS
from .nvidia_smi import DEFAULT_BUSY_MIB, DEFAULT_BUSY_UTILIZATION

__all__ = [
    "ClusterConfig",
    "PartitionConfig",
    "PlainHostConfig",
    "SlurmHostConfig",
    "HostConfig",
    "DispatchConfig",
    "config_error",
]


def config_error(path: str, message: str, value: Any = ...,
                 source: str | None = None) -> ConfigError:
    """A `ConfigError` located at ``source: path`` with the bad value (when given)."""
    where = f"{source}: " if source else ""
    got = "" if value is ... else f" (got {value!r})"
    return ConfigError(f"{where}{path}: {message}{got}")


def _check_str(path: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise config_error(path, "must be a non-empty string", value)


def _check_str_list(path: str, value: Any) -> None:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise config_error(path, "must be a list of strings", value)
    for i, item in enumerate(value):
        _check_str(f"{path}[{i}]", item)


def _check_chips(path: str, chips: Any) -> None:
    if not isinstance(chips, Mapping):
        raise config_error(path, "must be a mapping of chip name to count", chips)
    for name, count in chips.items():
        if name not in SUPPORTED_CHIPS:
            raise config_error(f"{path}.{name}", f"unknown chip; supported: "
                        f"{', '.join(sorted(SUPPORTED_CHIPS))}", name)
        if isinstance(count, bool) or not isinstance(count, int):
            raise config_error(f"{path}.{name}", "chip count must be an integer", count)
        if count < 0:
            raise config_error(f"{path}.{name}", "chip count must be >= 0", count)


@dataclass(frozen=True)
class ClusterConfig:
    """Configuration for a compute cluster's paths.

    ``root``: where code is shipped; ``work``: job working dirs; ``log``: job logs
    (default ``{work}/logs``); ``share``: a directory every node sees (multi-node scripts);
    ``mount``/``cache_size``/``cache_dir``: a JuiceFS mount point and its cache.
    """

    root: str
    work: str
    log: str | None = None
    share: str | None = None
    mount: str | None = None
    cache_size: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        _check_str("root", self.root)
        _check_str("work", self.work)
        for name in ("log", "share", "mount", "cache_size", "cache_dir"):
            _check_str(name, getattr(self, name), optional=True)


@dataclass(frozen=True)
class PartitionConfig:
    """Configuration for a SLURM partition (``default``: used when a job names none)."""

    name: str
    default: bool = False
    constraint: str | None = None

    def __post_init__(self) -> None:
        _check_str("name", self.name)
        if not isinstance(self.default, bool):
            raise config_error("default", "must be true or false", self.default)
        _check_str("constraint", self.constraint, optional=True)


@dataclass(frozen=True)
class PlainHostConfig:
    """Configuration for a plain SSH host (no scheduler); ``chips``: chip name -> count.

    ``gpu_busy_mib``: a GPU is busy when one of its compute processes uses at least this
    many MiB (default 100); ``gpu_busy_utilization``: ... or when its utilization is at
    least this many % (default 90; None: never by utilization).
    """

    ssh: str
    cluster: str
    type: Literal["plain"] = "plain"
    chips: dict[str, int] = field(default_factory=dict)
    uv_groups: list[str] = field(default_factory=list)
    gpu_busy_mib: int = field(default=DEFAULT_BUSY_MIB, kw_only=True)
    gpu_busy_utilization: int | None = field(default=DEFAULT_BUSY_UTILIZATION, kw_only=True)

    def __post_init__(self) -> None:
        _check_str("ssh", self.ssh)
        _check_str("cluster", self.cluster)
        if self.type != "plain":
            raise config_error("type", "must be 'plain' for a PlainHostConfig", self.type)
        _check_chips("chips", self.chips)
        _check_str_list("uv_groups", self.uv_groups)
        mib, util = self.gpu_busy_mib, self.gpu_busy_utilization
        if isinstance(mib, bool) or not isinstance(mib, int) or mib < 1:
            raise config_error("gpu_busy_mib", "must be an integer >= 1 (MiB)", mib)
        if util is not None and (isinstance(util, bool) or not isinstance(util, int)
                                 or not 1 <= util <= 100):
            raise config_error("gpu_busy_utilization",
                               "must be an integer from 1 to 100 (%), or null for off", util)


@dataclass(frozen=True)
class SlurmHostConfig:
    """Configuration for a SLURM cluster login node.

    ``partitions`` (names are accepted and turned into `PartitionConfig`);
    ``account``/``qos``/``mem``/``exclude``: sbatch defaults; ``chips``: the most of each
    chip one job may use here (None: no limit; a chip missing from a given mapping is not
    offered); ``cpu_partitions``: partitions for CPU-only work; ``annotations``: free-form.
    """

    ssh: str
    cluster: str
    type: Literal["slurm"] = "slurm"
    partitions: list[PartitionConfig] = field(default_factory=list)
    account: str | None = None
    qos: str | None = None
    mem: str | None = None
    exclude: list[str] = field(default_factory=list)
    uv_groups: list[str] = field(default_factory=list)
    chips: dict[str, int] | None = None
    cpu_partitions: list[str] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_str("ssh", self.ssh)
        _check_str("cluster", self.cluster)
        if self.type != "slurm":
            raise config_error("type", "must be 'slurm' for a SlurmHostConfig", self.type)
        if isinstance(self.partitions, str) or not isinstance(self.partitions, list | tuple):
            raise config_error("partitions", "must be a list", self.partitions)
        parts = [PartitionConfig(p) if isinstance(p, str) else p for p in self.partitions]
        for i, p in enumerate(parts):
            if not isinstance(p, PartitionConfig):
                raise config_error(f"partitions[{i}]", "must be a name or a PartitionConfig", p)
        object.__setattr__(self, "partitions", parts)
        names = [p.name for p in parts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise config_error("partitions", "duplicate partition names", dupes)
        if sum(p.default for p in parts) > 1:
            raise config_error("partitions", "more than one default partition",
                        [p.name for p in parts if p.default])
        for name in ("account", "qos", "mem"):
            _check_str(name, getattr(self, name), optional=True)
        _check_str_list("exclude", self.exclude)
        _check_str_list("uv_groups", self.uv_groups)
        _check_str_list("cpu_partitions", self.cpu_partitions)
        if self.chips is not None:
            _check_chips("chips", self.chips)
        if not isinstance(self.annotations, Mapping):
            raise config_error("annotations", "must be a mapping", self.annotations)


HostConfig = PlainHostConfig | SlurmHostConfig


@dataclass(frozen=True)
class DispatchConfig:
    """Top-level dispatch configuration.

    ``mount``: JuiceFS metadata URL (a secret: use ``${oc.env:VAR}``); ``proxy``: an
    HTTP(S) proxy URL for jobs; ``priority``: hosts tried first by the solver, in order;
    ``gres_mapping``: chip name -> SLURM GRES type (``h100: h100`` for ``gpu:h100:N``).
    Cross references are checked: every host's cluster exists, priority names hosts.
    """

    mount: str | None = field(default=None, repr=False)
    proxy: str | None = field(default=None, repr=False)
    clusters: dict[str, ClusterConfig] = field(default_factory=dict)
    hosts: dict[str, PlainHostConfig | SlurmHostConfig] = field(default_factory=dict)
    priority: list[str] = field(default_factory=list)
    gres_mapping: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_str("mount", self.mount, optional=True)
        _check_str("proxy", self.proxy, optional=True)
        for name, cluster in self.clusters.items():
            if not isinstance(cluster, ClusterConfig):
                raise config_error(f"clusters.{name}", "must be a ClusterConfig", cluster)
        for name, host in self.hosts.items():
            if not isinstance(host, PlainHostConfig | SlurmHostConfig):
                raise config_error(f"hosts.{name}", "must be a PlainHostConfig or SlurmHostConfig",
                            host)
            if host.cluster not in self.clusters:
                raise config_error(f"hosts.{name}.cluster",
                            f"undefined cluster; defined: {sorted(self.clusters)}",
                            host.cluster)
        _check_str_list("priority", self.priority)
        for i, name in enumerate(self.priority):
            if name not in self.hosts:
                raise config_error(f"priority[{i}]", f"names no host; hosts: {sorted(self.hosts)}",
                            name)
        if not isinstance(self.gres_mapping, Mapping):
            raise config_error("gres_mapping", "must be a mapping of chip name to GRES type",
                        self.gres_mapping)
        for chip, gres in self.gres_mapping.items():
            if chip not in SUPPORTED_CHIPS:
                raise config_error(f"gres_mapping.{chip}", "unknown chip", chip)
            _check_str(f"gres_mapping.{chip}", gres)

    def ordered_hosts(self) -> list[str]:
        """Host names in solver order: `priority` first, then the rest in file order.

        Returns:
            Every configured host name, each once.
        """
        rest = [h for h in self.hosts if h not in self.priority]
        return [*dict.fromkeys(self.priority), *rest]

