"""`watch` on the testbed: the events of a job going PENDING -> RUNNING -> COMPLETED, of an
array's elements, of a cancelled job and of an unknown id; and N watchers plus M waits on
one host cost ONE squeue per poller tick between them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import pytest

from dispatch.errors import InvalidValueError
from dispatch.slurm import JobEvent, hub, poller, watch
from dispatch.slurm.job import SlurmJob
from dispatch.slurm.poller import wait
from dispatch.slurm.query import cancel
from dispatch.slurm.submission import submit
from dispatch.ssh import run
from dispatch.ssh import run as ssh_run

from ..conftest import Testbed

POLL = 0.3


def _cpu(testbed: Testbed) -> str:
    return testbed.env.get("DISPATCH_TESTBED_CPU_PARTITION", "cpu")


async def _submit(testbed: Testbed, command: str, *, held: bool = False, **kw: object) -> int:
    job = SlurmJob(name="dispatch-watch", command=command, partition=_cpu(testbed),
                   output="/dev/null", extra_directives=["--hold"] if held else [],
                   **kw)  # type: ignore[arg-type]
    res = await submit(job, testbed.slurm)
    assert res.job_id is not None, res.ssh_result.stderr
    return res.job_id


async def _events(it: AsyncIterator[JobEvent]) -> list[JobEvent]:
    return [e async for e in it]


def _states(events: list[JobEvent]) -> list[str]:
    """The distinct states in the order seen (COMPLETING, a transient, left out)."""
    out: list[str] = []
    for e in events:
        if e.new_state != "COMPLETING" and (not out or out[-1] != e.new_state):
            out.append(e.new_state)
    return out


async def test_watch_a_job_from_pending_to_completed(testbed: Testbed) -> None:
    job_id = await _submit(testbed, "sleep 3", held=True)
    got: list[JobEvent] = []

    async def collect() -> None:
        async for e in watch(testbed.slurm, [job_id], poll_interval=POLL):
            got.append(e)

    task = asyncio.ensure_future(collect())
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while not got:  # the first sight: held, pending
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert got[0].old_state is None and got[0].new_state == "PENDING"
        assert got[0].reason == "JobHeldUser" and got[0].job_id == job_id
        release = await run(["scontrol", "release", str(job_id)], testbed.slurm)
        assert release.ok, release.stderr
        await asyncio.wait_for(task, 120)
    finally:
        task.cancel()
        await cancel(job_id, testbed.slurm)
    assert _states(got) == ["PENDING", "RUNNING", "COMPLETED"], got
    last = got[-1]
    assert last.is_final and last.exit_code == "0:0" and last.restarts == 0
    assert last.raw_id == str(job_id) and last.array_task is None
    running = next(e for e in got if e.new_state == "RUNNING")
    assert running.nodelist and running.old_state == "PENDING"
    for before, after in itertools.pairwise(got):  # each event follows the last
        assert after.old_state == before.new_state
        assert after.time >= before.time


async def test_watch_an_array_reports_each_element(testbed: Testbed) -> None:
    job_id = await _submit(testbed, "sleep 1; exit $SLURM_ARRAY_TASK_ID", array="0-3")
    events = await asyncio.wait_for(
        _events(watch(testbed.slurm, [job_id], poll_interval=POLL)), 180
    )
    finals = {e.array_task: (e.new_state, e.exit_code) for e in events if e.is_final}
    assert finals == {
        "0": ("COMPLETED", "0:0"), "1": ("FAILED", "1:0"),
        "2": ("FAILED", "2:0"), "3": ("FAILED", "3:0"),
    }, events
    assert {e.job_id for e in events} == {job_id}
    assert {e.raw_id for e in events if e.is_final} == {f"{job_id}_{i}" for i in range(4)}


async def test_watch_a_cancelled_job_ends_with_cancelled(testbed: Testbed) -> None:
    job_id = await _submit(testbed, "true", held=True)
    got: list[JobEvent] = []

    async def collect() -> None:
        async for e in watch(testbed.slurm, [job_id], poll_interval=POLL):
            got.append(e)
            if len(got) == 1:
                cancelled = await cancel(job_id, testbed.slurm)
                assert cancelled.ok, cancelled.stderr

    await asyncio.wait_for(collect(), 90)
    assert [e.new_state for e in got] == ["PENDING", "CANCELLED"], got
    assert got[-1].old_state == "PENDING" and got[-1].reason == ""


async def test_watch_an_unknown_id_ends_with_one_unknown_event(testbed: Testbed) -> None:
    start = asyncio.get_running_loop().time()
    events = await asyncio.wait_for(
        _events(watch(testbed.slurm, [99999998], poll_interval=POLL)), 60
    )
    assert len(events) == 1, events
    e = events[0]
    assert (e.job_id, e.old_state, e.new_state) == (99999998, None, "UNKNOWN")
    assert "neither sacct nor scontrol knows" in e.reason
    assert asyncio.get_running_loop().time() - start < 45  # not SETTLE_SECONDS-bound


async def test_watch_bad_values(testbed: Testbed) -> None:
    with pytest.raises(InvalidValueError, match="at least one job"):
        await _events(watch(testbed.slurm, []))
    with pytest.raises(InvalidValueError, match="list of job ids"):
        await _events(watch(testbed.slurm, 123))  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="poll_interval"):
        await _events(watch(testbed.slurm, [1], poll_interval=0))


async def test_watchers_and_waits_on_one_host_share_one_squeue_per_tick(
    testbed: Testbed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5 watches (one of them of every job of the user) and 5 waits on 5 held jobs."""
    stats = poller.poller_stats(testbed.slurm)
    per_tick: list[int] = []
    squeue_argv: list[list[str]] = []
    real_poll = hub.HostPoller._poll_once
    real_run = ssh_run  # what the poller calls

    async def counting_poll(self: hub.HostPoller) -> None:
        before = stats.squeue_calls
        await real_poll(self)
        per_tick.append(stats.squeue_calls - before)

    async def counting_run(cmd: object, host: str, **kw: object) -> object:
        if isinstance(cmd, list) and cmd and cmd[0] == "squeue" and "%k" not in cmd[2]:
            squeue_argv.append(list(cmd))  # the tick's squeue (not a successor lookup)
        return await real_run(cmd, host, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(hub.HostPoller, "_poll_once", counting_poll)
    monkeypatch.setattr(hub, "run", counting_run)
    calls_before = stats.squeue_calls
    ids = [await _submit(testbed, "true", held=True) for _ in range(5)]
    seen: list[list[JobEvent]] = [[] for _ in range(5)]

    async def collect(i: int) -> None:
        jobs = None if i == 0 else ids[i - 1 : i + 1]
        async with contextlib.aclosing(watch(testbed.slurm, jobs, poll_interval=POLL)) as it:
            async for e in it:
                if e.job_id in ids:
                    seen[i].append(e)
                    if i == 0 and sum(x.is_final for x in seen[0]) == len(ids):
                        return

    watchers = [asyncio.ensure_future(collect(i)) for i in range(5)]
    waits = [asyncio.ensure_future(wait(j, testbed.slurm, poll_interval=POLL)) for j in ids]
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(per_tick) < 10:  # ten ticks with everyone registered and polling
            assert asyncio.get_running_loop().time() < deadline, per_tick
            await asyncio.sleep(0.05)
        for j in ids:
            assert (await cancel(j, testbed.slurm)).ok
        infos = await asyncio.wait_for(asyncio.gather(*waits), 90)
        await asyncio.wait_for(asyncio.gather(*watchers), 90)
    finally:
        for t in [*watchers, *waits]:
            t.cancel()
        for j in ids:
            await cancel(j, testbed.slurm)
    assert all(info.main is not None and info.main.state == "CANCELLED" for info in infos)
    for i in range(1, 5):
        assert {e.job_id for e in seen[i] if e.is_final} == set(ids[i - 1 : i + 1])
    assert max(per_tick) == 1, per_tick  # never more than one squeue in a tick
    assert sum(per_tick) == len(squeue_argv) == stats.squeue_calls - calls_before
    # While the all-jobs watch ran, its `squeue --me` answered for every watch and wait.
    assert squeue_argv[0][-1] == "--me", squeue_argv[0]
