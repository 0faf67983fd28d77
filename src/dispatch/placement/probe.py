"""Ask hosts what they have and what is free: nvidia-smi on plain hosts, sinfo on SLURM.

The solver (`dispatch.placement.solve`) takes its live facts from an `AvailabilitySource`;
`SshAvailability` is the real one. ``discover_*`` read a host's hardware for a config.
Unknown GPUs are not dropped silently: each is logged as a WARNING naming the host and
the GPU, and ``strict=True`` turns them into an error. The parsing is pure and lives in
`dispatch.placement.nvidia_smi` and `dispatch.slurm.parse`.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
from collections.abc import Mapping, Sequence, Set
from typing import Protocol

from ..errors import DispatchError
from ..results import RunResult
from ..slurm import (
    SINFO_PARTITION_GRES_ARGS,
    SlurmJob,
    StartEstimate,
    available_gpus,
    estimate_start,
    parse_sinfo_gres_counts,
)
from ..ssh import run
from .claims import held_claims_command, parse_held_claims
from .models import PartitionConfig
from .nvidia_smi import (
    COMPUTE_APPS_QUERY,
    GPU_INVENTORY_QUERY,
    GPU_NAME_QUERY,
    GpuReading,
    count_chips,
    parse_gpu_readings,
)

__all__ = [
    "AvailabilitySource",
    "GresTable",
    "PlainGpus",
    "SshAvailability",
    "StartSource",
    "discover_plain_host",
    "discover_slurm_partitions",
    "partition_configs_from_sinfo",
    "plain_readings",
]

log = logging.getLogger(__name__)

#: Partition -> GRES types (a set) or GRES type -> most of it on one node (a mapping).
GresTable = Mapping[str, Mapping[str, int] | Set[str]]
#: What a plain host's GPUs are doing: one reading per GPU (the solver applies the host's
#: busy rule and learns which GPUs are free), or free counts decided elsewhere (per chip
#: name, or one number for all its GPUs; simulations and tests).
PlainGpus = Sequence[GpuReading] | Mapping[str, int] | int


class AvailabilitySource(Protocol):
    """Where the solver's facts about live hosts come from (SSH by default; fakes in tests)."""

    async def plain_free_gpus(self, ssh: str, seconds: float) -> PlainGpus:
        """What a plain host's GPUs are doing (see `PlainGpus`); raise DispatchError
        if it cannot tell (then none of its GPUs is available)."""
        ...

    async def partition_gres(self, ssh: str, seconds: float) -> GresTable:
        """Partition -> GPU GRES types its nodes carry, on a SLURM host.

        Either a set of types, or a mapping type -> most GPUs of it on one node (0: not
        known); with counts, partitions whose nodes are too small are rejected.
        """
        ...

    async def slurm_free_gpus(self, ssh: str, partition: str, gres_type: str,
                              seconds: float) -> list[tuple[str, int]]:
        """(node, free GPUs of ``gres_type``) in a partition, most free first."""
        ...


class StartSource(Protocol):
    """Where the solver's start-time estimates come from (``rank="earliest_start"``)."""

    async def slurm_start(self, ssh: str, partition: str, gres_type: str, count: int,
                          seconds: float) -> StartEstimate:
        """When Slurm would start a ``count``-GPU job of ``gres_type`` in a partition."""
        ...


async def _query(cmd: str | list[str], host: str, timeout: float | None) -> RunResult:
    # Read-only queries: one retry when the connection broke is safe.
    return await run(cmd, host, timeout=timeout, retries=1)


def _nvidia_smi_argv(nvidia_smi: str, args: list[str]) -> str:
    # A path like ~/bin/nvidia-smi must keep its ~ unquoted so the remote shell expands it.
    if nvidia_smi.startswith("~/"):
        exe = "~/" + shlex.quote(nvidia_smi[2:])
    else:
        exe = shlex.quote(nvidia_smi)
    return " ".join([exe, *(shlex.quote(a) for a in args)])


def _failure(what: str, result: RunResult, limit: int = 300) -> str:
    detail = (result.stderr or result.stdout).strip()[:limit]
    return f"{what} failed (exit {result.returncode}): {detail}"


_APPS_MARK = "--dispatch-compute-apps--"
_CLAIMS_MARK = "--dispatch-gpu-claims--"


