"""The hardware solver: pick the host (and SLURM partition) for a `HardwareRequest`.

Rules, in order:

- Hosts are tried in ``priority`` order, then the rest in config order; an
  ``interactive`` request tries plain hosts before SLURM hosts (stable in that order).
- ``preferred_clusters`` (when non-empty) keeps only hosts of those clusters;
  ``forbidden_clusters`` drops hosts of those clusters.
- CPU-only requests (``min_chips == 0``) go to the first plain host, or to a SLURM host's
  first ``cpu_partitions`` entry.
- A plain host satisfies a GPU request when its configured count of the chip is at least
  ``min_chips``; with ``check_availability``, when that many of its GPUs *of that chip*
  are free (on a host with several kinds, an idle A6000 does not make a busy H100 free).
  A GPU is busy when one of its compute processes uses >= ``gpu_busy_mib`` MiB (default
  100; 0 MiB, N/A or no memory reading does not count), when its utilization is >=
  ``gpu_busy_utilization`` % (default 90; None turns it off), or when another dispatch
  session claimed it (`dispatch.placement.claims`). When nvidia-smi is missing, fails or
  prints something unparseable, none of the host's GPUs is available (the rejection says
  why). The result's ``free_gpus`` names the free GPUs of the chosen chip.
- A SLURM host needs the chip in ``gres_mapping``, must allow that many in its ``chips``
  limits (when set), and needs a partition (configured ones, default first; all of
  sinfo's when none are configured) whose nodes carry that GRES type, at least
  ``min_chips`` of it on one node; with ``check_availability``, a node in it with
  ``min_chips`` free GPUs (``available_gpus``).
- A request is placed on ONE node: ``min_chips`` larger than any node of a partition has
  rejects that partition even when several nodes together have enough (a multi-node job
  is the caller's choice: ``SlurmJob(nodes=N, gpus_per_node=K)``).
- When nothing satisfies the request, the SLURM host with the most available chips of
  the kind is chosen (the job will queue there).
- ``rank="earliest_start"`` ranks instead by when the work would start: each candidate
  SLURM partition is asked ``sbatch --test-only`` (Slurm's own plan, nothing queued), a
  plain host that can take the request starts now, and the earliest start wins (ties in
  solver order). ``SolveResult.start`` holds the winner's estimate. The default,
  ``rank="free_now"``, is the first-fit order above.

Plain hosts need no I/O unless ``check_availability``; each SLURM host is asked once
(``sinfo -o %P|%G``) which partitions carry which GRES, even without it. All I/O for all
candidate hosts runs concurrently (``asyncio.gather``), so a solve costs about one round
trip. The I/O is behind `AvailabilitySource`, injectable for tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal, cast

from ..errors import InvalidValueError, SolveError
from ..slurm import StartEstimate
from .hardware import SUPPORTED_CHIPS, Chip, GpuRef, HardwareRequest, HardwareResult
from .inventory import RemoteInventory
from .models import DispatchConfig, PlainHostConfig, SlurmHostConfig
from .nvidia_smi import BusyRule, busy_reason
from .probe import AvailabilitySource, GresTable, PlainGpus, SshAvailability, StartSource

__all__ = ["SolveResult", "solve_or_raise", "Rank", "RANKS"]

#: How the solver ranks hosts that can take a request: the first that has the GPUs free
#: now (config order), or the earliest start Slurm estimates.
Rank = Literal["free_now", "earliest_start"]
RANKS: tuple[str, ...] = ("free_now", "earliest_start")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SolveResult:
    """Result of solving for hardware allocation.

    ``rejections`` says, per host, why it was not chosen; ``fallback`` is True when no
    host satisfied the request and the SLURM host with the most availability was taken.
    """

    result: HardwareResult | None
    host_name: str | None
    host_config: PlainHostConfig | SlurmHostConfig | None
    is_slurm: bool
    partition: str | None
    rejections: dict[str, str] = field(default_factory=dict, kw_only=True)
    fallback: bool = field(default=False, kw_only=True)
    start: StartEstimate | None = field(default=None, kw_only=True)


@dataclass
class _Facts:
    """What the concurrent I/O phase learned about one host (or why it failed)."""

    plain_free: PlainGpus | None = None
    gres: dict[str, dict[str, int]] | None = None
    free: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    starts: dict[str, StartEstimate | str] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class _PlainView:
    """A plain host's GPUs under its busy rule: free counts per chip (or one number), the
    free GPUs and why the others are busy (when the source gave per-GPU readings)."""

    counts: int | Mapping[str, int]
    free: Mapping[str, tuple[GpuRef, ...]] = field(default_factory=dict)
    busy: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    read: bool = False


def _plain_view(facts: PlainGpus | None, host: PlainHostConfig) -> _PlainView:
    if facts is None:
        return _PlainView(0)
    if isinstance(facts, int | Mapping):
        return _PlainView(facts)
    rule = BusyRule(host.gpu_busy_mib, host.gpu_busy_utilization)
    free: dict[str, list[GpuRef]] = {}
    busy: dict[str, list[str]] = {}
    for gpu in sorted(facts, key=lambda g: g.index):
        why = busy_reason(gpu, rule)
        if why is None:
            free.setdefault(gpu.chip, []).append(gpu.ref)
        else:
            busy.setdefault(gpu.chip, []).append(f"GPU {gpu.index}: {why}")
    return _PlainView({c: len(v) for c, v in free.items()},
                      {c: tuple(v) for c, v in free.items()},
                      {c: tuple(v) for c, v in busy.items()}, read=True)


def _plain_shortage(view: _PlainView, chip: str, free: int, have: int) -> str:
    """`only 0 of 2 h100 free`, with why each GPU of the chip is busy when known."""
    text = f"only {free} of {have} {chip} free"
    if not view.read:
        return text
    busy = view.busy.get(chip, ())
    if not busy and not view.free.get(chip):
        return f"{text} (nvidia-smi lists no {chip})"
    shown = "; ".join(busy[:4]) + ("; ..." if len(busy) > 4 else "")
    return f"{text} ({shown})" if shown else text


@dataclass
class _Candidate:
    result: HardwareResult
    total_free: int


def _plain_free(facts: int | Mapping[str, int] | None, chip: str, configured: int) -> int:
    """Free GPUs of ``chip`` on a plain host (per-chip counts when the source has them: a
    busy H100 is not freed by an idle A6000 beside it), at most the configured count."""
    n = facts.get(chip, 0) if isinstance(facts, Mapping) else (facts or 0)
    return min(n, configured)


def _order(request: HardwareRequest, config: DispatchConfig) -> list[str]:
    names = config.ordered_hosts()
    if request.interactive:
        names.sort(key=lambda n: isinstance(config.hosts[n], SlurmHostConfig))
    return names


def _cluster_reason(request: HardwareRequest, cluster: str) -> str | None:
    if request.preferred_clusters and cluster not in request.preferred_clusters:
        return f"cluster {cluster!r} not in preferred_clusters {request.preferred_clusters}"
    if cluster in request.forbidden_clusters:
        return f"cluster {cluster!r} is forbidden"
    return None


def _chip_candidates(request: HardwareRequest, offered: Sequence[str]) -> list[Chip]:
    if request.chip_obj is not None:
        return [request.chip_obj]
    return [SUPPORTED_CHIPS[c] for c in offered if c in SUPPORTED_CHIPS and c != "cpu"]


def _gres_counts(table: GresTable) -> dict[str, dict[str, int]]:
    """Normalise a `GresTable`: sets become counts of 0 (unknown)."""
    return {p: dict(v) if isinstance(v, Mapping) else dict.fromkeys(v, 0)
            for p, v in table.items()}


def _slurm_partitions(host: SlurmHostConfig, gres: dict[str, dict[str, int]]) -> list[str]:
    if not host.partitions:
        return list(gres)
    ordered = sorted(host.partitions, key=lambda p: not p.default)
    return [p.name for p in ordered]


def _slurm_plan(request: HardwareRequest, config: DispatchConfig, host: SlurmHostConfig,
                gres: dict[str, dict[str, int]]) -> tuple[list[tuple[Chip, str, str]], str]:
    """Statically possible (chip, gres type, partition) triples, or the reason for none."""
    chips = _chip_candidates(request, list(config.gres_mapping))
    if not chips:
        return [], "no chip in gres_mapping"
    plan: list[tuple[Chip, str, str]] = []
    reasons: list[str] = []
    for chip in chips:
        gres_type = config.gres_mapping.get(chip.name)
        if gres_type is None:
            reasons.append(f"{chip.name} not in gres_mapping")
            continue
        if host.chips is not None and host.chips.get(chip.name, 0) < request.min_chips:
            reasons.append(f"chip limit for {chip.name} is {host.chips.get(chip.name, 0)}")
            continue
        parts = [p for p in _slurm_partitions(host, gres) if gres_type in gres.get(p, {})]
        if not parts:
            reasons.append(f"no partition has GRES gpu:{gres_type} "
                           f"(partitions: {_fmt_gres(gres)})")
            continue
        # One request runs on one node: a partition whose biggest node has fewer GPUs of
        # the type can never run it (sbatch would refuse it), however many nodes it has.
        small = {p: gres[p][gres_type] for p in parts if 0 < gres[p][gres_type] < request.min_chips}
        parts = [p for p in parts if p not in small]
        if not parts:
            most = ", ".join(f"{p}: {n}" for p, n in small.items())
            reasons.append(f"no node has {request.min_chips} gpu:{gres_type} (most on one "
                           f"node: {most}); a request is placed on one node, use "
                           f"SlurmJob(nodes=N, gpus_per_node=K) for a multi-node job")
            continue
        plan.extend((chip, gres_type, p) for p in parts)
    return plan, "; ".join(reasons)


def _fmt_gres(gres: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{p}={sorted(t) or '-'}" for p, t in gres.items()) or "none"


async def _estimates(source: StartSource, ssh: str, count: int, keys: list[tuple[str, str]],
                     seconds: float) -> dict[str, StartEstimate | str]:
    """Slurm's start estimate per ``(gres type, partition)``; a failure becomes its text."""
    got = await asyncio.gather(*(source.slurm_start(ssh, p, g, count, seconds)
                                 for g, p in keys), return_exceptions=True)
    out: dict[str, StartEstimate | str] = {}
    for (g, p), est in zip(keys, got, strict=True):
        if isinstance(est, asyncio.CancelledError):
            raise est
        out[f"{p}|{g}"] = (str(est) or type(est).__name__) if isinstance(est, BaseException) \
            else est
    return out


