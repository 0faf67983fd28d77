"""The solver's rules, table-driven, with an injected availability source (no I/O)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from dispatch.errors import DispatchError, SolveError
from dispatch.placement import (
    ClusterConfig,
    DispatchConfig,
    HardwareRequest,
    PartitionConfig,
    PlainHostConfig,
    SlurmHostConfig,
    SolveResult,
    solve_or_raise,
)
from dispatch.placement.hardware import GpuRef
from dispatch.placement.nvidia_smi import GpuProcess, GpuReading
from dispatch.placement.solve import solve


@dataclass
class Fake:
    """AvailabilitySource answering from tables; records calls."""

    plain: dict[str, int | dict[str, int] | tuple[GpuReading, ...] | Exception] = field(
        default_factory=dict)
    gres: dict[str, dict[str, set[str]] | Exception] = field(default_factory=dict)
    free: dict[tuple[str, str, str], list[tuple[str, int]]] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    async def plain_free_gpus(self, ssh: str,
                              seconds: float) -> int | dict[str, int] | tuple[GpuReading, ...]:
        self.calls.append(("plain", ssh))
        value = self.plain.get(ssh, 0)
        if isinstance(value, Exception):
            raise value
        return value

    async def partition_gres(self, ssh: str, seconds: float) -> dict[str, set[str]]:
        self.calls.append(("gres", ssh))
        value = self.gres.get(ssh, {})
        if isinstance(value, Exception):
            raise value
        return value

    async def slurm_free_gpus(self, ssh: str, partition: str, gres_type: str,
                              seconds: float) -> list[tuple[str, int]]:
        self.calls.append(("free", ssh, partition, gres_type))
        return self.free.get((ssh, partition, gres_type), [])


CLUSTERS = {"lab": ClusterConfig("/r", "/w"), "hpc": ClusterConfig("/h", "/s"),
            "cloud": ClusterConfig("/c", "/cw")}
HPC_GRES = {"gpu": {"h100"}, "a100": {"a100"}, "cpu": set(), "mixed": {"h100", "a100"}}


def config(**overrides: object) -> DispatchConfig:
    hosts: dict[str, PlainHostConfig | SlurmHostConfig] = {
        "box": PlainHostConfig("box", "lab", chips={"a6000": 2, "h100": 1}),
        "cpubox": PlainHostConfig("cpubox", "lab"),
        "hpc": SlurmHostConfig("hpc", "hpc", partitions=[PartitionConfig("gpu"),
                                                        PartitionConfig("a100"),
                                                        PartitionConfig("cpu", default=True)],
                               cpu_partitions=["cpu"], chips={"h100": 8, "a100-sxm4-80gb": 4}),
        "cloud": SlurmHostConfig("cloud", "cloud"),
        "bighost": PlainHostConfig("bighost", "cloud", chips={"h100": 8}),
    }
    kwargs: dict[str, object] = {
        "clusters": CLUSTERS, "hosts": hosts, "priority": ["hpc"],
        "gres_mapping": {"h100": "h100", "a100-sxm4-80gb": "a100"},
    }
    kwargs.update(overrides)
    return DispatchConfig(**kwargs)  # type: ignore[arg-type]


def fake(**kw: object) -> Fake:
    f = Fake(gres={"hpc": HPC_GRES, "cloud": {"batch": {"h100"}}})
    for k, v in kw.items():
        getattr(f, k).update(v)  # type: ignore[arg-type]
    return f


@dataclass(frozen=True)
class Case:
    id: str
    request: HardwareRequest
    host: str
    partition: str | None = None
    chip: str | None = None
    check: bool = False
    src: Fake | None = None
    cfg: DispatchConfig | None = None
    fallback: bool = False


CASES = [
    # priority first: hpc has h100 in a partition carrying gpu:h100
    Case("priority-first", HardwareRequest("h100", 1), "hpc", "gpu", "h100"),
    # without priority, file order: box has 1 h100
    Case("file-order", HardwareRequest("h100", 1), "box", None, "h100",
         cfg=config(priority=[])),
    # box has only 1 h100: asking 2 skips it; hpc is excluded by the limit of 8? no: 2 <= 8
    Case("enough-chips", HardwareRequest("h100", 2), "cloud", "batch", "h100",
         cfg=config(priority=[], hosts={
             "box": PlainHostConfig("box", "lab", chips={"h100": 1}),
             "cloud": SlurmHostConfig("cloud", "cloud")})),
    # SLURM chip limits: 9 > 8 on hpc, so the next host (box can't, cloud can)
    Case("chip-limit", HardwareRequest("h100", 9), "cloud", "batch", "h100"),
    # chip not in the host's limits mapping: a6000 only on box
    Case("chip-only-plain", HardwareRequest("a6000", 2), "box", None, "a6000"),
    # a100 maps to GRES a100: the a100 partition (the only one carrying it among configured)
    Case("gres-partition", HardwareRequest("a100-sxm4-80gb", 2), "hpc", "a100",
         "a100-sxm4-80gb"),
    # preferred clusters filter
    Case("preferred", HardwareRequest("h100", 1, preferred_clusters=["cloud"]), "cloud",
         "batch", "h100"),
    Case("forbidden", HardwareRequest("h100", 1, forbidden_clusters=["hpc"]), "box", None,
         "h100"),
    # interactive: plain hosts before SLURM hosts
    Case("interactive", HardwareRequest("h100", 1, interactive=True), "box", None, "h100"),
    # any chip: first chip with enough on the host in order (box: a6000 x2)
    Case("any-chip-plain", HardwareRequest(None, 2, forbidden_clusters=["hpc"]), "box", None,
         "a6000"),
    Case("any-chip-slurm", HardwareRequest(None, 1), "hpc", "gpu", "h100"),
    # CPU-only: first plain host, or a SLURM host's cpu_partitions (priority: hpc first)
    Case("cpu-slurm", HardwareRequest(min_chips=0), "hpc", "cpu", "cpu"),
    Case("cpu-plain", HardwareRequest("cpu"), "box", None, "cpu", cfg=config(priority=[])),
    Case("cpu-skip-slurm-without-cpu-partitions",
         HardwareRequest(min_chips=0, preferred_clusters=["cloud"]), "bighost", None, "cpu"),
    # check_availability, plain: box's h100 busy (0 free) -> hpc? forbidden; -> bighost
    Case("plain-busy", HardwareRequest("h100", 1, forbidden_clusters=["hpc"]), "bighost",
         None, "h100", check=True, src=fake(plain={"box": 0, "bighost": 8})),
    # per-chip facts: box's h100 is busy though both its a6000 are idle -> bighost
    Case("plain-busy-mixed", HardwareRequest("h100", 1, forbidden_clusters=["hpc"]),
         "bighost", None, "h100", check=True,
         src=fake(plain={"box": {"a6000": 2, "h100": 0}, "bighost": {"h100": 8}})),
    # any chip on a mixed host: the busy first kind is skipped for a free one
    Case("plain-any-chip-free-kind", HardwareRequest(None, 1, forbidden_clusters=["hpc"]),
         "box", None, "h100", check=True,
         src=fake(plain={"box": {"a6000": 0, "h100": 1}})),
    Case("plain-free", HardwareRequest("h100", 1, forbidden_clusters=["hpc"]), "box",
         None, "h100", check=True, src=fake(plain={"box": 1})),
    # check_availability, SLURM: a node with enough free GPUs in gpu
    Case("slurm-free", HardwareRequest("h100", 4), "hpc", "gpu", "h100", check=True,
         src=fake(free={("hpc", "gpu", "h100"): [("node1", 4), ("node2", 1)]})),
    # gpu partition too full: the mixed partition is not configured on hpc, so cloud
    Case("slurm-busy-next", HardwareRequest("h100", 4, forbidden_clusters=["lab"]), "cloud",
         "batch", "h100", check=True,
         src=fake(plain={"bighost": 0},
                  free={("hpc", "gpu", "h100"): [("node1", 3)],
                        ("cloud", "batch", "h100"): [("c1", 4)]})),
    # nothing satisfies: fall back to the SLURM host with the most availability
    Case("fallback-most-available", HardwareRequest("h100", 4, forbidden_clusters=["lab"]),
         "cloud", "batch", "h100", check=True, fallback=True,
         src=fake(free={("hpc", "gpu", "h100"): [("node1", 1)],
                        ("cloud", "batch", "h100"): [("c1", 2), ("c2", 1)]})),
    # excluded nodes do not count
    Case("exclude", HardwareRequest("h100", 4, forbidden_clusters=["lab"]), "cloud", "batch",
         "h100", check=True,
         src=fake(free={("hpc", "gpu", "h100"): [("node13", 8)],
                        ("cloud", "batch", "h100"): [("c1", 4)]}),
         cfg=config(hosts={**config().hosts, "hpc": SlurmHostConfig(
             "hpc", "hpc", partitions=[PartitionConfig("gpu")], exclude=["node13"])})),
    # a SLURM host without configured partitions uses all of sinfo's (default first n/a)
    Case("sinfo-partitions", HardwareRequest("h100", 1, preferred_clusters=["cloud"]),
         "cloud", "batch", "h100"),
    # a failing availability check rejects that host only
    Case("check-error", HardwareRequest("h100", 1), "box", None, "h100",
         src=fake(gres={"hpc": DispatchError("sinfo failed")})),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_rules(case: Case) -> None:
    src = case.src or fake()
    res = await solve_or_raise(case.request, case.cfg or config(), case.check,
                               availability=src)
    assert isinstance(res, SolveResult)
    assert res.host_name == case.host, res.rejections
    assert res.result is not None
    assert res.partition == case.partition
    assert res.is_slurm == (case.partition is not None)
    assert res.result.chip.name == case.chip
    assert res.fallback == case.fallback
    assert res.host_config is (case.cfg or config()).hosts[case.host] or \
        res.host_config == (case.cfg or config()).hosts[case.host]
    if case.check and not case.fallback and res.result.chip.name != "cpu":
        assert res.result.available is not None
        assert res.result.available >= case.request.min_chips


async def test_result_details() -> None:
    res = await solve_or_raise(HardwareRequest("h100", 2), config(), availability=fake())
    assert res.result is not None
    assert res.result.gres_type == "h100"
    assert res.result.cluster.name == "hpc" and res.result.cluster.log == "/s/logs"
    assert res.result.count == 2 and res.result.ssh == "hpc"


async def test_error_says_what_and_why_each_host() -> None:
    with pytest.raises(SolveError) as info:
        await solve_or_raise(HardwareRequest("h100", 16, forbidden_clusters=["cloud"]),
                             config(), availability=fake())
    msg = str(info.value)
    assert "16x h100" in msg
    assert "hpc: chip limit for h100 is 8" in msg
    assert "box: has a6000 x2, h100 x1" in msg
    assert "cpubox: has no GPUs configured" in msg
    assert "bighost: cluster 'cloud' is forbidden" in msg
    assert "cloud: cluster 'cloud' is forbidden" in msg


async def test_gres_and_mapping_rejections() -> None:
    cfg = config(gres_mapping={"a100-sxm4-80gb": "a100"}, priority=[])
    with pytest.raises(SolveError) as info:
        await solve_or_raise(HardwareRequest("l40s", 1), cfg, availability=fake())
    assert "hpc: l40s not in gres_mapping" in str(info.value)
    cfg = config(gres_mapping={"h100": "h100-sxm"}, priority=[])
    with pytest.raises(SolveError) as info:
        await solve_or_raise(HardwareRequest("h100", 9), cfg, availability=fake())
    assert "no partition has GRES gpu:h100-sxm" in str(info.value)


async def test_request_bigger_than_any_node_is_rejected() -> None:
    # sinfo counts: gpu nodes carry at most 4 h100 each, big nodes 8.
    counts = {"gpu": {"h100": 4}, "big": {"h100": 8}, "cpu": {}}
    cfg = DispatchConfig(clusters=CLUSTERS, gres_mapping={"h100": "h100"}, hosts={
        "hpc": SlurmHostConfig("hpc", "hpc", partitions=[PartitionConfig("gpu", default=True),
                                                        PartitionConfig("big")])})
    src = fake(gres={"hpc": counts})
    res = await solve_or_raise(HardwareRequest("h100", 4), cfg, availability=src)
    assert res.partition == "gpu"
    res = await solve_or_raise(HardwareRequest("h100", 6), cfg, availability=src)
    assert res.partition == "big"
    res = await solve_or_raise(HardwareRequest("h100", 6), cfg, True, availability=fake(
        gres={"hpc": counts}, free={("hpc", "big", "h100"): [("b1", 8)]}))
    assert res.partition == "big" and not res.fallback
    for check in (False, True):
        with pytest.raises(SolveError) as info:
            await solve_or_raise(HardwareRequest("h100", 9), cfg, check,
                                 availability=fake(gres={"hpc": counts}))
        assert "hpc: no node has 9 gpu:h100 (most on one node: gpu: 4, big: 8)" in str(
            info.value)
    # Unknown counts (0, or a plain set of types) do not reject.
    res = await solve_or_raise(HardwareRequest("h100", 9), cfg,
                               availability=fake(gres={"hpc": {"gpu": {"h100": 0}}}))
    assert res.partition == "gpu"


async def test_forbidden_cluster_is_the_only_hosts_cluster() -> None:
    cfg = DispatchConfig(clusters=CLUSTERS, hosts={
        "box": PlainHostConfig("box", "lab", chips={"h100": 1})})
    with pytest.raises(SolveError) as info:
        await solve_or_raise(HardwareRequest("h100", 1, forbidden_clusters=["lab"]), cfg,
                             True, availability=fake())
    assert "1x h100" in str(info.value) and "box: cluster 'lab' is forbidden" in str(info.value)


async def test_cpu_request_without_cpu_capable_host() -> None:
    cfg = DispatchConfig(clusters=CLUSTERS, hosts={"cloud": SlurmHostConfig("cloud", "cloud")})
    with pytest.raises(SolveError, match=r"(?s)CPU only.*no cpu_partitions"):
        await solve_or_raise(HardwareRequest(min_chips=0), cfg, availability=fake())


async def test_solve_returns_none_and_no_hosts() -> None:
    assert await solve(HardwareRequest("l40", 1), config(), availability=fake()) is None
    with pytest.raises(SolveError, match="no hosts configured"):
        await solve_or_raise(HardwareRequest("h100"), DispatchConfig(), availability=fake())


async def test_no_io_without_check_for_plain_hosts_and_cpu() -> None:
    src = fake()
    await solve_or_raise(HardwareRequest(min_chips=0), config(), availability=src)
    assert src.calls == []
    await solve_or_raise(HardwareRequest("a6000", 1), config(), availability=src)
    assert all(c[0] == "gres" for c in src.calls)


class Barrier:
    """A source whose calls finish only when all expected calls are in flight at once."""

    def __init__(self, n: int) -> None:
        self.n, self.inflight, self.peak = n, 0, 0
        self.all_in = asyncio.Event()

    async def _enter(self) -> None:
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        if self.inflight >= self.n:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), 5)

    async def plain_free_gpus(self, ssh: str, seconds: float) -> int:
        await self._enter()
        return 0

    async def partition_gres(self, ssh: str, seconds: float) -> dict[str, set[str]]:
        await self._enter()
        return {"p": {"h100"}}

    async def slurm_free_gpus(self, ssh: str, partition: str, gres_type: str,
                              seconds: float) -> list[tuple[str, int]]:
        return [("n", 0)]


async def test_availability_checks_run_concurrently() -> None:
    hosts: dict[str, PlainHostConfig | SlurmHostConfig] = {}
    for i in range(5):
        hosts[f"p{i}"] = PlainHostConfig(f"p{i}", "lab", chips={"h100": 1})
        hosts[f"s{i}"] = SlurmHostConfig(f"s{i}", "lab")
    cfg = DispatchConfig(clusters=CLUSTERS, hosts=hosts, gres_mapping={"h100": "h100"})
    src = Barrier(10)
    # Sequential checks would wait for the barrier forever (wait_for -> TimeoutError).
    res = await solve_or_raise(HardwareRequest("h100", 1), cfg, True, availability=src)
    assert src.peak == 10
    assert res.fallback and res.is_slurm


def gpu(index: int, chip: str, *mib: int | None, util: int = 0,
        claimed: bool = False) -> GpuReading:
    """A reading as `SshAvailability` returns it (compute processes using `mib` MiB)."""
    return GpuReading(index, f"GPU-{index:08x}-0000-4000-8000-00000000000{index}", chip, chip,
                      utilization=util, claimed=claimed,
                      processes=tuple(GpuProcess(1000 + i, m) for i, m in enumerate(mib)))


BOX = [gpu(0, "a6000", 4), gpu(1, "a6000"), gpu(2, "h100", 60000)]
LAB_ONLY = ["lab"]


async def test_plain_result_names_the_free_gpus() -> None:
    src = fake(plain={"box": tuple(BOX)})
    res = await solve_or_raise(HardwareRequest("a6000", 1, preferred_clusters=LAB_ONLY),
                               config(), True, availability=src)
    assert res.host_name == "box" and res.result is not None
    assert res.result.free_gpus == (GpuRef(0, BOX[0].uuid), GpuRef(1, BOX[1].uuid))
    assert res.result.available == 2
    # Without the check nothing was asked: no GPUs named.
    res = await solve_or_raise(HardwareRequest("a6000", 1, preferred_clusters=LAB_ONLY),
                               config(), availability=src)
    assert res.result is not None and res.result.free_gpus == ()


async def test_busy_gpus_are_named_in_the_rejection() -> None:
    src = fake(plain={"box": (BOX[0], gpu(1, "a6000", 120, claimed=False), BOX[2])})
    with pytest.raises(SolveError) as info:
        await solve_or_raise(HardwareRequest("h100", 1, preferred_clusters=LAB_ONLY),
                             config(), True, availability=src)
    assert "box: only 0 of 1 h100 free (GPU 2: pid 1000 uses 60000 MiB)" in str(info.value)
    with pytest.raises(SolveError) as info:
        await solve_or_raise(HardwareRequest("a6000", 2, preferred_clusters=LAB_ONLY),
                             config(), True, availability=src)
    assert "box: only 1 of 2 a6000 free (GPU 1: pid 1000 uses 120 MiB)" in str(info.value)


async def test_claimed_and_hidden_work_make_gpus_busy() -> None:
    src = fake(plain={"box": (gpu(0, "a6000", claimed=True), gpu(1, "a6000", util=97),
                              BOX[2])})
    with pytest.raises(SolveError) as info:
        await solve_or_raise(HardwareRequest("a6000", 1, preferred_clusters=LAB_ONLY),
                             config(), True, availability=src)
    msg = str(info.value)
    assert "box: only 0 of 2 a6000 free (GPU 0: claimed by another dispatch session; " \
           "GPU 1: utilization 97% with no process using >= 100 MiB listed)" in msg


async def test_busy_thresholds_are_per_host() -> None:
    lenient = PlainHostConfig("box", "lab", chips={"a6000": 2, "h100": 1},
                              gpu_busy_mib=60001, gpu_busy_utilization=None)
    cfg = config(hosts={**config().hosts, "box": lenient})
    src = fake(plain={"box": (BOX[0], gpu(1, "a6000", util=97), BOX[2])})
    res = await solve_or_raise(HardwareRequest("h100", 1, preferred_clusters=LAB_ONLY), cfg,
                               True, availability=src)
    assert res.result is not None and res.result.free_gpus == (GpuRef(2, BOX[2].uuid),)
    res = await solve_or_raise(HardwareRequest("a6000", 2, preferred_clusters=LAB_ONLY), cfg,
                               True, availability=src)
    assert res.result is not None and [g.index for g in res.result.free_gpus] == [0, 1]


async def test_no_gpu_listed_or_nvidia_smi_failing_means_none_available() -> None:
    for plain, why in [((), "box: only 0 of 1 h100 free (nvidia-smi lists no h100)"),
                       (DispatchError("no nvidia-smi on the login PATH"),
                        "box: availability check failed: no nvidia-smi on the login PATH"),
                       (DispatchError("cannot parse nvidia-smi output: unexpected line"),
                        "box: availability check failed: cannot parse nvidia-smi output")]:
        src = fake(plain={"box": plain})
        with pytest.raises(SolveError) as info:
            await solve_or_raise(HardwareRequest("h100", 1, preferred_clusters=LAB_ONLY),
                                 config(), True, availability=src)
        assert why in str(info.value)


async def test_free_gpus_never_exceed_the_configured_count() -> None:
    # The host has 3 idle a6000 but the config offers 2: two are named, in index order.
    src = fake(plain={"box": (gpu(3, "a6000"), gpu(1, "a6000"), gpu(0, "a6000"))})
    res = await solve_or_raise(HardwareRequest("a6000", 1, preferred_clusters=LAB_ONLY),
                               config(), True, availability=src)
    assert res.result is not None and [g.index for g in res.result.free_gpus] == [0, 1]
    assert res.result.available == 2
