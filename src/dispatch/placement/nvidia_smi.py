"""Pure parsers for ``nvidia-smi`` CSV output: GPU names to chips, busy GPUs.

All functions take the text printed by ``nvidia-smi ... --format=csv,noheader,nounits``
and return values; the SSH calls live in `dispatch.discover` and `dispatch.solve`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .hardware import SUPPORTED_CHIPS, Chip

__all__ = [
    "GPU_NAME_QUERY",
    "GPU_UUID_QUERY",
    "COMPUTE_APPS_QUERY",
    "BUSY_FRACTION",
    "GpuInfo",
    "DiscoveredChips",
    "chip_for_gpu",
    "parse_gpu_names",
    "count_chips",
    "parse_gpu_memory",
    "parse_compute_apps",
    "free_gpu_count",
    "free_gpus_by_chip",
    "GPU_INVENTORY_QUERY",
]

#: Arguments of the queries run on hosts (after ``nvidia-smi``).
GPU_NAME_QUERY = ["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
GPU_UUID_QUERY = ["--query-gpu=uuid,memory.total", "--format=csv,noheader,nounits"]
GPU_INVENTORY_QUERY = ["--query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu",
                       "--format=csv,noheader,nounits"]
COMPUTE_APPS_QUERY = ["--query-compute-apps=gpu_uuid,used_memory", "--format=csv,noheader,nounits"]

#: A GPU is busy when its compute processes use at least this fraction of its memory.
BUSY_FRACTION = 0.10


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


def parse_gpu_memory(text: str) -> dict[str, int]:
    """Parse `--query-gpu=uuid,memory.total`: uuid -> total MiB (N/A rows read as 0).

    Args:
        text: nvidia-smi's CSV output without header.

    Returns:
        GPU uuid -> total memory in MiB.

    Raises:
        ValueError: A line has fewer than two fields.
    """
    out: dict[str, int] = {}
    for row in _rows(text):
        if len(row) < 2:
            raise ValueError(f"unexpected nvidia-smi line (want 'uuid, memory'): {row!r}")
        out[row[0]] = _int_or_none(row[1]) or 0
    return out


def parse_compute_apps(text: str) -> dict[str, int]:
    """Parse `--query-compute-apps=gpu_uuid,used_memory`: uuid -> MiB used by all apps.

    Also accepts the three-column `gpu_uuid,pid,used_memory` form (memory is last).

    Args:
        text: nvidia-smi's CSV output without header.

    Returns:
        GPU uuid -> memory in MiB used by its compute processes together.

    Raises:
        ValueError: A line has fewer than two fields.
    """
    used: dict[str, int] = {}
    for row in _rows(text):
        if len(row) < 2:
            raise ValueError(f"unexpected nvidia-smi line (want 'uuid, used'): {row!r}")
        used[row[0]] = used.get(row[0], 0) + (_int_or_none(row[-1]) or 0)
    return used


def free_gpu_count(gpu_memory: dict[str, int], used: dict[str, int],
                   busy_fraction: float = BUSY_FRACTION) -> int:
    """Count GPUs whose compute processes use less than `busy_fraction` of their memory.

    Args:
        gpu_memory: GPU uuid -> total MiB (see `parse_gpu_memory`).
        used: GPU uuid -> MiB in use (see `parse_compute_apps`).
        busy_fraction: Share of a GPU's memory in use from which it counts as busy.

    Returns:
        The number of free GPUs (a GPU of unknown size is free only when nothing uses it).
    """
    free = 0
    for uuid, total in gpu_memory.items():
        in_use = used.get(uuid, 0)
        if total <= 0:
            if in_use == 0:
                free += 1
            continue
        if in_use < busy_fraction * total:
            free += 1
    return free


def free_gpus_by_chip(inventory_text: str, apps_text: str,
                      busy_fraction: float = BUSY_FRACTION) -> dict[str, int]:
    """Free GPUs per chip on a host with several kinds (a busy H100 must not count as free
    because an A6000 next to it is idle).

    Args:
        inventory_text: `GPU_INVENTORY_QUERY` output
            (`index, uuid, name, memory.total, memory.used, utilization.gpu` per line).
        apps_text: `COMPUTE_APPS_QUERY` output (see `parse_compute_apps`).
        busy_fraction: Share of a GPU's memory in use from which it counts as busy.

    Returns:
        Chip name (the raw GPU name when no rule recognises it) -> free GPUs of it; every
        chip present is a key, with 0 when all of them are busy.

    Raises:
        ValueError: A line has fewer than six fields.
    """
    used = parse_compute_apps(apps_text)
    out: dict[str, int] = {}
    for row in _rows(inventory_text):
        if len(row) < 6:
            raise ValueError(f"unexpected nvidia-smi line (want 'index, uuid, name, "
                             f"memory.total, memory.used, utilization'): {row!r}")
        uuid, name, total = row[1], ", ".join(row[2:-3]), _int_or_none(row[-3]) or 0
        chip = chip_for_gpu(name, total or None)
        key = chip.name if chip is not None else name
        out[key] = out.get(key, 0) + free_gpu_count({uuid: total}, used, busy_fraction)
    return out
