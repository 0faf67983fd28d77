"""SLURM state that belongs to a pool (pollers, their counters, the remote identity) lives
on the pool: each pool has its own, and closing the pool stops its pollers."""

from __future__ import annotations

import asyncio

import pytest

from dispatch.slurm import poller
from dispatch.slurm.job import SlurmJob
from dispatch.slurm.poller import wait
from dispatch.slurm.query import cancel
from dispatch.slurm.submission import submit
from dispatch.ssh import Pool

from ..conftest import Testbed


async def test_closing_the_pool_stops_its_pollers(testbed: Testbed) -> None:
    job = SlurmJob(name="pool-held", command="true", partition="cpu", output="/dev/null",
                   extra_directives=["--begin=now+3600"])
    result = await submit(job, testbed.slurm)
    assert result.job_id is not None, result.ssh_result
    outer = poller.poller_stats(testbed.slurm)
    outer_started = outer.pollers_started
    try:
        async with Pool() as pool:
            stats = poller.poller_stats(testbed.slurm)
            assert stats is not outer  # counters are per pool
            task = asyncio.create_task(wait(result.job_id, testbed.slurm, poll_interval=0.2))
            deadline = asyncio.get_running_loop().time() + 15
            while stats.squeue_calls < 2:  # the poller of this pool is polling
                assert asyncio.get_running_loop().time() < deadline, stats
                await asyncio.sleep(0.05)
            assert stats.active_pollers == 1 and stats.pollers_started == 1
        # Leaving the scope closed the pool: its poller stopped and the wait was told why.
        assert stats.active_pollers == 0
        assert pool.registry.peek(poller.POLLERS) is None
        with pytest.raises(RuntimeError, match="Pool was closed while waiting"):
            await asyncio.wait_for(task, 5)
        settled = stats.squeue_calls
        await asyncio.sleep(0.6)  # three would-be intervals: nothing polls any more
        assert stats.squeue_calls == settled
        assert outer.pollers_started == outer_started  # the outer pool's poller never ran
    finally:
        await cancel(result.job_id, testbed.slurm)