def plain_readings(result: RunResult) -> tuple[GpuReading, ...]:
    """Read `SshAvailability.plain_command`'s result: one reading per GPU, claims marked.

    Args:
        result: The command's result.

    Returns:
        The GPUs nvidia-smi listed, in its order (empty when it listed none).

    Raises:
        DispatchError: nvidia-smi is missing (exit 127), failed, or printed something
            unparseable; the message says which, with nvidia-smi's own words.
    """
    if result.returncode == 127:
        raise DispatchError("no nvidia-smi on the login PATH")
    if not result.ok or _CLAIMS_MARK not in result.stdout:
        raise DispatchError(_failure("nvidia-smi", result))
    gpus_text, _, rest = result.stdout.partition(_APPS_MARK)
    apps_text, _, claims_text = rest.partition(_CLAIMS_MARK)
    try:
        readings = parse_gpu_readings(gpus_text, apps_text)
    except ValueError as exc:
        raise DispatchError(f"cannot parse nvidia-smi output: {exc}") from exc
    held = parse_held_claims(claims_text)
    return tuple(dataclasses.replace(r, claimed=True) if r.uuid in held else r
                 for r in readings)


class SshAvailability:
    """The real `AvailabilitySource`: nvidia-smi on plain hosts, sinfo on SLURM.

    Args:
        nvidia_smi: The nvidia-smi executable on plain hosts (a leading `~/` is expanded
            by the remote shell).
    """

    def __init__(self, nvidia_smi: str = "nvidia-smi") -> None:
        self.nvidia_smi = nvidia_smi

    def plain_command(self) -> str:
        """The one command asking a plain host about its GPUs: the GPUs, their compute
        processes, and the GPU claims of dispatch sessions, between marker lines.

        Returns:
            A shell command line.
        """
        return (f"{_nvidia_smi_argv(self.nvidia_smi, GPU_INVENTORY_QUERY)} && "
                f"echo {_APPS_MARK} && {_nvidia_smi_argv(self.nvidia_smi, COMPUTE_APPS_QUERY)}"
                f" && echo {_CLAIMS_MARK} && {held_claims_command()}")

    async def plain_free_gpus(self, ssh: str, seconds: float) -> tuple[GpuReading, ...]:
        """Every GPU of a plain host with its compute processes and claim (one round trip).

        Args:
            ssh: SSH alias of the host.
            seconds: Seconds allowed for the SSH command.

        Returns:
            One reading per GPU, `claimed` set for GPUs another dispatch session holds.

        Raises:
            DispatchError: nvidia-smi is missing, failed, or printed something unparseable.
        """
        result = await _query(self.plain_command(), ssh, seconds)
        return plain_readings(result)

    async def partition_gres(self, ssh: str, seconds: float) -> GresTable:
        """Partition -> GPU GRES type -> most of it on one node, from one sinfo call.

        Args:
            ssh: SSH alias of the SLURM login host.
            seconds: Seconds allowed for the SSH command.

        Returns:
            See `dispatch.slurm.parse.parse_sinfo_gres_counts`.

        Raises:
            DispatchError: sinfo failed (with its stderr).
        """
        result = await _query(SINFO_PARTITION_GRES_ARGS, ssh, seconds)
        if not result.ok:
            raise DispatchError(_failure("sinfo", result))
        return parse_sinfo_gres_counts(result.stdout)

    async def slurm_free_gpus(self, ssh: str, partition: str, gres_type: str,
                              seconds: float) -> list[tuple[str, int]]:
        """Nodes of a partition with their free GPUs of a GRES type (`available_gpus`).

        Args:
            ssh: SSH alias of the SLURM login host.
            partition: Partition name.
            gres_type: GRES type ("" for untyped GPUs: any).
            seconds: Seconds allowed for the SSH command.

        Returns:
            `(node, free GPUs)` tuples, most free first.
        """
        return await available_gpus(partition, ssh, gres_type or None, timeout=seconds)

    async def slurm_start(self, ssh: str, partition: str, gres_type: str, count: int,
                          seconds: float) -> StartEstimate:
        """When and where Slurm would start a one-node job of ``count`` GPUs
        (``sbatch --test-only``; nothing is queued).

        Args:
            ssh: SSH alias of the SLURM login host.
            partition: Partition name.
            gres_type: GRES type ("" for untyped GPUs).
            count: GPUs on the node.
            seconds: Seconds allowed for the SSH command.

        Returns:
            Slurm's estimate (`estimate_start`).
        """
        job = SlurmJob(name="dispatch-estimate", command="true", partition=partition,
                       gpus=count, gpu_type=gres_type or None)
        return await estimate_start(job, ssh, timeout=seconds)