async def _gather_facts(request: HardwareRequest, config: DispatchConfig, names: list[str],
                        check: bool, seconds: float,
                        source: AvailabilitySource, rank: str = "free_now",
                        ) -> dict[str, _Facts]:
    """Run every host's I/O concurrently; failures become ``_Facts.error``."""

    async def plain(host: PlainHostConfig) -> _Facts:
        return _Facts(plain_free=await source.plain_free_gpus(host.ssh, seconds))

    async def slurm(host: SlurmHostConfig) -> _Facts:
        gres = _gres_counts(await source.partition_gres(host.ssh, seconds))
        facts = _Facts(gres=gres)
        plan, _ = _slurm_plan(request, config, host, gres)
        keys = list(dict.fromkeys((g, p) for _, g, p in plan))
        starts: asyncio.Future[dict[str, StartEstimate | str]] | None = None
        if rank == "earliest_start" and keys:
            starts = asyncio.ensure_future(_estimates(
                cast(StartSource, source), host.ssh, request.min_chips, keys, seconds))
        try:
            if check:
                lists = await asyncio.gather(
                    *(source.slurm_free_gpus(host.ssh, p, g, seconds) for g, p in keys))
                for (g, p), nodes in zip(keys, lists, strict=True):
                    facts.free[f"{p}|{g}"] = [(n, c) for n, c in nodes
                                              if n not in host.exclude]
            if starts is not None:
                facts.starts = await starts
        finally:
            if starts is not None and not starts.done():
                starts.cancel()
        return facts

    jobs: dict[str, asyncio.Future[_Facts] | asyncio.Task[_Facts]] = {}
    for name in names:
        host = config.hosts[name]
        if isinstance(host, SlurmHostConfig):
            if request.cpu_only:
                continue
            jobs[name] = asyncio.ensure_future(slurm(host))
        elif check and not request.cpu_only and any(
                host.chips.get(c.name, 0) >= request.min_chips
                for c in _chip_candidates(request, list(host.chips))):
            # Only hosts that have enough of the chip on paper are asked.
            jobs[name] = asyncio.ensure_future(plain(host))
    if not jobs:
        return {}
    done = await asyncio.gather(*jobs.values(), return_exceptions=True)
    facts: dict[str, _Facts] = {}
    for name, outcome in zip(jobs, done, strict=True):
        if isinstance(outcome, BaseException):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            facts[name] = _Facts(error=str(outcome) or type(outcome).__name__)
        else:
            facts[name] = outcome
    return facts


