"""SLURM queries against the testbed cluster: partitions, nodes, GPUs, squeue/sacct lookups."""

from __future__ import annotations

import pytest

from dispatch.errors import InvalidValueError
from dispatch.slurm import query
from dispatch.slurm.models import NodeInfo

from ..conftest import Testbed


def _env(testbed: Testbed, key: str, default: str) -> str:
    return testbed.env.get(f"DISPATCH_TESTBED_{key}", default)


async def test_partitions_lists_both_partitions(testbed: Testbed) -> None:
    gpu, cpu = _env(testbed, "GPU_PARTITION", "gpu"), _env(testbed, "CPU_PARTITION", "cpu")
    parts = {p.name: p for p in await query.partitions(testbed.slurm)}
    assert {gpu, cpu} <= set(parts)
    gpu_nodes = _env(testbed, "GPU_NODES", "node1 node2").split()
    assert parts[gpu].nodes == gpu_nodes
    assert parts[gpu].total_nodes == len(gpu_nodes)
    assert parts[gpu].total_cpus == len(gpu_nodes) * int(_env(testbed, "NODE_CPUS", "4"))


async def test_partition_nodes_returns_node_names_not_hostnames(testbed: Testbed) -> None:
    cpu = _env(testbed, "CPU_PARTITION", "cpu")
    nodes = await query.partition_nodes(cpu, testbed.slurm)
    # Every testbed node's hostname is "localhost"; %N gives the SLURM node names.
    assert nodes == _env(testbed, "CPU_NODES", "node3 node4").split()
    assert await query.partition_nodes("no-such-partition", testbed.slurm) == []


async def test_node_info_and_unknown_node(testbed: Testbed) -> None:
    node = _env(testbed, "GPU_NODES", "node1 node2").split()[0]
    info = await query.node_info(node, testbed.slurm)
    assert isinstance(info, NodeInfo)
    assert info.name == node
    assert info.cpus_total == int(_env(testbed, "NODE_CPUS", "4"))
    assert info.memory_total == int(_env(testbed, "NODE_MEMORY_MB", "4000"))
    gres = info.get_gres("gpu")
    assert gres is not None and gres.configured == int(_env(testbed, "GPUS_PER_NODE", "4"))
    assert gres.type == _env(testbed, "GPU_TYPE", "h100")
    assert _env(testbed, "GPU_PARTITION", "gpu") in info.partitions
    assert await query.node_info("nosuchnode7", testbed.slurm) is None


async def test_nodes_info_batches_and_drops_unknown(testbed: Testbed, monkeypatch) -> None:
    nodes = _env(testbed, "NODES", "node1 node2 node3 node4").split()
    calls: list[list[str]] = []
    real = query.query

    async def counting(argv: list[str], host: str, timeout: float | None):
        calls.append(argv)
        return await real(argv, host, timeout)

    monkeypatch.setattr(query, "query", counting)
    # 200 names (the real nodes plus unknown ones) -> 4 scontrol calls of 50 names
    names = nodes + [f"ghost{i:03d}" for i in range(200 - len(nodes))]
    infos = await query.nodes_info(names, testbed.slurm)
    assert sorted(infos) == sorted(nodes)
    assert all(infos[n].name == n for n in nodes)
    assert len(calls) == 4
    assert [len(c[-1].split(",")) for c in calls] == [50, 50, 50, 50]
    calls.clear()
    infos = await query.nodes_info(nodes, testbed.slurm)
    assert sorted(infos) == sorted(nodes)
    assert len(calls) == 1  # all real nodes: one round trip


async def test_available_gpus_idle_cluster(testbed: Testbed) -> None:
    gpu = _env(testbed, "GPU_PARTITION", "gpu")
    per_node = int(_env(testbed, "GPUS_PER_NODE", "4"))
    free = await query.available_gpus(gpu, testbed.slurm)
    gpu_nodes = _env(testbed, "GPU_NODES", "node1 node2").split()
    assert {n for n, _ in free} <= set(gpu_nodes)
    assert all(0 < count <= per_node for _, count in free)
    assert [c for _, c in free] == sorted((c for _, c in free), reverse=True)
    assert await query.available_gpus(gpu, testbed.slurm, gpu_type="no-such-type") == []
    gtype = _env(testbed, "GPU_TYPE", "h100")
    typed = await query.available_gpus(gpu, testbed.slurm, gpu_type=gtype)
    assert typed == free


async def test_status_of_unknown_job_is_none_without_error(testbed: Testbed) -> None:
    st = await query.status(987654321, testbed.slurm)
    assert st.job is None
    assert st.ssh_result.ok
    assert st.ssh_result.stderr == ""


async def test_queue_and_job_info_of_unknown_job(testbed: Testbed) -> None:
    q = await query.queue(testbed.slurm, user=testbed.user)
    assert q.ssh_result.ok
    assert all(j.user == testbed.user for j in q.jobs)
    info = await query.job_info(987654321, testbed.slurm)
    assert info.ssh_result.ok
    assert info.steps == [] and info.main is None


@pytest.mark.parametrize("bad", ["-x", "a b", "a;b", "$(id)", ""])
async def test_hostile_names_are_rejected_before_running(testbed: Testbed, bad: str) -> None:
    with pytest.raises(InvalidValueError):
        await query.partition_nodes(bad, testbed.slurm)
    with pytest.raises(InvalidValueError):
        await query.node_info(bad, testbed.slurm)


@pytest.mark.parametrize("bad", [0, -3, True, "12"])
async def test_bad_job_ids_are_rejected(testbed: Testbed, bad: object) -> None:
    with pytest.raises(InvalidValueError):
        await query.status(bad, testbed.slurm)  # type: ignore[arg-type]
