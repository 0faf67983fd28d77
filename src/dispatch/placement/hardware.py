"""Hardware vocabulary: chips, clusters, hardware requests and results, job identities.

Pure values (frozen dataclasses validated in ``__post_init__``); no I/O here. The solver
(`dispatch.placement.solve`) turns a `HardwareRequest` into a `HardwareResult`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from .._validate import check_name, check_path
from ..errors import InvalidValueError
from ..slurm import JuiceFSMount

# GpuRef (the type of HardwareResult.free_gpus) is not listed yet: listing it here would
# add it to dispatch.aio's star import but not to dispatch's hand-written list.
__all__ = [
    "Chip",
    "SUPPORTED_CHIPS",
    "get_chip",
    "Cluster",
    "ClusterMachine",
    "HardwareRequest",
    "HardwareResult",
    "JuiceFSMount",
    "JobSpec",
]

_GIB = 1024**3
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Chip:
    """An accelerator model (or ``cpu``): canonical name, display name, memory in bytes."""

    name: str
    display_name: str
    memory: int
    kind: str = field(default="gpu", kw_only=True)

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower() or not _NAME_RE.match(self.name):
            raise InvalidValueError(f"chip name must be lower-case [a-z0-9._-]: {self.name!r}")
        if self.memory < 0:
            raise InvalidValueError(f"chip {self.name!r}: memory must be >= 0, got {self.memory}")
        if self.kind not in ("cpu", "gpu", "tpu"):
            raise InvalidValueError(f"chip {self.name!r}: kind must be cpu/gpu/tpu: {self.kind!r}")

    @property
    def is_cpu(self) -> bool:
        """True for the ``cpu`` pseudo-chip (a CPU-only request)."""
        return self.kind == "cpu"

    def __str__(self) -> str:
        return self.name


def _chips(*chips: Chip) -> dict[str, Chip]:
    return {c.name: c for c in chips}


#: Every chip the config and the solver know, by canonical name. Memory is per device.
SUPPORTED_CHIPS: dict[str, Chip] = _chips(
    Chip("cpu", "CPU", 0, kind="cpu"),
    Chip("b200", "NVIDIA B200", 180 * _GIB),
    Chip("h200", "NVIDIA H200", 141 * _GIB),
    Chip("h100", "NVIDIA H100 80GB", 80 * _GIB),
    Chip("a100-sxm4-80gb", "NVIDIA A100-SXM4-80GB", 80 * _GIB),
    Chip("a100-pcie-40gb", "NVIDIA A100-PCIE-40GB", 40 * _GIB),
    Chip("a6000", "NVIDIA RTX A6000", 48 * _GIB),
    Chip("ada6000", "NVIDIA RTX 6000 Ada Generation", 48 * _GIB),
    Chip("l40", "NVIDIA L40", 48 * _GIB),
    Chip("l40s", "NVIDIA L40S", 48 * _GIB),
    Chip("rtx5090", "NVIDIA GeForce RTX 5090", 32 * _GIB),
    Chip("gb10", "NVIDIA GB10", 128 * _GIB),
    Chip("tpu-v2", "Google TPU v2", 8 * _GIB, kind="tpu"),
    Chip("tpu-v3", "Google TPU v3", 16 * _GIB, kind="tpu"),
    Chip("tpu-v4", "Google TPU v4", 32 * _GIB, kind="tpu"),
    Chip("tpu-v5e", "Google TPU v5e", 16 * _GIB, kind="tpu"),
    Chip("tpu-v5p", "Google TPU v5p", 95 * _GIB, kind="tpu"),
)


def get_chip(chip: str | Chip) -> Chip:
    """Get a Chip by name from SUPPORTED_CHIPS.

    Args:
        chip: Chip name, case-insensitive and stripped (e.g. `"H100"`), or a `Chip`, which
            is returned as is.

    Returns:
        The chip.

    Raises:
        InvalidValueError: The name is not in `SUPPORTED_CHIPS` (the message lists the
            supported names), or `chip` is neither a string nor a `Chip`.
    """
    if isinstance(chip, Chip):
        return chip
    if not isinstance(chip, str):
        raise InvalidValueError(f"chip must be a name or a Chip, got {chip!r}")
    found = SUPPORTED_CHIPS.get(chip.strip().lower())
    if found is None:
        raise InvalidValueError(
            f"unknown chip {chip!r}; supported: {', '.join(sorted(SUPPORTED_CHIPS))}"
        )
    return found


@dataclass(frozen=True)
class Cluster:
    """A named set of machines sharing paths: code root, work dir, logs, shared storage.

    ``log`` defaults to ``{work}/logs``. ``mount``/``cache_*`` describe a JuiceFS mount.
    """

    name: str
    root: str
    work: str
    log: str = ""
    share: str | None = None
    mount: str | None = None
    cache_size: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        check_name("cluster name", self.name)
        for what in ("root", "work"):
            check_path(f"cluster {self.name!r} {what}", getattr(self, what))
        if not self.log:
            object.__setattr__(self, "log", f"{self.work.rstrip('/') or '/'}/logs")
        for what in ("log", "share", "cache_dir"):
            check_path(f"cluster {self.name!r} {what}", getattr(self, what))

    @property
    def log_dir(self) -> str:
        """Directory for job logs (alias of ``log``)."""
        return self.log


@dataclass(frozen=True)
class ClusterMachine:
    """One configured host resolved against its cluster: what the solver and REPL act on."""

    name: str
    ssh: str
    cluster: Cluster
    is_slurm: bool = False
    chips: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not self.ssh:
            raise InvalidValueError(f"machine needs a name and an ssh alias: {self!r}")


@dataclass(frozen=True)
class HardwareRequest:
    """What a job needs.

    ``chip`` None means any GPU (or CPU-only when ``min_chips`` is 0); ``min_chips`` 0 means
    CPU-only. ``preferred_clusters`` restricts the hosts to those clusters (when non-empty);
    ``forbidden_clusters`` excludes clusters; the two may not overlap. ``interactive`` marks
    a session that should start now (a REPL): plain hosts are tried before SLURM hosts.
    """

    chip: str | Chip | None = None
    min_chips: int = 1
    preferred_clusters: list[str] = field(default_factory=list)
    forbidden_clusters: list[str] = field(default_factory=list)
    interactive: bool = False

    def __post_init__(self) -> None:
        if self.chip is not None:
            object.__setattr__(self, "chip", get_chip(self.chip))
        if isinstance(self.min_chips, bool) or not isinstance(self.min_chips, int):
            raise InvalidValueError(f"min_chips must be an int >= 0, got {self.min_chips!r}")
        if self.min_chips < 0:
            raise InvalidValueError(f"min_chips must be >= 0, got {self.min_chips}")
        for what in ("preferred_clusters", "forbidden_clusters"):
            value = getattr(self, what)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise InvalidValueError(f"{what} must be a list of cluster names: {value!r}")
            object.__setattr__(self, what, list(value))
        overlap = sorted(set(self.preferred_clusters) & set(self.forbidden_clusters))
        if overlap:
            raise InvalidValueError(
                f"clusters both preferred and forbidden: {', '.join(overlap)}"
            )
        if self.chip_obj is not None and self.chip_obj.is_cpu and self.min_chips > 0:
            # "cpu" is a CPU-only request whatever the count says.
            object.__setattr__(self, "min_chips", 0)

    @property
    def chip_obj(self) -> Chip | None:
        """The requested chip as a `Chip` (None: any)."""
        return self.chip if isinstance(self.chip, Chip) else None

    @property
    def cpu_only(self) -> bool:
        """True when no accelerator is needed."""
        return self.min_chips == 0

    def describe(self) -> str:
        """Summarise the request for messages: `4x h100`, `CPU only`.

        Returns:
            The count and chip, followed by cluster preferences and `interactive` if set.
        """
        if self.cpu_only:
            what = "CPU only"
        else:
            what = f"{self.min_chips}x {self.chip_obj.name if self.chip_obj else 'any GPU'}"
        extra = []
        if self.preferred_clusters:
            extra.append(f"clusters {self.preferred_clusters}")
        if self.forbidden_clusters:
            extra.append(f"not clusters {self.forbidden_clusters}")
        if self.interactive:
            extra.append("interactive")
        return what + (f" ({'; '.join(extra)})" if extra else "")


#: What nvidia-smi prints as a GPU's (or MIG instance's) UUID; safe in file names and shells.
GPU_UUID_RE = re.compile(r"^(GPU|MIG)-[A-Za-z0-9-]+$")


@dataclass(frozen=True)
class GpuRef:
    """One GPU of a plain host, as nvidia-smi names it: its index and its UUID.

    The UUID is what to pin work to (``CUDA_VISIBLE_DEVICES=GPU-...``): indices can be
    renumbered by ``CUDA_DEVICE_ORDER``; the UUID cannot.
    """

    index: int
    uuid: str

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise InvalidValueError(f"GPU index must be an int >= 0, got {self.index!r}")
        if not isinstance(self.uuid, str) or not GPU_UUID_RE.match(self.uuid):
            raise InvalidValueError(f"GPU uuid must look like GPU-<hex>-..., got {self.uuid!r}")


@dataclass(frozen=True)
class HardwareResult:
    """Where a request was placed: host, chip and count, cluster, SLURM partition.

    ``gres_type`` is the SLURM GRES type to ask for (from ``gres_mapping``); ``available``
    is the live free count when availability was checked (None otherwise). ``free_gpus``
    lists, for a plain host checked live, every GPU of ``chip`` found free (index order):
    pin the work to ``count`` of them (empty when not checked, or on SLURM).
    """

    host: str
    ssh: str
    chip: Chip
    count: int
    cluster: Cluster
    partition: str | None = None
    is_slurm: bool = False
    gres_type: str | None = None
    available: int | None = None
    interactive: bool = False
    free_gpus: tuple[GpuRef, ...] = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        if self.count < 0:
            raise InvalidValueError(f"count must be >= 0, got {self.count}")
        object.__setattr__(self, "free_gpus", tuple(self.free_gpus))


def _new_id() -> str:
    return secrets.token_hex(4)


@dataclass(frozen=True)
class JobSpec:
    """Identity of a job: ``name`` and ``id`` (random 8 hex digits by default), project, group.

    All parts are restricted to ``[A-Za-z0-9._-]`` so they are safe in file names, SLURM
    job names and shell commands.
    """

    name: str
    id: str = field(default_factory=_new_id)
    project: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        check_name("JobSpec.name", self.name)
        check_name("JobSpec.id", self.id)
        if self.project is not None:
            check_name("JobSpec.project", self.project)
        if self.group is not None:
            check_name("JobSpec.group", self.group)

    @property
    def full_name(self) -> str:
        """``name-id``: unique name for logs, work dirs and SLURM job names."""
        return f"{self.name}-{self.id}"
