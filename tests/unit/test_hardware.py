"""Chip, SUPPORTED_CHIPS, Cluster, HardwareRequest, HardwareResult, JuiceFSMount, JobSpec."""

from __future__ import annotations

import dataclasses

import pytest

from dispatch.errors import InvalidValueError
from dispatch.placement import (
    SUPPORTED_CHIPS,
    Chip,
    Cluster,
    GpuRef,
    HardwareRequest,
    HardwareResult,
    JobSpec,
    JuiceFSMount,
    get_chip,
)

EXPECTED = {
    "cpu", "b200", "h200", "h100", "a100-sxm4-80gb", "a100-pcie-40gb", "a6000", "ada6000",
    "l40", "l40s", "rtx5090", "gb10", "tpu-v2", "tpu-v3", "tpu-v4", "tpu-v5e", "tpu-v5p",
}


def test_supported_chips_are_the_documented_set() -> None:
    assert set(SUPPORTED_CHIPS) == EXPECTED
    for name, chip in SUPPORTED_CHIPS.items():
        assert chip.name == name
        assert chip.display_name
        assert chip.memory >= 0
    assert SUPPORTED_CHIPS["h100"].memory == 80 * 1024**3
    assert SUPPORTED_CHIPS["cpu"].is_cpu and not SUPPORTED_CHIPS["h100"].is_cpu
    assert SUPPORTED_CHIPS["tpu-v4"].kind == "tpu"


def test_get_chip_case_insensitive_and_unknown() -> None:
    assert get_chip("H100") is SUPPORTED_CHIPS["h100"]
    assert get_chip(SUPPORTED_CHIPS["l40s"]) is SUPPORTED_CHIPS["l40s"]
    with pytest.raises(InvalidValueError, match="'v100'"):
        get_chip("v100")


def test_chip_is_frozen_and_validated() -> None:
    chip = SUPPORTED_CHIPS["h200"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        chip.name = "x"  # type: ignore[misc]
    with pytest.raises(InvalidValueError):
        Chip("H100", "bad", 1)
    with pytest.raises(InvalidValueError):
        Chip("x", "bad", -1)


def test_cluster_log_defaults_to_work_logs() -> None:
    assert Cluster("c", "/root/code", "/scratch/w").log == "/scratch/w/logs"
    assert Cluster("c", "/r", "/scratch/w/").log_dir == "/scratch/w/logs"
    assert Cluster("c", "/r", "/w", log="/elsewhere").log == "/elsewhere"
    with pytest.raises(InvalidValueError, match="cluster name"):
        Cluster("bad name", "/r", "/w")
    with pytest.raises(InvalidValueError, match="work"):
        Cluster("c", "/r", "")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_chips": -1}, "min_chips must be >= 0"),
        ({"min_chips": 1.5}, "min_chips"),
        ({"min_chips": True}, "min_chips"),
        ({"chip": "v100"}, "unknown chip"),
        ({"preferred_clusters": ["a", "b"], "forbidden_clusters": ["b"]}, "both preferred"),
        ({"preferred_clusters": "a"}, "preferred_clusters"),
    ],
)
def test_hardware_request_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        HardwareRequest(**kwargs)  # type: ignore[arg-type]


def test_hardware_request_normalises() -> None:
    req = HardwareRequest("H100", 4)
    assert req.chip is SUPPORTED_CHIPS["h100"] and req.chip_obj is SUPPORTED_CHIPS["h100"]
    assert req.describe() == "4x h100"
    assert HardwareRequest().describe() == "1x any GPU"
    cpu = HardwareRequest("cpu", 3)
    assert cpu.cpu_only and cpu.min_chips == 0
    assert HardwareRequest(min_chips=0).describe() == "CPU only"
    assert "interactive" in HardwareRequest("h100", interactive=True).describe()


def test_hardware_result_fields() -> None:
    cluster = Cluster("c", "/r", "/w")
    res = HardwareResult("h", "alias", SUPPORTED_CHIPS["h100"], 2, cluster, partition="gpu",
                         is_slurm=True, gres_type="h100")
    assert res.cluster.log == "/w/logs" and res.partition == "gpu" and res.available is None
    with pytest.raises(InvalidValueError):
        HardwareResult("h", "a", SUPPORTED_CHIPS["h100"], -1, cluster)


def test_juicefs_mount_hides_password() -> None:
    m = JuiceFSMount("redis://user:s3cret@redis:6379/1", "/mnt/jfs", cache_size="100G")
    assert "s3cret" not in repr(m)
    assert m.redacted_url == "redis://user:***@redis:6379/1"
    assert m.redis_url.endswith("s3cret@redis:6379/1")
    with pytest.raises(InvalidValueError):
        JuiceFSMount("", "/mnt/jfs")


def test_jobspec() -> None:
    a, b = JobSpec("train"), JobSpec("train")
    assert a.id != b.id and len(a.id) == 8
    spec = JobSpec("train", "abc", project="p", group="g")
    assert spec.full_name == "train-abc"
    for bad in ("", "a b", "x;rm", "../x", "-x"):
        with pytest.raises(InvalidValueError):
            JobSpec(bad)
    with pytest.raises(InvalidValueError):
        JobSpec("ok", project="bad project")


def test_gpu_ref_and_free_gpus() -> None:
    ref = GpuRef(0, "GPU-43b39da1-c6e1-7025-daca-92c43ef30119")
    cluster = Cluster("c", "/r", "/w")
    res = HardwareResult("h", "a", SUPPORTED_CHIPS["h200"], 1, cluster, available=1,
                         free_gpus=[ref])  # type: ignore[arg-type]
    assert res.free_gpus == (ref,)
    assert HardwareResult("h", "a", SUPPORTED_CHIPS["h200"], 1, cluster).free_gpus == ()
    for index, uuid in [(-1, ref.uuid), (True, ref.uuid), (0, ""), (0, "GPU-x; rm -rf ~"),
                        (0, "43b39da1"), (0, "GPU-a/b")]:
        with pytest.raises(InvalidValueError):
            GpuRef(index, uuid)
    assert GpuRef(3, "MIG-9a1b2c3d-0000-4000-8000-000000000001").index == 3
