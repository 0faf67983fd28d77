"""Solving against the testbed: the SLURM cluster (gpu: h100 x4 per node; cpu) and the
plain host with a fake nvidia-smi (one H200, from a real capture)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.errors import SolveError
from dispatch.placement.config import (
    ClusterConfig,
    DispatchConfig,
    PlainHostConfig,
    load_dispatch_config,
)
from dispatch.placement.hardware import HardwareRequest
from dispatch.placement.solve import SshAvailability, solve_or_raise

from ..conftest import Testbed
from . import fake_nvidia_smi

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "testbed.yaml"


@pytest.fixture(scope="module")
async def cfg(testbed: Testbed) -> DispatchConfig:
    await fake_nvidia_smi.install(testbed.plain)
    return load_dispatch_config(EXAMPLE)


async def test_h100_goes_to_gpu_partition(cfg: DispatchConfig) -> None:
    res = await solve_or_raise(HardwareRequest("h100", 1), cfg)
    assert (res.host_name, res.partition, res.is_slurm) == ("slurm", "gpu", True)
    assert res.result is not None and res.result.gres_type == "h100"
    assert res.result.cluster.work == "/home/dispatcher/dispatch-work"


async def test_h100_with_live_availability(cfg: DispatchConfig) -> None:
    # Other tests may run jobs on the gpu nodes: the answer is gpu either way (satisfied
    # now, or the fallback to the host with the most availability).
    res = await solve_or_raise(HardwareRequest("h100", 2), cfg, check_availability=True)
    assert (res.host_name, res.partition) == ("slurm", "gpu")
    assert res.result is not None and res.result.available is not None
    assert 0 <= res.result.available <= 4
    assert res.fallback == (res.result.available < 2)


async def test_more_than_the_limit_is_rejected(cfg: DispatchConfig) -> None:
    with pytest.raises(SolveError) as info:
        await solve_or_raise(HardwareRequest("h100", 9), cfg, check_availability=True)
    msg = str(info.value)
    assert "9x h100" in msg and "slurm: chip limit for h100 is 8" in msg
    assert "plain: has h200 x1" in msg


async def test_h200_on_plain_host_live(cfg: DispatchConfig) -> None:
    res = await solve_or_raise(HardwareRequest("h200", 1), cfg, check_availability=True)
    assert (res.host_name, res.is_slurm, res.partition) == ("plain", False, None)
    assert res.result is not None and res.result.available == 1


async def test_busy_h200_is_rejected(cfg: DispatchConfig) -> None:
    busy = SshAvailability(nvidia_smi=fake_nvidia_smi.BUSY_PATH)
    with pytest.raises(SolveError, match=r"plain: only 0 of 1 h200 free"):
        await solve_or_raise(HardwareRequest("h200", 1), cfg, check_availability=True,
                             availability=busy)


async def test_cpu_only_goes_to_cpu_partition(cfg: DispatchConfig) -> None:
    res = await solve_or_raise(HardwareRequest(min_chips=0), cfg, check_availability=True)
    assert (res.host_name, res.partition) == ("slurm", "cpu")
    interactive = await solve_or_raise(HardwareRequest(min_chips=0, interactive=True), cfg)
    assert (interactive.host_name, interactive.partition) == ("plain", None)


async def test_fleet_checked_concurrently(testbed: Testbed) -> None:
    await fake_nvidia_smi.install(testbed.plain)  # the fleet aliases share the user's home
    fleet = testbed.fleet[:10]
    cfg = DispatchConfig(
        clusters={"t": ClusterConfig("/home/dispatcher/dispatch", "/home/dispatcher/w")},
        hosts={h: PlainHostConfig(h, "t", chips={"h200": 1}) for h in fleet},
        priority=fleet[::-1])
    res = await solve_or_raise(HardwareRequest("h200", 1), cfg, check_availability=True)
    assert res.host_name == fleet[-1]  # priority order
    with pytest.raises(SolveError) as info:
        await solve_or_raise(HardwareRequest("h200", 2), cfg, check_availability=True)
    assert all(f"{h}: has h200 x1" in str(info.value) for h in fleet)


async def test_unreachable_hosts_are_skipped_with_reason(testbed: Testbed,
                                                         tmp_path: Path) -> None:
    """A host that is down during check_availability is rejected, not fatal, not a hang."""
    import socket
    import time

    from dispatch.aio import Pool
    from dispatch.placement.config import PartitionConfig, SlurmHostConfig

    await fake_nvidia_smi.install(testbed.plain)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cfg_file = tmp_path / "ssh_config"
    cfg_file.write_text(
        f"Host dead-plain dead-slurm\n    HostName 127.0.0.1\n    Port {closed}\n"
        f"    ConnectTimeout 3\n\nHost *\n    Include {testbed.ssh_config}\n")
    cluster = ClusterConfig("/home/dispatcher/dispatch", "/home/dispatcher/w")
    cfg = DispatchConfig(
        clusters={"t": cluster},
        hosts={
            "dead-plain": PlainHostConfig("dead-plain", "t", chips={"h200": 1}),
            "dead-slurm": SlurmHostConfig("dead-slurm", "t",
                                          partitions=[PartitionConfig("gpu")]),
            "plain": PlainHostConfig(testbed.plain, "t", chips={"h200": 1}),
        },
        priority=["dead-slurm", "dead-plain", "plain"],
        gres_mapping={"h100": "h100"})
    start = time.monotonic()
    async with Pool(ssh_config=str(cfg_file), known_hosts=str(testbed.known_hosts),
                    connect_retries=0):
        res = await solve_or_raise(HardwareRequest("h200", 1), cfg, check_availability=True,
                                   timeout=10)
        assert res.host_name == "plain"
        assert res.rejections["dead-plain"].startswith("availability check failed:")
        assert str(closed) in res.rejections["dead-plain"] or \
            "refused" in res.rejections["dead-plain"].lower(), res.rejections
        assert res.rejections["dead-slurm"].startswith("availability check failed:")
        # Nothing reachable has the chip: the error names each host and why.
        with pytest.raises(SolveError) as info:
            await solve_or_raise(HardwareRequest("h100", 1), cfg, check_availability=True,
                                 timeout=10)
        msg = str(info.value)
        assert "1x h100" in msg
        assert "dead-slurm: availability check failed" in msg
        assert "plain: has h200 x1" in msg and "dead-plain: has h200 x1" in msg
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("check", [False, True])
async def test_more_than_one_node_has_is_rejected_not_queued(cfg: DispatchConfig,
                                                             check: bool) -> None:
    # gpu has 2 nodes x 4 h100 = 8 (the host's limit), but a request runs on ONE node:
    # 8x h100 can never start there, so it is rejected (no fallback that sbatch refuses).
    with pytest.raises(SolveError) as info:
        await solve_or_raise(HardwareRequest("h100", 8), cfg, check_availability=check)
    msg = str(info.value)
    assert "8x h100" in msg
    assert "slurm: no node has 8 gpu:h100 (most on one node: gpu: 4)" in msg
    assert "gpus_per_node" in msg
    ok = await solve_or_raise(HardwareRequest("h100", 4), cfg)
    assert (ok.host_name, ok.partition) == ("slurm", "gpu")


async def test_forbidden_cluster_of_every_host(cfg: DispatchConfig) -> None:
    with pytest.raises(SolveError) as info:
        await solve_or_raise(HardwareRequest("h100", 1, forbidden_clusters=["testbed"]), cfg,
                             check_availability=True)
    msg = str(info.value)
    assert "slurm: cluster 'testbed' is forbidden" in msg
    assert "plain: cluster 'testbed' is forbidden" in msg


async def test_chip_no_host_has(cfg: DispatchConfig) -> None:
    with pytest.raises(SolveError) as info:
        await solve_or_raise(HardwareRequest("b200", 1), cfg, check_availability=True)
    msg = str(info.value)
    assert "1x b200" in msg
    assert "slurm: b200 not in gres_mapping" in msg and "plain: has h200 x1" in msg
