"""The dispatch config: clusters and hosts from a YAML file, validated with located errors.

``load_dispatch_config(path)`` reads YAML with OmegaConf (so ``${oc.env:VAR}`` keeps
secrets out of the file) and ``parse_dispatch_config(cfg)`` turns it into frozen
dataclasses. Every error is a `ConfigError` naming the file, the
key path (``hosts.gpu1.chips.h100``) and the bad value. See ``examples/dispatch.yaml``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError, InvalidValueError
from .hardware import SUPPORTED_CHIPS, Chip, Cluster, ClusterMachine, get_chip
from .probe import discover_plain_host, discover_slurm_partitions

__all__ = [
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
]

log = logging.getLogger(__name__)


def _fail(path: str, message: str, value: Any = ..., source: str | None = None) -> ConfigError:
    where = f"{source}: " if source else ""
    got = "" if value is ... else f" (got {value!r})"
    return ConfigError(f"{where}{path}: {message}{got}")


def _check_str(path: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, "must be a non-empty string", value)


def _check_str_list(path: str, value: Any) -> None:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise _fail(path, "must be a list of strings", value)
    for i, item in enumerate(value):
        _check_str(f"{path}[{i}]", item)


def _check_chips(path: str, chips: Any) -> None:
    if not isinstance(chips, Mapping):
        raise _fail(path, "must be a mapping of chip name to count", chips)
    for name, count in chips.items():
        if name not in SUPPORTED_CHIPS:
            raise _fail(f"{path}.{name}", f"unknown chip; supported: "
                        f"{', '.join(sorted(SUPPORTED_CHIPS))}", name)
        if isinstance(count, bool) or not isinstance(count, int):
            raise _fail(f"{path}.{name}", "chip count must be an integer", count)
        if count < 0:
            raise _fail(f"{path}.{name}", "chip count must be >= 0", count)


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
            raise _fail("default", "must be true or false", self.default)
        _check_str("constraint", self.constraint, optional=True)


@dataclass(frozen=True)
class PlainHostConfig:
    """Configuration for a plain SSH host (no scheduler); ``chips``: chip name -> count."""

    ssh: str
    cluster: str
    type: Literal["plain"] = "plain"
    chips: dict[str, int] = field(default_factory=dict)
    uv_groups: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_str("ssh", self.ssh)
        _check_str("cluster", self.cluster)
        if self.type != "plain":
            raise _fail("type", "must be 'plain' for a PlainHostConfig", self.type)
        _check_chips("chips", self.chips)
        _check_str_list("uv_groups", self.uv_groups)


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
            raise _fail("type", "must be 'slurm' for a SlurmHostConfig", self.type)
        if isinstance(self.partitions, str) or not isinstance(self.partitions, list | tuple):
            raise _fail("partitions", "must be a list", self.partitions)
        parts = [PartitionConfig(p) if isinstance(p, str) else p for p in self.partitions]
        for i, p in enumerate(parts):
            if not isinstance(p, PartitionConfig):
                raise _fail(f"partitions[{i}]", "must be a name or a PartitionConfig", p)
        object.__setattr__(self, "partitions", parts)
        names = [p.name for p in parts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise _fail("partitions", "duplicate partition names", dupes)
        if sum(p.default for p in parts) > 1:
            raise _fail("partitions", "more than one default partition",
                        [p.name for p in parts if p.default])
        for name in ("account", "qos", "mem"):
            _check_str(name, getattr(self, name), optional=True)
        _check_str_list("exclude", self.exclude)
        _check_str_list("uv_groups", self.uv_groups)
        _check_str_list("cpu_partitions", self.cpu_partitions)
        if self.chips is not None:
            _check_chips("chips", self.chips)
        if not isinstance(self.annotations, Mapping):
            raise _fail("annotations", "must be a mapping", self.annotations)


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
                raise _fail(f"clusters.{name}", "must be a ClusterConfig", cluster)
        for name, host in self.hosts.items():
            if not isinstance(host, PlainHostConfig | SlurmHostConfig):
                raise _fail(f"hosts.{name}", "must be a PlainHostConfig or SlurmHostConfig",
                            host)
            if host.cluster not in self.clusters:
                raise _fail(f"hosts.{name}.cluster",
                            f"undefined cluster; defined: {sorted(self.clusters)}",
                            host.cluster)
        _check_str_list("priority", self.priority)
        for i, name in enumerate(self.priority):
            if name not in self.hosts:
                raise _fail(f"priority[{i}]", f"names no host; hosts: {sorted(self.hosts)}",
                            name)
        if not isinstance(self.gres_mapping, Mapping):
            raise _fail("gres_mapping", "must be a mapping of chip name to GRES type",
                        self.gres_mapping)
        for chip, gres in self.gres_mapping.items():
            if chip not in SUPPORTED_CHIPS:
                raise _fail(f"gres_mapping.{chip}", "unknown chip", chip)
            _check_str(f"gres_mapping.{chip}", gres)

    def ordered_hosts(self) -> list[str]:
        """Host names in solver order: `priority` first, then the rest in file order.

        Returns:
            Every configured host name, each once.
        """
        rest = [h for h in self.hosts if h not in self.priority]
        return [*dict.fromkeys(self.priority), *rest]


# --- parsing ---------------------------------------------------------------------------

_TOP_KEYS = {"mount", "proxy", "clusters", "hosts", "priority", "gres_mapping"}


_ENV_MISSING = re.compile(r"Environment variable '([^']*)' not found")


def _plain(node: Any, path: str, source: str | None) -> Any:
    """Resolve an OmegaConf node to plain Python, reporting interpolation errors located."""
    try:
        if isinstance(node, DictConfig | ListConfig):
            return OmegaConf.to_container(node, resolve=True)
        return node
    except OmegaConfBaseException as exc:
        # OmegaConf knows the failing key (full_key); its message carries internals
        # (object_type=..., a second full_key line) that only the first line is worth.
        key = str(getattr(exc, "full_key", "") or "") or path or "<root>"
        text = str(getattr(exc, "msg", "") or exc).splitlines()[0].strip()
        missing = _ENV_MISSING.search(text)
        if missing:
            text = (f"environment variable {missing.group(1)!r} is not set (give it a "
                    f"default with ${{oc.env:{missing.group(1)},default}})")
        raise _fail(key, f"cannot resolve interpolation: {text}", source=source) from None


def _mapping(value: Any, path: str, source: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(path, "must be a mapping", value, source)
    return dict(value)


def _located(path: str, source: str | None, exc: Exception) -> ConfigError:
    # Re-raise a dataclass validation error with the key path and file in front of it.
    msg = str(exc)
    return ConfigError(f"{source + ': ' if source else ''}{path}.{msg}")


def _parse_cluster(name: str, raw: Any, source: str | None) -> ClusterConfig:
    path = f"clusters.{name}"
    data = _mapping(raw, path, source)
    allowed = {"root", "work", "log", "share", "mount", "cache_size", "cache_dir"}
    _no_unknown(data, allowed, path, source)
    for key in ("root", "work"):
        if key not in data:
            raise _fail(f"{path}.{key}", "is required", source=source)
    if isinstance(data.get("cache_size"), int | float) and not isinstance(
            data["cache_size"], bool):
        data["cache_size"] = str(data["cache_size"])  # `cache_size: 1024` means "1024"
    try:
        cfg = ClusterConfig(**data)
    except (ConfigError, InvalidValueError, TypeError) as exc:
        raise _located(path, source, exc) from exc
    try:
        # The name and paths must also make a valid `Cluster` (what the solver builds),
        # so a bad name fails here, located, not later inside solve.
        Cluster(name=name, root=cfg.root, work=cfg.work, log=cfg.log or "", share=cfg.share,
                mount=cfg.mount, cache_size=cfg.cache_size, cache_dir=cfg.cache_dir)
    except InvalidValueError as exc:
        raise _fail(path, str(exc), source=source) from None
    return cfg


def _no_unknown(data: Mapping[str, Any], allowed: set[str], path: str,
                source: str | None) -> None:
    for key in data:
        if key not in allowed:
            raise _fail(f"{path}.{key}", f"unknown key; allowed: {sorted(allowed)}", key, source)


def _parse_partition(raw: Any, path: str, source: str | None) -> PartitionConfig:
    if isinstance(raw, str):
        return PartitionConfig(raw)
    data = _mapping(raw, path, source)
    _no_unknown(data, {"name", "default", "constraint"}, path, source)
    if "name" not in data:
        raise _fail(f"{path}.name", "is required", source=source)
    try:
        return PartitionConfig(**data)
    except (ConfigError, InvalidValueError, TypeError) as exc:
        raise _located(path, source, exc) from exc


def _parse_host(name: str, raw: Any, source: str | None) -> PlainHostConfig | SlurmHostConfig:
    path = f"hosts.{name}"
    data = _mapping(raw, path, source)
    if "ssh" not in data:
        raise _fail(f"{path}.ssh", "is required (the ssh alias of the host)", source=source)
    kind = data.get("type", "plain")
    try:
        if kind == "plain":
            _no_unknown(data, {"ssh", "cluster", "type", "chips", "uv_groups"}, path, source)
            if "chips" in data:
                data["chips"] = _mapping(data["chips"], f"{path}.chips", source)
            _require_cluster(data, path, source)
            return PlainHostConfig(**data)
        if kind == "slurm":
            allowed = {"ssh", "cluster", "type", "partitions", "account", "qos", "mem",
                       "exclude", "uv_groups", "chips", "cpu_partitions", "annotations"}
            _no_unknown(data, allowed, path, source)
            parts = data.get("partitions") or []
            if not isinstance(parts, list):
                raise _fail(f"{path}.partitions", "must be a list of names or mappings",
                            parts, source)
            data["partitions"] = [_parse_partition(p, f"{path}.partitions[{i}]", source)
                                  for i, p in enumerate(parts)]
            if data.get("chips") is not None:
                data["chips"] = _mapping(data["chips"], f"{path}.chips", source)
            if "annotations" in data:
                ann = _mapping(data["annotations"], f"{path}.annotations", source)
                data["annotations"] = {str(k): str(v) for k, v in ann.items()}
            _require_cluster(data, path, source)
            return SlurmHostConfig(**data)
    except (InvalidValueError, TypeError) as exc:
        raise _located(path, source, exc) from exc
    except ConfigError as exc:
        if str(exc).startswith((f"{source}: " if source else "") + path):
            raise
        raise _located(path, source, exc) from exc
    raise _fail(f"{path}.type", "unknown host type; use 'plain' or 'slurm'", kind, source)


def _require_cluster(data: Mapping[str, Any], path: str, source: str | None) -> None:
    if "cluster" not in data:
        raise _fail(f"{path}.cluster", "is required", source=source)


def parse_dispatch_config(cfg: DictConfig | Mapping[str, Any], *,
                          source: str | None = None) -> DispatchConfig:
    """Parse dispatch configuration from OmegaConf.

    Interpolations such as `${oc.env:JUICEFS_REDIS}` are resolved here; every value is
    validated.

    Args:
        cfg: OmegaConf config (or a plain mapping) with `clusters` and `hosts` keys (and
            optionally `mount`, `proxy`, `priority`, `gres_mapping`).
        source: Name of the file the config came from; prefixes error messages.

    Returns:
        The parsed, validated `DispatchConfig`.

    Raises:
        ConfigError: A key or value is invalid; the message names the key path (such as
            `hosts.gpu1.chips.h100`) and the bad value.
    """
    if isinstance(cfg, DictConfig):
        data = _plain(cfg, "", source)
    elif isinstance(cfg, Mapping):
        try:
            node = OmegaConf.create(dict(cfg))
        except OmegaConfBaseException as exc:
            key = str(getattr(exc, "full_key", "") or "") or "<root>"
            text = str(getattr(exc, "msg", "") or exc).splitlines()[0].strip()
            raise _fail(key, f"unsupported value: {text}", source=source) from None
        data = _plain(node, "", source)
    else:
        raise _fail("<root>", "must be a mapping", cfg, source)
    if not isinstance(data, dict):
        raise _fail("<root>", "must be a mapping", data, source)
    _no_unknown(data, _TOP_KEYS, "<root>", source)
    clusters = {str(n): _parse_cluster(str(n), c, source)
                for n, c in _mapping(data.get("clusters"), "clusters", source).items()}
    hosts = {str(n): _parse_host(str(n), h, source)
             for n, h in _mapping(data.get("hosts"), "hosts", source).items()}
    priority = data.get("priority") or []
    if not isinstance(priority, list):
        raise _fail("priority", "must be a list of host names", priority, source)
    gres = _mapping(data.get("gres_mapping"), "gres_mapping", source)
    try:
        return DispatchConfig(
            mount=data.get("mount"),
            proxy=data.get("proxy"),
            clusters=clusters,
            hosts=hosts,
            priority=priority,
            gres_mapping={str(k): v for k, v in gres.items()},
        )
    except ConfigError as exc:
        raise ConfigError(f"{source + ': ' if source else ''}{exc}") from exc


def _yaml_error(exc: yaml.MarkedYAMLError) -> str:
    """One line for a YAML error: its 1-based line and column, and what went wrong."""
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = " ".join(x for x in (exc.problem, exc.context) if x) or str(exc)
    return f"invalid YAML at {where}{what}"


def load_dispatch_config(path: str | Path) -> DispatchConfig:
    """Load dispatch configuration from a YAML file.

    The file is read with OmegaConf, so `${oc.env:VAR}` keeps secrets out of it.

    Args:
        path: Path to the YAML config file (`~` is expanded).

    Returns:
        The parsed, validated `DispatchConfig`.

    Raises:
        ConfigError: The file is missing or not valid YAML, or a key or value is invalid
            (the message names the file, the key path and the bad value).
    """
    p = Path(path).expanduser()
    try:
        cfg = OmegaConf.load(p)
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: config file not found") from exc
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{p}: {_yaml_error(exc)}") from None
    except (OSError, OmegaConfBaseException, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: cannot read YAML: {exc}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{p}: <root>: must be a mapping (got a list)")
    if len(cfg) == 0:
        # An empty (or comments-only) file is almost surely the wrong file.
        raise ConfigError(f"{p}: the file is empty; expected at least `clusters` and `hosts` "
                          f"(see examples/dispatch.yaml)")
    return parse_dispatch_config(cfg, source=str(p))


# --- inventory -------------------------------------------------------------------------


class RemoteInventory:
    """Resolves dispatch config into usable objects (clusters, chips, host lists).

    Args:
        config: The parsed dispatch configuration to resolve.
    """

    def __init__(self, config: DispatchConfig) -> None:
        self.config = config
        self._clusters: dict[str, Cluster] = {}

    def get_cluster(self, name: str) -> Cluster:
        """Get or create a Cluster object by name.

        The `Cluster` is built from the config's `clusters` entry on first use, then cached.

        Args:
            name: Cluster name (a key of the config's `clusters`).

        Returns:
            The cluster's paths and mount settings.

        Raises:
            InvalidValueError: No cluster of that name is configured.
        """
        cached = self._clusters.get(name)
        if cached is not None:
            return cached
        cfg = self.config.clusters.get(name)
        if cfg is None:
            raise InvalidValueError(
                f"unknown cluster {name!r}; defined: {sorted(self.config.clusters)}"
            )
        cluster = Cluster(name=name, root=cfg.root, work=cfg.work, log=cfg.log or "",
                          share=cfg.share, mount=cfg.mount, cache_size=cfg.cache_size,
                          cache_dir=cfg.cache_dir)
        self._clusters[name] = cluster
        return cluster

    def get_host(self, name: str) -> PlainHostConfig | SlurmHostConfig:
        """Get host configuration by name.

        Args:
            name: Host name (a key of the config's `hosts`).

        Returns:
            The host's configuration.

        Raises:
            InvalidValueError: No host of that name is configured.
        """
        host = self.config.hosts.get(name)
        if host is None:
            raise InvalidValueError(
                f"unknown host {name!r}; configured: {sorted(self.config.hosts)}"
            )
        return host

    def get_chip(self, name: str) -> Chip:
        """Get a Chip by name from SUPPORTED_CHIPS.

        Args:
            name: Chip name, case-insensitive (e.g. `"h100"`).

        Returns:
            The chip.

        Raises:
            InvalidValueError: The name is not in `SUPPORTED_CHIPS`.
        """
        return get_chip(name)

    def get_machine(self, name: str) -> ClusterMachine:
        """Resolve the host `name` against its cluster.

        Args:
            name: Host name (a key of the config's `hosts`).

        Returns:
            The host with its cluster, scheduler kind and chips.

        Raises:
            InvalidValueError: The host, or the cluster it names, is not configured.
        """
        host = self.get_host(name)
        return ClusterMachine(name=name, ssh=host.ssh, cluster=self.get_cluster(host.cluster),
                              is_slurm=isinstance(host, SlurmHostConfig),
                              chips=dict(host.chips or {}))

    def plain_hosts(self) -> list[str]:
        """List all plain SSH hosts.

        Returns:
            Names of the hosts of type `plain`, in config order.
        """
        return [n for n, h in self.config.hosts.items() if isinstance(h, PlainHostConfig)]

    def slurm_hosts(self) -> list[str]:
        """List all SLURM hosts.

        Returns:
            Names of the hosts of type `slurm`, in config order.
        """
        return [n for n, h in self.config.hosts.items() if isinstance(h, SlurmHostConfig)]

    def _plain_configs(self) -> list[tuple[str, PlainHostConfig]]:
        return [(n, h) for n, h in self.config.hosts.items() if isinstance(h, PlainHostConfig)]

    def hosts_with_chip(self, chip: str | Chip) -> list[str]:
        """Find plain hosts that have a specific chip type.

        Args:
            chip: Chip name (case-insensitive) or `Chip`.

        Returns:
            Names of the plain hosts with at least one such chip, in config order.

        Raises:
            InvalidValueError: The chip is not in `SUPPORTED_CHIPS`.
        """
        name = get_chip(chip).name
        return [n for n, h in self._plain_configs() if h.chips.get(name, 0) > 0]

    def total_chips(self, chip: str | Chip) -> int:
        """Get total count of a chip type across all plain hosts.

        Args:
            chip: Chip name (case-insensitive) or `Chip`.

        Returns:
            The number of such chips on all plain hosts together.

        Raises:
            InvalidValueError: The chip is not in `SUPPORTED_CHIPS`.
        """
        name = get_chip(chip).name
        return sum(h.chips.get(name, 0) for _, h in self._plain_configs())

    def default_partition(self, host: str) -> PartitionConfig | None:
        """Get the default partition for a SLURM host.

        Args:
            host: Host name (a key of the config's `hosts`).

        Returns:
            The partition marked `default`, else the host's first partition; None for a plain
            host or a SLURM host without partitions.

        Raises:
            InvalidValueError: No host of that name is configured.
        """
        cfg = self.get_host(host)
        if not isinstance(cfg, SlurmHostConfig) or not cfg.partitions:
            return None
        for part in cfg.partitions:
            if part.default:
                return part
        return cfg.partitions[0]