async def _solve(request: HardwareRequest, config: DispatchConfig, check: bool,
                 seconds: float, source: AvailabilitySource,
                 rank: str = "free_now") -> SolveResult:
    """Ask the source about every eligible host at once, then decide (no I/O there)."""
    rejections: dict[str, str] = {}
    eligible = []
    for name in _order(request, config):
        reason = _cluster_reason(request, config.hosts[name].cluster)
        if reason:
            rejections[name] = reason
        else:
            eligible.append(name)
    facts = await _gather_facts(request, config, eligible, check, seconds, source, rank)
    if rank == "earliest_start" and not request.cpu_only:
        return _decide_earliest(request, config, eligible, facts, check, rejections)
    return _decide(request, config, eligible, facts, check, rejections)


def _decide_earliest(request: HardwareRequest, config: DispatchConfig, eligible: list[str],
                     facts: Mapping[str, _Facts], check: bool,
                     rejections: dict[str, str]) -> SolveResult:
    """``rank="earliest_start"``: the candidate Slurm (or a free plain host) would start
    first; ties go to the earlier host in solver order. Pure, like `_decide`."""
    inv = RemoteInventory(config)
    cands: list[tuple[timedelta, int, SolveResult]] = []
    for idx, name in enumerate(eligible):
        host = config.hosts[name]
        if isinstance(host, PlainHostConfig):
            own = _decide(request, config, [name], facts, check, rejections)
            if own.result is not None:
                cands.append((timedelta(0), idx, own))
            continue
        fact = facts.get(name, _Facts())
        if fact.error is not None:
            rejections[name] = f"availability check failed: {fact.error}"
            continue
        plan, why = _slurm_plan(request, config, host, fact.gres or {})
        if not plan:
            rejections[name] = why
            continue
        best: tuple[timedelta, HardwareResult, StartEstimate] | None = None
        notes: list[str] = []
        for chip, gres_type, part in plan:
            est = fact.starts.get(f"{part}|{gres_type}", "not estimated")
            if isinstance(est, str) or est.delay is None:
                said = est if isinstance(est, str) else est.describe()
                notes.append(f"partition {part!r}: {said}")
                continue
            nodes = fact.free.get(f"{part}|{gres_type}", [])
            top = max((c for _, c in nodes), default=0) if check else None
            res = HardwareResult(name, host.ssh, chip, request.min_chips,
                                 inv.get_cluster(host.cluster), partition=part,
                                 is_slurm=True, gres_type=gres_type, available=top,
                                 interactive=request.interactive)
            if best is None or est.delay < best[0]:
                best = (est.delay, res, est)
        if best is None:
            rejections[name] = "no start estimate: " + "; ".join(notes)
            continue
        delay, res, est = best
        cands.append((delay, idx, SolveResult(
            result=res, host_name=name, host_config=host, is_slurm=True,
            partition=res.partition, rejections=rejections, start=est)))
    if not cands:
        return SolveResult(result=None, host_name=None, host_config=None, is_slurm=False,
                           partition=None, rejections=rejections)
    cands.sort(key=lambda c: (c[0], c[1]))
    chosen = cands[0][2]
    for delay, _, other in cands[1:]:
        if other.host_name is not None and other.host_name != chosen.host_name:
            rejections[other.host_name] = (f"starts later (in {delay}) than "
                                           f"{chosen.host_name} (in {cands[0][0]})")
    return chosen


