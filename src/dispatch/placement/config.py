"""The dispatch config file: clusters and hosts read from YAML, validated with located errors.

``load_dispatch_config(path)`` reads YAML with OmegaConf (so ``${oc.env:VAR}`` keeps
secrets out of the file) and ``parse_dispatch_config(cfg)`` turns it into the frozen
dataclasses of `dispatch.placement.models`. Every error is a `ConfigError` naming the file,
the key path (``hosts.gpu1.chips.h100``) and the bad value. See ``examples/dispatch.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError, InvalidValueError
from .hardware import Cluster
from .models import (
    ClusterConfig,
    DispatchConfig,
    PartitionConfig,
    PlainHostConfig,
    SlurmHostConfig,
    config_error,
)

__all__ = ["load_dispatch_config", "parse_dispatch_config"]

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
        raise config_error(key, f"cannot resolve interpolation: {text}", source=source) from None


def _mapping(value: Any, path: str, source: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise config_error(path, "must be a mapping", value, source)
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
            raise config_error(f"{path}.{key}", "is required", source=source)
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
        raise config_error(path, str(exc), source=source) from None
    return cfg


def _no_unknown(data: Mapping[str, Any], allowed: set[str], path: str,
                source: str | None) -> None:
    for key in data:
        if key not in allowed:
            raise config_error(f"{path}.{key}", f"unknown key; allowed: {sorted(allowed)}",
                               key, source)


def _parse_partition(raw: Any, path: str, source: str | None) -> PartitionConfig:
    if isinstance(raw, str):
        return PartitionConfig(raw)
    data = _mapping(raw, path, source)
    _no_unknown(data, {"name", "default", "constraint"}, path, source)
    if "name" not in data:
        raise config_error(f"{path}.name", "is required", source=source)
    try:
        return PartitionConfig(**data)
    except (ConfigError, InvalidValueError, TypeError) as exc:
        raise _located(path, source, exc) from exc


def _parse_host(name: str, raw: Any, source: str | None) -> PlainHostConfig | SlurmHostConfig:
    path = f"hosts.{name}"
    data = _mapping(raw, path, source)
    if "ssh" not in data:
        raise config_error(f"{path}.ssh", "is required (the ssh alias of the host)", source=source)
    kind = data.get("type", "plain")
    try:
        if kind == "plain":
            _no_unknown(data, {"ssh", "cluster", "type", "chips", "uv_groups", "gpu_busy_mib",
                               "gpu_busy_utilization"}, path, source)
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
                raise config_error(f"{path}.partitions", "must be a list of names or mappings",
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
    raise config_error(f"{path}.type", "unknown host type; use 'plain' or 'slurm'", kind, source)


def _require_cluster(data: Mapping[str, Any], path: str, source: str | None) -> None:
    if "cluster" not in data:
        raise config_error(f"{path}.cluster", "is required", source=source)


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
            raise config_error(key, f"unsupported value: {text}", source=source) from None
        data = _plain(node, "", source)
    else:
        raise config_error("<root>", "must be a mapping", cfg, source)
    if not isinstance(data, dict):
        raise config_error("<root>", "must be a mapping", data, source)
    _no_unknown(data, _TOP_KEYS, "<root>", source)
    clusters = {str(n): _parse_cluster(str(n), c, source)
                for n, c in _mapping(data.get("clusters"), "clusters", source).items()}
    hosts = {str(n): _parse_host(str(n), h, source)
             for n, h in _mapping(data.get("hosts"), "hosts", source).items()}
    priority = data.get("priority") or []
    if not isinstance(priority, list):
        raise config_error("priority", "must be a list of host names", priority, source)
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
