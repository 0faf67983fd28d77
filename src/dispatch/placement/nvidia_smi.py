"""Pure parsers for ``nvidia-smi`` CSV output: GPU names to chips, busy GPUs.

All functions take the text printed by ``nvidia-smi ... --format=csv,noheader,nounits``
and return values; the SSH calls live in `dispatch.placement.probe`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import InvalidValueError
from .hardware import GPU_UUID_RE, SUPPORTED_CHIPS, Chip, GpuRef

__all__ = [
    "GPU_NAME_QUERY",
    "GPU_INVENTORY_QUERY",
    "COMPUTE_APPS_QUERY",
    "DEFAULT_BUSY_MIB",
    "DEFAULT_BUSY_UTILIZATION",
    "GpuInfo",
    "DiscoveredChips",
    "GpuReading",
    "BusyRule",
    "chip_for_gpu",
    "parse_gpu_names",
    "count_chips",
    "parse_compute_processes",
    "parse_gpu_readings",
    "busy_reason",
    "free_gpus_by_chip",
]

#: Arguments of the queries run on hosts (after ``nvidia-smi``).
GPU_NAME_QUERY = ["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
GPU_INVENTORY_QUERY = ["--query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu",
                       "--format=csv,noheader,nounits"]
COMPUTE_APPS_QUERY = ["--query-compute-apps=gpu_uuid,pid,used_memory",
                      "--format=csv,noheader,nounits"]

#: A compute process using at least this many MiB makes its GPU busy (a CUDA context
#: alone is 300-500 MiB; display servers use a few MiB).
DEFAULT_BUSY_MIB = 100
#: A GPU at least this busy (``utilization.gpu``, %) is busy even with no process listed
#: (processes in other containers are invisible to nvidia-smi; utilization is not).
DEFAULT_BUSY_UTILIZATION = 90

@dataclass(frozen=True)
class GpuInfo:
    """One line of ``--query-gpu=name,memory.total``: name and memory in MiB (None if N/A)."""

    name: str
    memory_mib: int | None


@dataclass(frozen=True)
class DiscoveredChips:
    """Chips found on a host: known chip name -> count, and unrecognised GPU names -> count."""

    chips: dict[str, int] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class GpuProcess:
    """One line of ``--query-compute-apps``: the pid and MiB used (None: N/A or missing)."""

    pid: int | None
    used_mib: int | None


@dataclass(frozen=True)
class GpuReading:
    """One GPU as a plain host reported it: identity, chip, utilization, compute processes.

    ``chip`` is the chip name (the raw GPU name when no rule knows it); ``claimed`` is set
    by the probe when a dispatch session on the host holds the GPU's claim lock.
    """

    index: int
    uuid: str
    name: str
    chip: str
    memory_total_mib: int | None = None
    utilization: int | None = None
    processes: tuple[GpuProcess, ...] = ()
    claimed: bool = False

    @property
    def ref(self) -> GpuRef:
        """The GPU's index and UUID."""
        return GpuRef(self.index, self.uuid)


@dataclass(frozen=True)
class BusyRule:
    """When a GPU counts as busy (per plain host: ``gpu_busy_mib``, ``gpu_busy_utilization``).

    Busy when any compute process uses at least ``process_mib`` MiB, or when
    ``utilization.gpu`` is at least ``utilization`` % (None: never by utilization), or when
    another dispatch session claimed it. A process whose memory reads 0, N/A or nothing
    does not make it busy.
    """

    process_mib: int = DEFAULT_BUSY_MIB
    utilization: int | None = DEFAULT_BUSY_UTILIZATION

    def __post_init__(self) -> None:
        if isinstance(self.process_mib, bool) or not isinstance(self.process_mib, int) \
                or self.process_mib < 1:
            raise InvalidValueError(f"gpu_busy_mib must be an int >= 1, got {self.process_mib!r}")
        u = self.utilization
        if u is not None and (isinstance(u, bool) or not isinstance(u, int)
                              or not 1 <= u <= 100):
            raise InvalidValueError(f"gpu_busy_utilization must be an int 1-100 or null, got {u!r}")