def _decide(request: HardwareRequest, config: DispatchConfig, eligible: list[str],
            facts: Mapping[str, _Facts], check: bool,
            rejections: dict[str, str]) -> SolveResult:
    """The pure half of the solver: the first eligible host (in order) that the facts
    satisfy; else the best SLURM fallback; else no result. Adds to ``rejections``."""
    inv = RemoteInventory(config)
    fallbacks: list[tuple[str, _Candidate]] = []

    def done(name: str, res: HardwareResult, fallback: bool = False) -> SolveResult:
        return SolveResult(result=res, host_name=name, host_config=config.hosts[name],
                           is_slurm=res.is_slurm, partition=res.partition,
                           rejections=rejections, fallback=fallback)

    for name in eligible:
        host = config.hosts[name]
        cluster = inv.get_cluster(host.cluster)
        cpu = SUPPORTED_CHIPS["cpu"]
        interactive = request.interactive
        if request.cpu_only:
            if isinstance(host, PlainHostConfig):
                return done(name, HardwareResult(name, host.ssh, cpu, 0, cluster,
                                                 interactive=interactive))
            if host.cpu_partitions:
                return done(name, HardwareResult(name, host.ssh, cpu, 0, cluster,
                                                 partition=host.cpu_partitions[0],
                                                 is_slurm=True, interactive=interactive))
            rejections[name] = "CPU-only request and no cpu_partitions configured"
            continue
        fact = facts.get(name, _Facts())
        if fact.error is not None:
            rejections[name] = f"availability check failed: {fact.error}"
            continue
        if isinstance(host, PlainHostConfig):
            gpus = {c: k for c, k in host.chips.items() if c != "cpu" and k > 0}
            if not gpus:
                rejections[name] = "has no GPUs configured"
                continue
            chips = _chip_candidates(request, list(gpus))
            have = {c.name: host.chips.get(c.name, 0) for c in chips}
            enough = [c for c in chips if have[c.name] >= request.min_chips]
            if not enough:
                rejections[name] = "has " + ", ".join(f"{n} x{k}" for n, k in gpus.items())
                continue
            picked = enough[0]
            available: int | None = None
            refs: tuple[GpuRef, ...] = ()
            if check:
                view = _plain_view(fact.plain_free, host)
                free = {c.name: _plain_free(view.counts, c.name, have[c.name]) for c in enough}
                ready = next((c for c in enough if free[c.name] >= request.min_chips), None)
                if ready is None:
                    rejections[name] = "; ".join(
                        _plain_shortage(view, c.name, free[c.name], have[c.name])
                        for c in enough)
                    continue
                picked, available = ready, free[ready.name]
                refs = view.free.get(ready.name, ())[:have[ready.name]]
            return done(name, HardwareResult(name, host.ssh, picked, request.min_chips, cluster,
                                             available=available, interactive=interactive,
                                             free_gpus=refs))
        plan, why = _slurm_plan(request, config, host, fact.gres or {})
        if not plan:
            rejections[name] = why
            continue
        if not check:
            chip, gres_type, part = plan[0]
            return done(name, HardwareResult(name, host.ssh, chip, request.min_chips, cluster,
                                             partition=part, is_slurm=True, gres_type=gres_type,
                                             interactive=interactive))
        best: tuple[int, int, Chip, str, str] | None = None  # (max on a node, total, ...)
        for chip, gres_type, part in plan:
            nodes = fact.free.get(f"{part}|{gres_type}", [])
            top = max((c for _, c in nodes), default=0)
            total = sum(c for _, c in nodes)
            if top >= request.min_chips:
                return done(name, HardwareResult(
                    name, host.ssh, chip, request.min_chips, cluster, partition=part,
                    is_slurm=True, gres_type=gres_type, available=top, interactive=interactive))
            if best is None or total > best[1]:
                best = (top, total, chip, gres_type, part)
        assert best is not None
        top, total, chip, gres_type, part = best
        rejections[name] = (f"no node has {request.min_chips} free gpu:{gres_type} "
                            f"(most free on one node: {top}, in partition {part!r})")
        fallbacks.append((name, _Candidate(
            HardwareResult(name, host.ssh, chip, request.min_chips, cluster, partition=part,
                           is_slurm=True, gres_type=gres_type, available=top,
                           interactive=interactive), total)))
    if fallbacks:
        # Most availability wins; on a tie, the earlier host in solver order.
        name, cand = max(fallbacks, key=lambda f: f[1].total_free)
        log.info("no host satisfies %s now; falling back to %s (%d free)",
                 request.describe(), name, cand.total_free)
        return done(name, cand.result, fallback=True)
    return SolveResult(result=None, host_name=None, host_config=None, is_slurm=False,
                       partition=None, rejections=rejections)


