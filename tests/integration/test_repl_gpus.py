"""dispatch_repl on a plain GPU box (issue 18): the notebook lands on free GPUs, pinned by
UUID, and concurrent sessions never share one. The plain host gets a scripted 2-GPU
nvidia-smi with fresh UUIDs per test (the ``two_gpus`` fixture of test_solve_testbed), and
Jupyter is real (the testbed's venv). What the notebook sees is read from the server's
/proc/<pid>/environ."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from dispatch.errors import SolveError
from dispatch.jupyter.api import ReplResult, dispatch_repl, end_repl
from dispatch.placement import (
    ClusterConfig,
    DispatchConfig,
    HardwareRequest,
    JobSpec,
    PlainHostConfig,
    SshAvailability,
)
from dispatch.placement.claims import held_claims_command, parse_held_claims
from dispatch.placement.nvidia_smi import GpuReading
from dispatch.ssh import run

from ..support.faults import apoll
from ..support.local import free_port as _free_port
from .test_repl import JUPYTER, _jupyter_installed, git_repo, remote_base
from .test_solve_testbed import TwoGpuBox, two_gpus

__all__ = ["_jupyter_installed", "git_repo", "remote_base", "two_gpus"]  # fixtures used here


class ProbedTogether(SshAvailability):
    """The real probe, but each answer is held back until ``n`` probes have answered: the
    callers all solve on the same (then stale) facts, as sessions started at the same
    moment do, so the claim locks alone must keep them apart."""

    def __init__(self, nvidia_smi: str, n: int) -> None:
        super().__init__(nvidia_smi)
        self.n = n
        self.answered = 0
        self.all_in = asyncio.Event()

    async def plain_free_gpus(self, ssh: str, seconds: float) -> tuple[GpuReading, ...]:
        readings = await super().plain_free_gpus(ssh, seconds)
        self.answered += 1
        if self.answered >= self.n:
            self.all_in.set()
        await self.all_in.wait()
        return readings


def _config(box: TwoGpuBox, base: str) -> DispatchConfig:
    return DispatchConfig(
        clusters={"tb": ClusterConfig(root=f"{base}/root", work=f"{base}/work",
                                      log=f"{base}/logs")},
        hosts={"box": PlainHostConfig(ssh=box.host, cluster="tb", chips={"h200": 2})},
    )


async def _cuda_visible(host: str, pid: int) -> str | None:
    """CUDA_VISIBLE_DEVICES in the environment of process ``pid`` (None: not set)."""
    res = await run(f"tr '\\0' '\\n' < /proc/{pid}/environ", host, login_shell=False)
    assert res.ok, res
    for line in res.stdout.splitlines():
        if line.startswith("CUDA_VISIBLE_DEVICES="):
            return line.split("=", 1)[1]
    return None


async def _held(host: str) -> frozenset[str]:
    res = await run(held_claims_command(), host, timeout=30)
    assert res.ok, res
    return parse_held_claims(res.stdout)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


async def test_concurrent_sessions_get_different_gpus_and_ending_one_frees_it(
    two_gpus: TwoGpuBox, remote_base: str, git_repo: Path
) -> None:
    await two_gpus.script("two-idle")
    host, uuids = two_gpus.host, two_gpus.uuids
    cfg = _config(two_gpus, remote_base)
    one_gpu = HardwareRequest("h200", 1)
    live: list[ReplResult] = []

    async def start(name: str, availability: SshAvailability) -> ReplResult:
        res = await dispatch_repl(JobSpec(name), one_gpu, cfg, _free_port(),
                                  jupyter_command=JUPYTER, repo_path=git_repo,
                                  startup_timeout=90, availability=availability)
        if res.ok:
            live.append(res)
        return res

    try:
        # Three sessions for 1 GPU at the same moment, all solved on the facts from before
        # any of them claimed: two get different GPUs, the third cannot claim one.
        together = ProbedTogether(two_gpus.path, 3)
        results = await asyncio.gather(*(start(f"gpu{i}", together) for i in range(3)))
        started = [r for r in results if r.ok]
        failed = [r for r in results if not r.ok]
        assert len(started) == 2 and len(failed) == 1, [r.stderr for r in results]
        assert sorted(g for r in started for g in r.gpus) == sorted(uuids)
        for res in started:
            assert len(res.gpus) == 1
            assert res.remote_pid is not None
            assert await _cuda_visible(host, res.remote_pid) == res.gpus[0]
        assert await _held(host) >= set(uuids)

        # The loser: one clear line, and nothing of it left running.
        lost = failed[0]
        assert lost.stderr == (
            f"dispatch_repl: claiming 1 GPU(s) on {host} failed: cannot claim 1 GPU(s): only "
            "0 of 2 free GPU(s) unclaimed (another dispatch session holds the rest)\n")
        assert lost.gpus == () and lost.local_url is None and lost.remote_pid is None
        name = lost.log_path.rsplit("/", 1)[-1].removesuffix(".log")
        left = await run(["pgrep", "-f", name], host, login_shell=False)
        assert left.stdout.strip() == "", left.stdout

        # A session asked for now: the solver sees both GPUs claimed.
        with pytest.raises(SolveError) as info:
            await start("gpu3", SshAvailability(nvidia_smi=two_gpus.path))
        assert "box: only 0 of 2 h200 free (GPU 0: claimed by another dispatch session" in str(
            info.value)

        # Ending one session frees exactly its GPU; the next session gets that one.
        first = started[0]
        assert (await end_repl(first)).ok
        live.remove(first)

        async def released() -> bool:
            return first.gpus[0] not in await _held(host)

        assert await apoll(released, 20)
        assert started[1].gpus[0] in await _held(host)
        again = await start("gpu4", SshAvailability(nvidia_smi=two_gpus.path))
        assert again.ok, again.stderr
        assert again.gpus == first.gpus
        assert again.remote_pid is not None
        assert await _cuda_visible(host, again.remote_pid) == first.gpus[0]
    finally:
        ended = [await end_repl(r) for r in live]
    assert all(e.ok for e in ended), [e.stderr for e in ended]
    assert await apoll(lambda: _none_held(host, uuids), 20)  # every claim released


async def _held_any(host: str, uuids: tuple[str, str]) -> bool:
    return bool(await _held(host) & set(uuids))


async def _none_held(host: str, uuids: tuple[str, str]) -> bool:
    return not await _held_any(host, uuids)


async def test_cpu_only_and_unchecked_sessions_are_not_pinned(
    two_gpus: TwoGpuBox, remote_base: str, git_repo: Path
) -> None:
    """CPU-only work claims nothing; with check_availability=False no GPU is known free,
    so the session is not pinned (and claims nothing) rather than pinned blind."""
    await two_gpus.script("two-idle")
    cfg = _config(two_gpus, remote_base)
    for request, check in ((HardwareRequest(min_chips=0), True),
                           (HardwareRequest("h200", 1), False)):
        port = _free_port()
        res = await dispatch_repl(JobSpec("unpinned"), request, cfg, port,
                                  check_availability=check, jupyter_command=JUPYTER,
                                  repo_path=git_repo, startup_timeout=90,
                                  availability=SshAvailability(nvidia_smi=two_gpus.path))
        try:
            assert res.ok, res.stderr
            assert res.gpus == ()
            assert res.remote_pid is not None
            assert await _cuda_visible(two_gpus.host, res.remote_pid) is None
            assert not await _held_any(two_gpus.host, two_gpus.uuids)
            assert _port_open(port)
        finally:
            assert (await end_repl(res)).ok