def _a100(memory_mib: int | None) -> Chip:
    # The 80 GB parts report ~81920 MiB, the 40 GB ones ~40960 MiB.
    big = memory_mib is not None and memory_mib >= 60 * 1024
    return SUPPORTED_CHIPS["a100-sxm4-80gb" if big else "a100-pcie-40gb"]


def _fixed(name: str) -> Callable[[int | None], Chip]:
    chip = SUPPORTED_CHIPS[name]
    return lambda _memory: chip


# Checked in order; word boundaries keep "GH200" from matching H200, "L40S" before "L40".
_RULES: list[tuple[re.Pattern[str], Callable[[int | None], Chip]]] = [
    (re.compile(r"\bGB10\b"), _fixed("gb10")),
    (re.compile(r"\bB200\b"), _fixed("b200")),
    (re.compile(r"\bH200\b"), _fixed("h200")),
    (re.compile(r"\bH100\b"), _fixed("h100")),
    (re.compile(r"\bA100\b"), _a100),
    (re.compile(r"\b6000 ADA\b"), _fixed("ada6000")),
    (re.compile(r"\bA6000\b"), _fixed("a6000")),
    (re.compile(r"\bL40S\b"), _fixed("l40s")),
    (re.compile(r"\bL40\b"), _fixed("l40")),
    (re.compile(r"\bRTX 5090\b"), _fixed("rtx5090")),
]


def chip_for_gpu(name: str, memory_mib: int | None = None) -> Chip | None:
    """Map an nvidia-smi GPU name (and memory, for the A100s) to a chip; None if unknown.

    Args:
        name: GPU name as nvidia-smi prints it (e.g. `NVIDIA H100 80GB HBM3`).
        memory_mib: Total memory in MiB; tells the 40 GB and 80 GB A100s apart.

    Returns:
        The matching chip, or None when no rule recognises the name.
    """
    norm = " ".join(name.upper().replace("-", " ").split())
    for pattern, pick in _RULES:
        if pattern.search(norm):
            return pick(memory_mib)
    return None


def _int_or_none(text: str) -> int | None:
    text = text.strip()
    try:
        return int(float(text))
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


def _rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.strip():
            rows.append([cell.strip() for cell in line.split(",")])
    return rows


def parse_gpu_names(text: str) -> list[GpuInfo]:
    """Parse `--query-gpu=name,memory.total` output (the name may not contain commas).

    Args:
        text: nvidia-smi's CSV output without header.

    Returns:
        One `GpuInfo` per GPU line, in output order.

    Raises:
        ValueError: A line has no comma.
    """
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, memory = line.rpartition(",")
        if not sep:
            raise ValueError(f"unexpected nvidia-smi line (want 'name, memory'): {line!r}")
        gpus.append(GpuInfo(name.strip(), _int_or_none(memory)))
    return gpus


def count_chips(text: str) -> DiscoveredChips:
    """Count GPUs by chip name; GPUs no rule recognises are counted under their raw name.

    Args:
        text: `--query-gpu=name,memory.total` output (see `parse_gpu_names`).

    Returns:
        Known chip counts in `chips`, unrecognised GPU names in `unknown`.

    Raises:
        ValueError: A line cannot be parsed.
    """
    chips: dict[str, int] = {}
    unknown: dict[str, int] = {}
    for gpu in parse_gpu_names(text):
        chip = chip_for_gpu(gpu.name, gpu.memory_mib)
        if chip is None:
            unknown[gpu.name] = unknown.get(gpu.name, 0) + 1
        else:
            chips[chip.name] = chips.get(chip.name, 0) + 1
    return DiscoveredChips(chips, unknown)




