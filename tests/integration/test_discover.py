"""discover_plain_host over real SSH (fake nvidia-smi printing a real capture) and
discover_slurm_partitions against the testbed's SLURM."""

from __future__ import annotations

import logging

import pytest

from dispatch.errors import DispatchError
from dispatch.placement import PartitionConfig, discover_plain_host, discover_slurm_partitions
from dispatch.ssh import run

from ..conftest import Testbed
from . import fake_nvidia_smi


@pytest.fixture(scope="module")
async def fake_gpu(testbed: Testbed) -> str:
    await fake_nvidia_smi.install(testbed.plain)
    return testbed.plain


async def test_discover_h200_via_login_path(fake_gpu: str) -> None:
    assert await discover_plain_host(fake_gpu) == {"h200": 1}


async def test_discover_with_explicit_executable(fake_gpu: str) -> None:
    chips = await discover_plain_host(fake_gpu, nvidia_smi=fake_nvidia_smi.BUSY_PATH)
    assert chips == {"h200": 1}


async def test_no_nvidia_smi_means_no_gpus(testbed: Testbed) -> None:
    assert await discover_plain_host(testbed.plain, nvidia_smi="no-such-nvidia-smi-xyz") == {}


async def test_unknown_gpu_is_reported(testbed: Testbed,
                                       caplog: pytest.LogCaptureFixture) -> None:
    # A fake that reports one known and two unknown GPUs.
    path = "~/.dispatch-test-fake-gpu/mixed/nvidia-smi"
    await fake_nvidia_smi._put(testbed.plain, path, "#!/bin/sh\nprintf '%s\\n' "
                               "'NVIDIA H100 80GB HBM3, 81559' 'Tesla V100-SXM2-32GB, 32768' "
                               "'Tesla V100-SXM2-32GB, 32768'\n")
    with caplog.at_level(logging.WARNING, logger="dispatch"):
        chips = await discover_plain_host(testbed.plain, nvidia_smi=path)
    assert chips == {"h100": 1}
    assert any("Tesla V100-SXM2-32GB" in r.getMessage() and testbed.plain in r.getMessage()
               for r in caplog.records)
    with pytest.raises(DispatchError, match=r"unknown GPU.*V100"):
        await discover_plain_host(testbed.plain, nvidia_smi=path, strict=True)


async def test_failing_nvidia_smi_raises(testbed: Testbed) -> None:
    path = "~/.dispatch-test-fake-gpu/broken/nvidia-smi"
    await fake_nvidia_smi._put(
        testbed.plain, path,
        "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the "
        "NVIDIA driver.' >&2\nexit 9\n")
    with pytest.raises(DispatchError, match="could not communicate"):
        await discover_plain_host(testbed.plain, nvidia_smi=path)


async def test_discover_slurm_partitions(testbed: Testbed) -> None:
    parts = await discover_slurm_partitions(testbed.slurm)
    by_name = {p.name: p for p in parts}
    assert by_name["gpu"] == PartitionConfig("gpu", default=False)
    assert by_name["cpu"] == PartitionConfig("cpu", default=True)
    assert sum(p.default for p in parts) == 1
    # The same as sinfo itself says.
    res = await run("sinfo --noheader --format=%P", testbed.slurm, timeout=30)
    assert res.ok
    assert {line.rstrip("*") for line in res.stdout.split()} == set(by_name)
