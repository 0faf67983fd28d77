"""Solving against the testbed: the SLURM cluster (gpu: h100 x4 per node; cpu) and the
plain host with a fake nvidia-smi (one H200, from a real capture)."""

from __future__ import annotations

import shlex
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dispatch.aio import Pool
from dispatch.errors import SolveError
from dispatch.placement import (
    ClusterConfig,
    DispatchConfig,
    GpuRef,
    HardwareRequest,
    PartitionConfig,
    PlainHostConfig,
    SlurmHostConfig,
    SolveResult,
    SshAvailability,
    load_dispatch_config,
    solve_or_raise,
)
from dispatch.placement.claims import (
    CLAIM_FAILED_EXIT,
    CLAIMED_PREFIX,
    claim_gpus_script,
    held_claims_command,
    parse_claimed,
    parse_held_claims,
)
from dispatch.placement.solve import solve_with_reasons
from dispatch.ssh import run

from ..conftest import Testbed
from ..support.faults import apoll
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


# --- issue 18: busy GPUs, free GPUs by UUID, claims (a scripted 2-GPU nvidia-smi) --------

CASES = Path(__file__).resolve().parent.parent / "fixtures" / "nvidia-smi" / "busy_cases.txt"
REAL_UUIDS = ("GPU-43b39da1-c6e1-7025-daca-92c43ef30119",
              "GPU-7e2f9a04-5b1c-4d3e-9f80-a1b2c3d4e5f6")


def busy_case(name: str) -> tuple[str, str]:
    """(inventory, apps) of one busy_cases.txt section."""
    out = {"inventory": "", "apps": ""}
    current, part = None, ""
    for line in CASES.read_text().splitlines():
        if line.startswith("=== "):
            current = line[4:]
        elif line.startswith("--- "):
            part = line[4:]
        elif current == name and not line.startswith("#"):
            out[part] += line + "\n"
    assert out["inventory"], name
    return out["inventory"], out["apps"]


def scripted_nvidia_smi(inventory: str, apps: str) -> str:
    """A fake nvidia-smi answering the solver's two queries with the given text."""
    parts = ["#!/bin/sh", 'case "$*" in']
    for query, text in (("--query-gpu=index,uuid,name,memory.total,memory.used,"
                         "utilization.gpu", inventory),
                        ("--query-compute-apps=gpu_uuid,pid,used_memory", apps)):
        parts += [f"{shlex.quote(query)}\\ *)", "cat <<'EOF_FAKE'", text.rstrip("\n"),
                  "EOF_FAKE", ";;"] if text.strip() else [f"{shlex.quote(query)}\\ *) ;;"]
    parts += ['*) echo "fake nvidia-smi: unsupported arguments: $*" >&2; exit 2;;', "esac", ""]
    return "\n".join(parts)


@dataclass
class TwoGpuBox:
    """The plain host with a scripted nvidia-smi listing two H200s with fresh UUIDs."""

    host: str
    path: str
    uuids: tuple[str, str]

    async def script(self, case: str) -> None:
        inventory, apps = busy_case(case)
        for real, mine in zip(REAL_UUIDS, self.uuids, strict=True):
            inventory, apps = inventory.replace(real, mine), apps.replace(real, mine)
        await fake_nvidia_smi._put(self.host, self.path, scripted_nvidia_smi(inventory, apps))

    def config(self) -> DispatchConfig:
        return DispatchConfig(
            clusters={"t": ClusterConfig("/home/dispatcher/dispatch", "/home/dispatcher/w")},
            hosts={"box": PlainHostConfig(self.host, "t", chips={"h200": 2})})

    async def solve(self, count: int = 1) -> SolveResult:
        return await solve_or_raise(HardwareRequest("h200", count), self.config(), True,
                                    availability=SshAvailability(nvidia_smi=self.path))


@pytest.fixture
async def two_gpus(testbed: Testbed) -> AsyncIterator[TwoGpuBox]:
    tag = uuid.uuid4().hex[:8]
    # Fresh UUIDs per test: claims of other tests on this host cannot collide with ours.
    uuids = (f"GPU-{tag}-0000-4000-8000-000000000000", f"GPU-{tag}-0000-4000-8000-000000000001")
    box = TwoGpuBox(testbed.plain, f"~/.dispatch-test-fake-gpu/two-{tag}/nvidia-smi", uuids)
    yield box
    await run(f"rm -rf ~/.dispatch-test-fake-gpu/two-{tag} "
              + " ".join(f"~/.dispatch/gpu-claims/{u}.lock" for u in uuids), testbed.plain,
              timeout=30)


async def test_two_idle_gpus_are_named_free(two_gpus: TwoGpuBox) -> None:
    await two_gpus.script("two-idle")
    res = await two_gpus.solve()
    assert res.result is not None and res.result.available == 2
    assert res.result.free_gpus == (GpuRef(0, two_gpus.uuids[0]), GpuRef(1, two_gpus.uuids[1]))