async def discover_plain_host(ssh_alias: str, timeout: float = 30.0, *,
                              nvidia_smi: str = "nvidia-smi",
                              strict: bool = False) -> dict[str, int]:
    """Discover chips on a plain SSH host by querying nvidia-smi.

    A GPU that no rule recognises is logged as a warning and not counted (an error if
    `strict`). The query is read-only, so one retry after a broken connection is safe.

    Args:
        ssh_alias: SSH config alias of the host.
        timeout: Seconds allowed for the SSH command.
        nvidia_smi: The nvidia-smi executable, when it is not on the login PATH (a leading
            `~/` is expanded by the remote shell).
        strict: Raise instead of warning when a GPU is not in `SUPPORTED_CHIPS`.

    Returns:
        Chip name -> count, e.g. `{"h100": 8}`; `{}` when the host has no nvidia-smi.

    Raises:
        DispatchError: The SSH command or nvidia-smi failed (with its stderr), its output
            could not be parsed, or (with `strict`) a GPU is unknown.
    """
    cmd = _nvidia_smi_argv(nvidia_smi, GPU_NAME_QUERY)
    result = await _query(cmd, ssh_alias, timeout)
    if result.returncode == 127:
        log.info("%s: no nvidia-smi on the login PATH; no GPUs", ssh_alias)
        return {}
    if not result.ok:
        raise DispatchError(f"{ssh_alias}: {_failure('nvidia-smi', result, 500)}")
    try:
        found = count_chips(result.stdout)
    except ValueError as exc:
        raise DispatchError(f"{ssh_alias}: cannot parse nvidia-smi output: {exc}") from exc
    for name, count in found.unknown.items():
        log.warning("%s: %d GPU(s) %r not in SUPPORTED_CHIPS; not counted", ssh_alias,
                    count, name)
    if found.unknown and strict:
        raise DispatchError(
            f"{ssh_alias}: unknown GPU(s): "
            + ", ".join(f"{n!r} x{c}" for n, c in found.unknown.items())
        )
    return found.chips


def partition_configs_from_sinfo(text: str) -> list[PartitionConfig]:
    """Parse `sinfo -h -o %P` (or `%P|...`) lines: one PartitionConfig per partition.

    sinfo prints a partition once per node-state group; the default one ends with `*`.
    (`dispatch.slurm.parse.parse_sinfo_partitions` reads a richer format into
    `PartitionInfo`; this one builds config entries.)

    Args:
        text: sinfo's standard output.

    Returns:
        One `PartitionConfig` per distinct partition, first-seen order.
    """
    seen: dict[str, bool] = {}
    for line in text.splitlines():
        name = line.split("|", 1)[0].strip()
        if not name:
            continue
        default = name.endswith("*")
        name = name.rstrip("*")
        seen[name] = seen.get(name, False) or default
    return [PartitionConfig(name=n, default=d) for n, d in seen.items()]


async def discover_slurm_partitions(ssh_alias: str,
                                    timeout: float = 30.0,
                                    ) -> list[PartitionConfig]:
    """Discover SLURM partitions on a host.

    Runs `sinfo` on the login host; the partition sinfo marks with `*` gets
    `default=True`.

    Args:
        ssh_alias: SSH config alias of the SLURM login host.
        timeout: Seconds allowed for the SSH command.

    Returns:
        One `PartitionConfig` per partition, in sinfo's order.

    Raises:
        DispatchError: sinfo could not be run (with its stderr).
    """
    result = await _query(["sinfo", "--noheader", "--format=%P"], ssh_alias, timeout)
    if not result.ok:
        raise DispatchError(f"{ssh_alias}: {_failure('sinfo', result, 500)}")
    return partition_configs_from_sinfo(result.stdout)
