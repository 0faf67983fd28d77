"""nvidia-smi parsers on real captured output (tests/fixtures/nvidia-smi/h200_capture.txt)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.placement.nvidia_smi import (
    chip_for_gpu,
    count_chips,
    free_gpu_count,
    free_gpus_by_chip,
    parse_compute_apps,
    parse_gpu_memory,
    parse_gpu_names,
)

CAPTURE = Path(__file__).resolve().parent.parent / "fixtures" / "nvidia-smi" / "h200_capture.txt"


def sections(command: str) -> list[str]:
    """Outputs of every capture section whose command is exactly ``command``."""
    out: list[str] = []
    current: list[str] | None = None
    for line in CAPTURE.read_text().splitlines():
        if line.startswith("=== "):
            current = [] if line[4:] == command else None
        elif line.startswith("--- rc="):
            if current is not None:
                out.append("\n".join(current) + ("\n" if current else ""))
            current = None
        elif current is not None:
            current.append(line)
    assert out, f"no section {command!r} in the capture"
    return out


NAME_QUERY = "nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits"
UUID_QUERY = "nvidia-smi --query-gpu=uuid,memory.total --format=csv,noheader,nounits"
APPS_QUERY = (
    "nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits"
)
UUID = "GPU-43b39da1-c6e1-7025-daca-92c43ef30119"


def test_real_h200_discovery() -> None:
    text = sections(NAME_QUERY)[0]
    gpus = parse_gpu_names(text)
    assert [(g.name, g.memory_mib) for g in gpus] == [("NVIDIA H200", 143771)]
    found = count_chips(text)
    assert found.chips == {"h200": 1}
    assert found.unknown == {}


def test_real_busy_detection_idle_then_busy() -> None:
    memory = parse_gpu_memory(sections(UUID_QUERY)[0])
    assert memory == {UUID: 143771}
    idle, busy = sections(APPS_QUERY)
    assert parse_compute_apps(idle) == {}
    assert free_gpu_count(memory, parse_compute_apps(idle)) == 1
    # 20998 MiB of 143771 MiB is 14.6 %: >= 10 %, so the GPU is busy.
    assert parse_compute_apps(busy) == {UUID: 20998}
    assert free_gpu_count(memory, parse_compute_apps(busy)) == 0


def test_busy_threshold_is_ten_percent_and_sums_processes() -> None:
    memory = {"a": 1000, "b": 1000, "c": 1000}
    assert free_gpu_count(memory, {"a": 99, "b": 100, "c": 0}) == 2
    apps = parse_compute_apps("a, 60\na, 50\nb, 10\n")  # two processes on a: 110 MiB
    assert apps == {"a": 110, "b": 10}
    assert free_gpu_count(memory, apps) == 2
    assert free_gpu_count({"x": 0}, {}) == 1  # memory [N/A]: free unless something runs


@pytest.mark.parametrize(
    ("name", "memory", "chip"),
    [
        ("NVIDIA H200", 143771, "h200"),
        ("NVIDIA H200 NVL", 143771, "h200"),
        ("NVIDIA H100 80GB HBM3", 81559, "h100"),
        ("NVIDIA H100 PCIe", 81559, "h100"),
        ("NVIDIA H100 NVL", 95830, "h100"),
        ("NVIDIA B200", 183359, "b200"),
        ("NVIDIA A100-SXM4-80GB", 81920, "a100-sxm4-80gb"),
        ("NVIDIA A100 80GB PCIe", 81920, "a100-sxm4-80gb"),
        ("NVIDIA A100-PCIE-40GB", 40960, "a100-pcie-40gb"),
        ("NVIDIA A100-SXM4-40GB", 40960, "a100-pcie-40gb"),
        ("NVIDIA RTX A6000", 49140, "a6000"),
        ("NVIDIA RTX 6000 Ada Generation", 49140, "ada6000"),
        ("NVIDIA L40", 46068, "l40"),
        ("NVIDIA L40S", 46068, "l40s"),
        ("NVIDIA GeForce RTX 5090", 32607, "rtx5090"),
        ("NVIDIA GB10", None, "gb10"),
        ("NVIDIA GH200 480GB", 97871, None),
        ("Tesla V100-SXM2-32GB", 32768, None),
        ("NVIDIA GeForce RTX 4090", 24564, None),
    ],
)
def test_chip_for_gpu(name: str, memory: int | None, chip: str | None) -> None:
    found = chip_for_gpu(name, memory)
    assert (found.name if found else None) == chip


def test_unknown_gpus_are_counted_not_dropped() -> None:
    v100 = "Tesla V100-SXM2-32GB, 32768\n"
    text = "NVIDIA H100 80GB HBM3, 81559\n" + v100 + v100
    found = count_chips(text)
    assert found.chips == {"h100": 1}
    assert found.unknown == {"Tesla V100-SXM2-32GB": 2}


def test_memory_not_available_and_garbage() -> None:
    assert parse_gpu_names("NVIDIA GB10, [N/A]\n")[0].memory_mib is None
    with pytest.raises(ValueError, match="unexpected nvidia-smi line"):
        parse_gpu_names("No devices were found\n")
    assert parse_gpu_names("") == []


INVENTORY_QUERY = ("nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,"
                   "utilization.gpu --format=csv,noheader,nounits")


def test_free_by_chip_on_real_capture() -> None:
    idle_inv, busy_inv = sections(INVENTORY_QUERY)
    idle, busy = sections(APPS_QUERY)
    assert free_gpus_by_chip(idle_inv, idle) == {"h200": 1}
    assert free_gpus_by_chip(busy_inv, busy) == {"h200": 0}


def test_free_by_chip_keeps_kinds_apart() -> None:
    # A mixed workstation: the H100 is busy, both A6000s idle, one GPU unknown.
    inventory = (
        "0, GPU-a, NVIDIA RTX A6000, 49140, 10, 0\n"
        "1, GPU-b, NVIDIA RTX A6000, 49140, 10, 0\n"
        "2, GPU-c, NVIDIA H100 80GB HBM3, 81559, 60000, 99\n"
        "3, GPU-d, Mystery, GPU 9000, 1000, 0, 0\n"
    )
    apps = "GPU-c, 60000\n"
    assert free_gpus_by_chip(inventory, apps) == {
        "a6000": 2, "h100": 0, "Mystery, GPU 9000": 1}
    with pytest.raises(ValueError, match="unexpected nvidia-smi line"):
        free_gpus_by_chip("0, GPU-a, 49140\n", "")