async def solve(request: HardwareRequest, config: DispatchConfig,
                check_availability: bool = False, timeout: float = 30.0,
                *, availability: AvailabilitySource | None = None,
                rank: Rank = "free_now") -> SolveResult | None:
    """Solve for hardware; None when no host can take the request (see module docs).

    Args:
        request: What to place (chip, count, cluster preferences). Its `interactive` flag
            puts plain hosts first (a session that starts now).
        config: The hosts and clusters to choose from.
        check_availability: Ask the hosts over SSH what is free now, instead of trusting
            the configured chip counts.
        timeout: Seconds allowed for each availability query.
        availability: Replaces the SSH-backed source of live facts (tests, simulations).
        rank: ``"free_now"`` (default): the first host, in solver order, that can take
            the request now. ``"earliest_start"``: the host and partition where Slurm
            estimates the earliest start (``sbatch --test-only``; a plain host that can
            take it starts now); `SolveResult.start` holds the estimate.

    Returns:
        The chosen host and allocation, or None when no host can take the request.

    Raises:
        SolveError: Solving took longer than `timeout` (plus a margin).
    """
    res = await solve_with_reasons(request, config, check_availability, timeout,
                                   availability=availability, rank=rank)
    return res if res.result is not None else None


async def solve_with_reasons(request: HardwareRequest, config: DispatchConfig,
                             check_availability: bool = False,
                             timeout: float = 30.0,
                             *, availability: AvailabilitySource | None = None,
                             rank: Rank = "free_now") -> SolveResult:
    """Like `solve` but always returns a SolveResult (`result` None if unsolved).

    Args:
        request: What to place (chip, count, cluster preferences).
        config: The hosts and clusters to choose from.
        check_availability: Ask the hosts over SSH what is free now.
        timeout: Seconds allowed for each availability query.
        availability: Replaces the SSH-backed source of live facts (tests, simulations).
        rank: ``"free_now"`` (default): the first host, in solver order, that can take
            the request now. ``"earliest_start"``: the host and partition where Slurm
            estimates the earliest start (``sbatch --test-only``; a plain host that can
            take it starts now); `SolveResult.start` holds the estimate.

    Returns:
        The solution; when unsolved, `result` is None and `rejections` says why each host
        was rejected.

    Raises:
        InvalidValueError: `rank` is not one of `RANKS`.
        TypeError: `request` or `config` has the wrong type.
        SolveError: Solving took longer than `timeout` (plus a margin).
    """
    if not isinstance(request, HardwareRequest):
        raise TypeError(f"request must be a HardwareRequest, got {request!r}")
    if not isinstance(config, DispatchConfig):
        raise TypeError(f"config must be a DispatchConfig, got {config!r}")
    if rank not in RANKS:
        raise InvalidValueError(f"rank must be one of {', '.join(RANKS)}, not {rank!r}")
    source = availability if availability is not None else SshAvailability()
    if rank == "earliest_start" and not callable(getattr(source, "slurm_start", None)):
        raise TypeError(f"rank='earliest_start' needs an availability source with "
                        f"slurm_start (a StartSource); {type(source).__name__} has none")
    try:
        async with asyncio.timeout(timeout + 5.0):
            return await _solve(request, config, check_availability, timeout, source, rank)
    except TimeoutError as exc:
        raise SolveError(f"solving {request.describe()} timed out after {timeout}s") from exc


