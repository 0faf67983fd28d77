"""rank="earliest_start": the solver picks where Slurm estimates the earliest start."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from dispatch.errors import InvalidValueError
from dispatch.placement import HardwareRequest, solve_or_raise
from dispatch.placement.solve import solve_with_reasons
from dispatch.results import RunResult
from dispatch.slurm import StartEstimate

from .test_solve import Fake, config, fake

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def est(minutes: float | None, partition: str = "p", fail: str = "") -> StartEstimate:
    if fail:
        return StartEstimate(None, NOW, (), None, None, RunResult(1, "", fail + "\n"))
    start = None if minutes is None else NOW + timedelta(minutes=minutes)
    return StartEstimate(start, NOW, ("n1",), partition, 1, RunResult(0, "", ""))


@dataclass
class Timed(Fake):
    """`Fake` that also answers start estimates per (ssh, partition, gres type)."""

    starts: dict[tuple[str, str, str], StartEstimate | Exception] = field(default_factory=dict)

    async def slurm_start(self, ssh: str, partition: str, gres_type: str, count: int,
                          seconds: float) -> StartEstimate:
        self.calls.append(("start", ssh, partition, gres_type, str(count)))
        value = self.starts[(ssh, partition, gres_type)]
        if isinstance(value, Exception):
            raise value
        return value


def timed(starts: dict[tuple[str, str, str], StartEstimate | Exception]) -> Timed:
    base = fake()
    return Timed(gres=base.gres, starts=starts)


def only_slurm() -> dict[str, object]:
    cfg = config()
    return {"hosts": {k: v for k, v in cfg.hosts.items() if k in ("hpc", "cloud")}}


async def test_earliest_start_beats_priority_order() -> None:
    # hpc is first in priority, but its gpu partition starts in 2 h; cloud's in 5 min.
    src = timed({("hpc", "gpu", "h100"): est(120), ("hpc", "mixed", "h100"): est(90),
                 ("cloud", "batch", "h100"): est(5)})
    cfg = config(**only_slurm())
    req = HardwareRequest(chip="h100", min_chips=2)
    first = await solve_or_raise(req, cfg, availability=src)
    assert first.host_name == "hpc"  # default rank: first fit, no estimates asked
    assert not any(c[0] == "start" for c in src.calls)
    res = await solve_or_raise(req, cfg, availability=src, rank="earliest_start")
    assert (res.host_name, res.partition) == ("cloud", "batch")
    assert res.start is not None and res.start.delay == timedelta(minutes=5)
    assert "starts later" in res.rejections["hpc"]
    assert ("start", "hpc", "gpu", "h100", "2") in src.calls


async def test_earliest_partition_within_a_host_and_failures_explained() -> None:
    # Any chip: hpc can run h100 in partition gpu (in 1 h) or a100 in partition a100 (1 min).
    src = timed({("hpc", "gpu", "h100"): est(60),
                 ("hpc", "a100", "a100"): est(1, "a100"),
                 ("cloud", "batch", "h100"): est(None, fail="allocation failure: too big")})
    res = await solve_or_raise(HardwareRequest(min_chips=1), config(**only_slurm()),
                               availability=src, rank="earliest_start")
    assert (res.host_name, res.partition) == ("hpc", "a100")
    assert res.result is not None and res.result.chip.name == "a100-sxm4-80gb"
    assert res.result.gres_type == "a100"
    assert "allocation failure: too big" in res.rejections["cloud"]


async def test_free_plain_host_starts_now_and_ties_keep_order() -> None:
    src = timed({("hpc", "gpu", "h100"): est(0), ("hpc", "mixed", "h100"): est(0),
                 ("cloud", "batch", "h100"): est(0)})
    cfg = config()  # hpc first (priority), then box (1 h100 on paper) ...
    res = await solve_or_raise(HardwareRequest(chip="h100", min_chips=1), cfg,
                               availability=src, rank="earliest_start")
    assert res.host_name == "hpc"  # a tie at "now": solver order decides
    src.starts[("hpc", "gpu", "h100")] = est(30)
    src.starts[("hpc", "mixed", "h100")] = est(30)
    res = await solve_or_raise(HardwareRequest(chip="h100", min_chips=1), cfg,
                               availability=src, rank="earliest_start")
    assert res.host_name == "box" and not res.is_slurm and res.start is None


async def test_nothing_estimated_is_unsolved_with_reasons() -> None:
    boom = RuntimeError("ssh: connection refused")
    src = timed({("hpc", "gpu", "h100"): boom, ("hpc", "mixed", "h100"): est(None),
                 ("cloud", "batch", "h100"): est(None)})
    res = await solve_with_reasons(HardwareRequest(chip="h100", min_chips=1),
                                   config(**only_slurm()), availability=src,
                                   rank="earliest_start")
    assert res.result is None
    assert "connection refused" in res.rejections["hpc"]
    assert "no start time estimated" in res.rejections["cloud"]


async def test_bad_rank_and_source_without_estimates() -> None:
    req = HardwareRequest(chip="h100", min_chips=1)
    with pytest.raises(InvalidValueError, match="'soonest'"):
        await solve_or_raise(req, config(), availability=fake(), rank="soonest")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="slurm_start"):
        await solve_or_raise(req, config(), availability=fake(), rank="earliest_start")