async def test_one_of_two_busy_end_to_end(two_gpus: TwoGpuBox) -> None:
    await two_gpus.script("one-of-two-busy")
    res = await two_gpus.solve()
    assert res.host_name == "box" and res.result is not None
    assert res.result.free_gpus == (GpuRef(0, two_gpus.uuids[0]),)
    with pytest.raises(SolveError) as info:
        await two_gpus.solve(2)
    assert "box: only 1 of 2 h200 free (GPU 1: pid 432 uses 20998 MiB)" in str(info.value)


@pytest.mark.parametrize(("case", "free"), [
    ("display-only", [0]), ("zero-mib-daemon", [0]), ("memory-na", [0]),
    ("memory-missing", [0]), ("just-99", [0]), ("training-38g", []), ("exactly-100", []),
    ("hidden-process-high-utilization", [])])
async def test_busy_rule_end_to_end(two_gpus: TwoGpuBox, case: str, free: list[int]) -> None:
    await two_gpus.script(case)
    cfg = two_gpus.config()
    src = SshAvailability(nvidia_smi=two_gpus.path)
    res = await solve_with_reasons(HardwareRequest("h200", 1), cfg, True, availability=src)
    got = [] if res.result is None else [g.index for g in res.result.free_gpus]
    assert got == free, res.rejections


async def test_failing_or_missing_nvidia_smi_means_no_gpu(two_gpus: TwoGpuBox) -> None:
    await fake_nvidia_smi._put(
        two_gpus.host, two_gpus.path,
        "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the "
        "NVIDIA driver.' >&2\nexit 9\n")
    with pytest.raises(SolveError) as info:
        await two_gpus.solve()
    assert ("box: availability check failed: nvidia-smi failed (exit 9): NVIDIA-SMI has "
            "failed because it could not communicate") in str(info.value)
    with pytest.raises(SolveError, match="box: availability check failed: no nvidia-smi on "
                                         "the login PATH"):
        await solve_or_raise(HardwareRequest("h200", 1), two_gpus.config(), True,
                             availability=SshAvailability(nvidia_smi="no-such-nvidia-smi-xyz"))
    await fake_nvidia_smi._put(two_gpus.host, two_gpus.path,
                               "#!/bin/sh\necho 'No devices were found'\n")
    with pytest.raises(SolveError, match="box: availability check failed: cannot parse "
                                         "nvidia-smi output"):
        await two_gpus.solve()


async def _log(host: str, log: str) -> str:
    return (await run(f"cat {log} 2>/dev/null || true", host, timeout=30)).stdout


async def _held(host: str) -> frozenset[str]:
    res = await run(held_claims_command(), host, timeout=30)
    assert res.ok, res
    return parse_held_claims(res.stdout)


async def test_claims_pick_different_gpus_and_free_on_exit(two_gpus: TwoGpuBox) -> None:
    await two_gpus.script("two-idle")
    host, uuids = two_gpus.host, two_gpus.uuids
    logs = [f"/tmp/dispatch-claim-{uuids[0][4:12]}-{i}.log" for i in range(3)]
    sessions: list[int] = []
    try:
        # Two claims of 1 GPU at the same moment, both offered both GPUs in the same order.
        cmd = "; ".join(
            f"setsid nohup bash -c {shlex.quote(claim_gpus_script(list(uuids), 1))}"
            f"'exec sleep 600' > {log} 2>&1 < /dev/null & echo $!" for log in logs[:2])
        started = await run(cmd, host, timeout=30)
        assert started.ok, started
        sessions += [int(p) for p in started.stdout.split()]

        async def both_claimed() -> bool:
            return all([parse_claimed(await _log(host, log)) for log in logs[:2]])

        assert await apoll(both_claimed, 20), [await _log(host, log) for log in logs[:2]]
        got = [parse_claimed(await _log(host, log)) for log in logs[:2]]
        assert sorted(g[0] for g in got if g) == sorted(uuids), got
        assert await _held(host) >= set(uuids)
        # The solver counts them busy; a third claim finds none.
        with pytest.raises(SolveError) as info:
            await two_gpus.solve()
        assert "GPU 0: claimed by another dispatch session" in str(info.value)
        third = await run(f"bash -c {shlex.quote(claim_gpus_script(list(uuids), 1))}", host,
                          timeout=30)
        assert third.returncode == CLAIM_FAILED_EXIT, third
        assert "cannot claim 1 GPU(s): only 0 of 2" in third.stderr
        assert CLAIMED_PREFIX not in third.stdout
        # Ending the first holder frees exactly its GPU.
        first = got[0][0] if got[0] else ""
        await run(f"kill -9 -- -{sessions[0]}", host, timeout=30)

        async def released() -> bool:
            return first not in await _held(host)

        assert await apoll(released, 20)
        res = await two_gpus.solve()
        assert res.result is not None
        assert [g.uuid for g in res.result.free_gpus] == [first]
    finally:
        for sid in sessions:
            await run(f"kill -9 -- -{sid} 2>/dev/null; true", host, timeout=30)
        await run("rm -f " + " ".join(logs), host, timeout=30)
