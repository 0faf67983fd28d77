"""`follow` on the testbed: from the first line while the job runs, across a requeue (no
line lost or repeated) and across connections cut under it (resumed from the offset)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import dispatch.aio as dx
from dispatch.errors import InvalidValueError
from dispatch.slurm import FollowError, follow
from dispatch.slurm.job import SlurmJob
from dispatch.slurm.submission import submit
from dispatch.ssh import run

from ..conftest import Testbed
from ..support.faults import fault_pool_kwargs
from ..support.relay import Relay
from ..support.sshconf import Alias
from .test_slurm_jobs import remote_dir  # noqa: F401  (fixture)

POLL = 0.3
# Numbered lines, one every 0.2 s, tagged with the run (0, then 1 after a requeue).
COUNTER = (
    'for i in $(seq 1 {n}); do echo "run-${{SLURM_RESTART_COUNT:-0}} line-$i"; sleep 0.2; done'
)


def _cpu(testbed: Testbed) -> str:
    return testbed.env.get("DISPATCH_TESTBED_CPU_PARTITION", "cpu")


def _check_runs(lines: list[str], n: int) -> dict[str, list[int]]:
    """Each run's line numbers, in the order seen; each run must be 1..k with no gap."""
    runs: dict[str, list[int]] = {}
    for line in lines:
        if not line.startswith("run-"):
            continue
        run_tag, num = line.split(" line-")
        runs.setdefault(run_tag, []).append(int(num))
    for tag, nums in runs.items():
        assert nums == list(range(1, len(nums) + 1)), (tag, nums)
    return runs


async def test_follow_from_pending_to_the_end(testbed: Testbed, remote_dir: str) -> None:  # noqa: F811
    job = SlurmJob(name="dispatch-follow", command=COUNTER.format(n=30),
                   partition=_cpu(testbed), workdir=remote_dir,
                   output=f"{remote_dir}/out/follow-%j.out", dependency=None)
    res = await submit(job, testbed.slurm)
    assert res.job_id is not None, res.ssh_result.stderr
    lines = await asyncio.wait_for(
        _collect(follow(res.job_id, testbed.slurm, poll_interval=POLL)), 120
    )
    assert lines == [f"run-0 line-{i}" for i in range(1, 31)]
    # Without live: what the file holds now (the whole output, the job being over).
    again = await _collect(follow(res.job_id, testbed.slurm, live=False))
    assert again == lines


async def test_follow_across_a_requeue_loses_and_repeats_nothing(
    testbed: Testbed, remote_dir: str  # noqa: F811
) -> None:
    job = SlurmJob(name="dispatch-follow-rq", command=COUNTER.format(n=40),
                   partition=_cpu(testbed), workdir=remote_dir,
                   output=f"{remote_dir}/out/rq-%j.out", extra_directives=["--requeue"])
    res = await submit(job, testbed.slurm)
    assert res.job_id is not None, res.ssh_result.stderr
    job_id = res.job_id
    seen: list[str] = []

    async def consume() -> None:
        async for line in follow(job_id, testbed.slurm, poll_interval=POLL):
            seen.append(line)

    task = asyncio.ensure_future(consume())
    deadline = asyncio.get_running_loop().time() + 60
    while sum(1 for s in seen if s.startswith("run-0")) < 5:
        assert asyncio.get_running_loop().time() < deadline, seen
        await asyncio.sleep(0.1)
    requeue = await run(["scontrol", "requeue", str(res.job_id)], testbed.slurm)
    assert requeue.ok, requeue.stderr
    await asyncio.wait_for(task, 240)
    runs = _check_runs(seen, 40)
    assert runs["run-1"] == list(range(1, 41))
    assert len(runs["run-0"]) >= 5


@pytest.fixture
async def relay_pool(testbed: Testbed, tmp_path: Path) -> AsyncIterator[tuple[Relay, dx.Pool]]:
    relay = Relay(testbed.ssh_port)
    conf = os.environ.get("DISPATCH_TESTBED_SLURM_CONF") or testbed.env[
        "DISPATCH_TESTBED_SLURM_CONF"]
    alias = Alias("relayslurm", relay.port, options={"SetEnv": f"SLURM_CONF={conf}"})
    _, kw = fault_pool_kwargs(testbed, tmp_path, [alias])
    try:
        async with dx.Pool(keepalive_interval=1.0, keepalive_count_max=2, **kw) as pool:
            yield relay, pool
    finally:
        relay.stop()


async def test_follow_resumes_from_its_offset_when_the_connection_is_cut(
    testbed: Testbed, remote_dir: str, relay_pool: tuple[Relay, dx.Pool]  # noqa: F811
) -> None:
    relay, _ = relay_pool
    job = SlurmJob(name="dispatch-follow-cut", command=COUNTER.format(n=40),
                   partition=_cpu(testbed), workdir=remote_dir,
                   output=f"{remote_dir}/out/cut-%j.out")
    res = await submit(job, testbed.slurm)
    assert res.job_id is not None, res.ssh_result.stderr
    job_id = res.job_id
    seen: list[str] = []

    async def consume() -> None:
        async for line in follow(job_id, "relayslurm", poll_interval=POLL):
            seen.append(line)

    task = asyncio.ensure_future(consume())
    for cut_after in (5, 15, 25):
        deadline = asyncio.get_running_loop().time() + 60
        while len(seen) < cut_after:
            assert asyncio.get_running_loop().time() < deadline, seen
            await asyncio.sleep(0.05)
        relay.close_connections(rst=True)
    await asyncio.wait_for(task, 120)
    assert seen == [f"run-0 line-{i}" for i in range(1, 41)]
    assert relay.accepted >= 2  # it did reconnect


async def test_follow_bad_values_and_unknown_job(testbed: Testbed) -> None:
    with pytest.raises(InvalidValueError, match="stream"):
        await _collect(follow(1, testbed.slurm, stream="both"))
    with pytest.raises(FollowError, match="job 99999999 on"):
        await _collect(follow(99999999, testbed.slurm))


async def _collect(it: AsyncIterator[str]) -> list[str]:
    return [line async for line in it]