async def solve_or_raise(request: HardwareRequest, config: DispatchConfig,
                         check_availability: bool = False,
                         timeout: float = 30.0,
                         *, availability: AvailabilitySource | None = None,
                         rank: Rank = "free_now") -> SolveResult:
    """Like solve(), but raises if no solution found.

    Args:
        request: What to place (chip, count, cluster preferences). Its `interactive` flag
            puts plain hosts first.
        config: The hosts and clusters to choose from.
        check_availability: Ask the hosts over SSH what is free now, instead of trusting
            the configured chip counts.
        timeout: Seconds allowed for each availability query.
        availability: Replaces the SSH-backed source of live facts (tests, simulations).
        rank: ``"free_now"`` (default): the first host, in solver order, that can take
            the request now. ``"earliest_start"``: the host and partition where Slurm
            estimates the earliest start (``sbatch --test-only``; a plain host that can
            take it starts now); `SolveResult.start` holds the estimate.

    Returns:
        The chosen host, its configuration, the partition (SLURM) and the allocation
        (`result`, never None here).

    Raises:
        SolveError: No host can take the request; the message says what was asked for and
            why each host was rejected. Also raised when solving timed out.
    """
    res = await solve_with_reasons(request, config, check_availability, timeout,
                                   availability=availability, rank=rank)
    if res.result is None:
        if not config.hosts:
            raise SolveError(f"cannot place {request.describe()}: no hosts configured")
        lines = "\n".join(f"  {h}: {why}" for h, why in res.rejections.items())
        raise SolveError(f"cannot place {request.describe()}; every host was rejected:\n{lines}")
    return res