def parse_compute_processes(text: str) -> dict[str, list[GpuProcess]]:
    """Parse `COMPUTE_APPS_QUERY` output (`gpu_uuid, pid, used_memory` per process).

    A missing or unreadable pid or memory (`[N/A]`, `[Not Supported]`, an empty or absent
    column) reads as None.

    Args:
        text: nvidia-smi's CSV output without header.

    Returns:
        GPU uuid -> its compute processes, in output order.

    Raises:
        ValueError: A line does not start with a GPU uuid (not what this query prints).
    """
    out: dict[str, list[GpuProcess]] = {}
    for row in _rows(text):
        if not GPU_UUID_RE.match(row[0]):
            raise ValueError(f"unexpected nvidia-smi line (want 'gpu_uuid, pid, "
                             f"used_memory'): {', '.join(row)!r}")
        pid = _int_or_none(row[1]) if len(row) > 1 else None
        used = _int_or_none(row[2]) if len(row) > 2 else None
        out.setdefault(row[0], []).append(GpuProcess(pid, used))
    return out


def parse_gpu_readings(inventory_text: str, apps_text: str) -> list[GpuReading]:
    """Join `GPU_INVENTORY_QUERY` and `COMPUTE_APPS_QUERY` output into one reading per GPU.

    Args:
        inventory_text: `index, uuid, name, memory.total, memory.used, utilization.gpu`
            per line (a name may contain commas).
        apps_text: `gpu_uuid, pid, used_memory` per compute process.

    Returns:
        One `GpuReading` per inventory line, in nvidia-smi's order.

    Raises:
        ValueError: A line cannot be parsed (too few fields, no index, no GPU uuid).
    """
    apps = parse_compute_processes(apps_text)
    out: list[GpuReading] = []
    for row in _rows(inventory_text):
        if len(row) < 6 or not row[0].isdigit() or not GPU_UUID_RE.match(row[1]):
            raise ValueError(f"unexpected nvidia-smi line (want 'index, uuid, name, "
                             f"memory.total, memory.used, utilization'): {row!r}")
        name, total = ", ".join(row[2:-3]), _int_or_none(row[-3])
        chip = chip_for_gpu(name, total)
        out.append(GpuReading(
            index=int(row[0]), uuid=row[1], name=name,
            chip=chip.name if chip is not None else name, memory_total_mib=total,
            utilization=_int_or_none(row[-1]), processes=tuple(apps.get(row[1], ()))))
    return out


def busy_reason(gpu: GpuReading, rule: BusyRule = BusyRule()) -> str | None:
    """Why a GPU is busy under `rule`, or None when it is free.

    Args:
        gpu: The GPU's reading.
        rule: The host's thresholds.

    Returns:
        A short reason (`pid 432 uses 20998 MiB`), or None.
    """
    if gpu.claimed:
        return "claimed by another dispatch session"
    heavy = sorted((p for p in gpu.processes
                    if p.used_mib is not None and p.used_mib >= rule.process_mib),
                   key=lambda p: -(p.used_mib or 0))
    if heavy:
        top = heavy[0]
        who = f"pid {top.pid}" if top.pid is not None else "a process"
        more = f" (+{len(heavy) - 1} more)" if len(heavy) > 1 else ""
        return f"{who} uses {top.used_mib} MiB{more}"
    if rule.utilization is not None and gpu.utilization is not None \
            and gpu.utilization >= rule.utilization:
        return (f"utilization {gpu.utilization}% with no process using "
                f">= {rule.process_mib} MiB listed")
    return None


def free_gpus_by_chip(inventory_text: str, apps_text: str,
                      rule: BusyRule = BusyRule()) -> dict[str, int]:
    """Free GPUs per chip (a busy H100 does not count as free because an A6000 is idle).

    Args:
        inventory_text: `GPU_INVENTORY_QUERY` output (see `parse_gpu_readings`).
        apps_text: `COMPUTE_APPS_QUERY` output.
        rule: When a GPU is busy.

    Returns:
        Chip name (the raw GPU name when no rule recognises it) -> free GPUs of it; every
        chip present is a key, with 0 when all of them are busy.

    Raises:
        ValueError: A line cannot be parsed.
    """
    out: dict[str, int] = {}
    for gpu in parse_gpu_readings(inventory_text, apps_text):
        out[gpu.chip] = out.get(gpu.chip, 0) + (busy_reason(gpu, rule) is None)
    return out
