"""`RemoteInventory`: the parsed config resolved into clusters, machines and host lists."""

from __future__ import annotations

from ..errors import InvalidValueError
from .hardware import Chip, Cluster, ClusterMachine, get_chip
from .models import DispatchConfig, PartitionConfig, PlainHostConfig, SlurmHostConfig

__all__ = ["RemoteInventory"]


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
