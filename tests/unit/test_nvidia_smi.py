"""nvidia-smi parsers on real captured output (tests/fixtures/nvidia-smi/h200_capture.txt)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.errors import DispatchError, InvalidValueError
from dispatch.placement.claims import held_claims_command
from dispatch.placement.nvidia_smi import (
    BusyRule,
    GpuProcess,
    busy_reason,
    chip_for_gpu,
    count_chips,
    free_gpus_by_chip,
    parse_compute_processes,
    parse_gpu_names,
    parse_gpu_readings,
)
from dispatch.placement.probe import SshAvailability, plain_readings
from dispatch.results import RunResult

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
INVENTORY_QUERY = ("nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,"
                   "utilization.gpu --format=csv,noheader,nounits")
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
    inventory_idle, inventory_busy = sections(INVENTORY_QUERY)
    idle, busy = sections(APPS_QUERY)
    assert parse_compute_processes(idle) == {}
    [gpu] = parse_gpu_readings(inventory_idle, idle)
    assert (gpu.index, gpu.uuid, gpu.chip, gpu.utilization) == (0, UUID, "h200", 0)
    assert busy_reason(gpu) is None
    # A Python process holding 20998 MiB: busy (>= 100 MiB), whatever the GPU's size.
    assert parse_compute_processes(busy) == {UUID: [GpuProcess(432, 20998)]}
    [gpu] = parse_gpu_readings(inventory_busy, busy)
    assert busy_reason(gpu) == "pid 432 uses 20998 MiB"


def busy_cases() -> dict[str, tuple[str, str]]:
    """name -> (inventory, apps) from busy_cases.txt (edits of the real H200 capture)."""
    out: dict[str, tuple[str, str]] = {}
    name, part, parts = "", "", {"inventory": "", "apps": ""}
    for line in (CAPTURE.parent / "busy_cases.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        if line.startswith("=== "):
            name, parts = line[4:], {"inventory": "", "apps": ""}
            out[name] = ("", "")
        elif line.startswith("--- "):
            part = line[4:]
        else:
            parts[part] += line + "\n"
            out[name] = (parts["inventory"], parts["apps"])
    return out


BUSY_CASES = busy_cases()
UUID1 = "GPU-7e2f9a04-5b1c-4d3e-9f80-a1b2c3d4e5f6"

# case, the rule, free GPU indices, reason of each busy GPU (index -> reason)
RULE_TABLE: list[tuple[str, BusyRule, list[int], dict[int, str]]] = [
    ("idle", BusyRule(), [0], {}),
    ("busy-20g", BusyRule(), [], {0: "pid 432 uses 20998 MiB"}),
    ("display-only", BusyRule(), [0], {}),
    ("zero-mib-daemon", BusyRule(), [0], {}),
    ("memory-na", BusyRule(), [0], {}),
    ("memory-missing", BusyRule(), [0], {}),
    ("training-38g", BusyRule(), [], {0: "pid 5120 uses 38912 MiB"}),
    ("exactly-100", BusyRule(), [], {0: "pid 777 uses 100 MiB"}),
    ("just-99", BusyRule(), [0], {}),
    # The rule is per process: two 60 MiB processes are not one 100 MiB context.
    ("small-processes-add-up", BusyRule(), [0], {}),
    ("hidden-process-high-utilization", BusyRule(), [],
     {0: "utilization 97% with no process using >= 100 MiB listed"}),
    ("hidden-process-high-utilization", BusyRule(utilization=None), [0], {}),
    ("hidden-process-high-utilization", BusyRule(utilization=98), [0], {}),
    ("one-of-two-busy", BusyRule(), [0], {1: "pid 432 uses 20998 MiB"}),
    # Per-host thresholds.
    ("training-38g", BusyRule(process_mib=40000), [0], {}),
    ("just-99", BusyRule(process_mib=99), [], {0: "pid 777 uses 99 MiB"}),
    ("display-only", BusyRule(process_mib=10), [], {0: "pid 2210 uses 18 MiB"}),
]


@pytest.mark.parametrize(("case", "rule", "free", "busy"), RULE_TABLE,
                         ids=[f"{c}-{r.process_mib}-{r.utilization}" for c, r, _, _ in RULE_TABLE])
def test_busy_rule(case: str, rule: BusyRule, free: list[int], busy: dict[int, str]) -> None:
    inventory, apps = BUSY_CASES[case]
    gpus = parse_gpu_readings(inventory, apps)
    assert [g.index for g in gpus if busy_reason(g, rule) is None] == free
    assert {g.index: busy_reason(g, rule) for g in gpus
            if busy_reason(g, rule) is not None} == busy
    assert all(g.chip == "h200" for g in gpus)


def test_missing_and_na_memory_read_as_none() -> None:
    procs = parse_compute_processes(BUSY_CASES["memory-missing"][1])
    assert procs == {UUID: [GpuProcess(915, None), GpuProcess(916, None)]}
    assert parse_compute_processes(BUSY_CASES["memory-na"][1]) == {UUID: [GpuProcess(915, None)]}
    [gpu] = parse_gpu_readings(*BUSY_CASES["memory-na"])
    assert (gpu.memory_total_mib, gpu.utilization) == (None, None)


def test_one_of_two_busy_by_uuid() -> None:
    gpus = parse_gpu_readings(*BUSY_CASES["one-of-two-busy"])
    assert [(g.ref.index, g.ref.uuid) for g in gpus] == [(0, UUID), (1, UUID1)]
    assert free_gpus_by_chip(*BUSY_CASES["one-of-two-busy"]) == {"h200": 1}


def test_busy_rule_validation() -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(InvalidValueError, match="gpu_busy_mib"):
            BusyRule(process_mib=bad)  # type: ignore[arg-type]
    for bad_util in (0, 101, False):
        with pytest.raises(InvalidValueError, match="gpu_busy_utilization"):
            BusyRule(utilization=bad_util)
    assert BusyRule() == BusyRule(100, 90)


def probe_output(inventory: str, apps: str, claims: str = "") -> str:
    return (f"{inventory}--dispatch-compute-apps--\n{apps}--dispatch-gpu-claims--\n"
            f"{claims}")


def test_probe_command_asks_everything_in_one_round_trip() -> None:
    cmd = SshAvailability(nvidia_smi="~/bin/nvidia-smi").plain_command()
    assert cmd.startswith("~/bin/nvidia-smi --query-gpu=index,uuid,name,memory.total,"
                          "memory.used,utilization.gpu --format=csv,noheader,nounits && ")
    assert " --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits" in cmd
    assert cmd.endswith(held_claims_command())


def test_probe_marks_claimed_gpus() -> None:
    text = probe_output(*BUSY_CASES["one-of-two-busy"], claims=f"{UUID}\n")
    gpus = plain_readings(RunResult(0, text, ""))
    assert [(g.index, g.claimed) for g in gpus] == [(0, True), (1, False)]
    assert busy_reason(gpus[0]) == "claimed by another dispatch session"
    assert busy_reason(gpus[1]) == "pid 432 uses 20998 MiB"


@pytest.mark.parametrize(("result", "message"), [
    (RunResult(127, "", "bash: line 1: nvidia-smi: command not found\n"),
     "no nvidia-smi on the login PATH"),
    (RunResult(9, "", "NVIDIA-SMI has failed because it couldn't communicate with the "
                      "NVIDIA driver.\n"),
     "nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate"),
    (RunResult(0, probe_output("No devices were found\n", ""), ""),
     "cannot parse nvidia-smi output: unexpected nvidia-smi line"),
    (RunResult(0, probe_output(BUSY_CASES["idle"][0], "No running processes found\n"), ""),
     "cannot parse nvidia-smi output: unexpected nvidia-smi line"),
    # Output cut short (a marker missing): never read as "all free".
    (RunResult(0, BUSY_CASES["idle"][0], ""), "nvidia-smi failed (exit 0)"),
])
def test_nvidia_smi_failure_is_an_error_not_all_free(result: RunResult, message: str) -> None:
    with pytest.raises(DispatchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plain_readings(result)


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
    apps = "GPU-c, 4242, 60000\n"
    assert free_gpus_by_chip(inventory, apps) == {
        "a6000": 2, "h100": 0, "Mystery, GPU 9000": 1}
    with pytest.raises(ValueError, match="unexpected nvidia-smi line"):
        free_gpus_by_chip("0, GPU-a, 49140\n", "")
