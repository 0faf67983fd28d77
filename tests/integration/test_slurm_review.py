"""Edge cases a user hits first: unknown job ids, odd wait arguments, job arrays, and
values sbatch accepts (``--mem=16GB``) -- all against the testbed cluster."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from dispatch.errors import InvalidValueError
from dispatch.slurm import poller
from dispatch.slurm.job import SlurmJob
from dispatch.slurm.poller import wait, wait_until_running
from dispatch.slurm.query import cancel, job_info, queue, status
from dispatch.slurm.submission import submit

from ..conftest import Testbed

POLL = 0.5


def _never_existed() -> int:
    # Far above any id the testbed hands out, under SLURM's MaxJobId (67108863).
    return 60_000_000 + secrets.randbelow(1_000_000)


async def test_wait_on_unknown_job_returns_soon_with_clear_stderr(testbed: Testbed) -> None:
    job_id = _never_existed()
    # Before: it settled for SETTLE_SECONDS (30 s) and then returned no steps and no word.
    timeout = poller.SETTLE_SECONDS - 5
    info = await wait(job_id, testbed.slurm, poll_interval=POLL, timeout=timeout)
    assert info.ssh_result.returncode != -1, info  # answered, not timed out
    assert info.steps == []
    assert str(job_id) in info.ssh_result.stderr
    assert "neither squeue nor sacct" in info.ssh_result.stderr


async def test_queries_on_unknown_job_answer_without_error(testbed: Testbed) -> None:
    job_id = _never_existed()
    st = await status(job_id, testbed.slurm)
    assert st.job is None and st.ssh_result.ok
    info = await job_info(job_id, testbed.slurm)
    assert info.steps == [] and info.ssh_result.ok
    node, st2 = await wait_until_running(job_id, testbed.slurm, poll_interval=POLL, timeout=20)
    assert node is None and st2.job is None and st2.ssh_result.returncode != -1


@pytest.mark.parametrize("timeout", [-1, -0.5, float("nan"), True])
async def test_wait_rejects_bad_timeout(testbed: Testbed, timeout: float) -> None:
    with pytest.raises(InvalidValueError, match="timeout"):
        await wait(1, testbed.slurm, poll_interval=POLL, timeout=timeout)
    with pytest.raises(InvalidValueError, match="timeout"):
        await wait_until_running(1, testbed.slurm, poll_interval=POLL, timeout=timeout)


@pytest.mark.parametrize("interval", [0, -1, float("nan"), "1", None])
async def test_wait_rejects_bad_poll_interval(testbed: Testbed, interval: object) -> None:
    with pytest.raises(InvalidValueError, match="poll_interval"):
        await wait(1, testbed.slurm, poll_interval=interval, timeout=1)  # type: ignore[arg-type]


async def test_tiny_poll_interval_does_not_spin(testbed: Testbed) -> None:
    stats = poller.poller_stats(testbed.slurm)
    loop = asyncio.get_running_loop()
    job = SlurmJob(name="tiny-poll", command="sleep 3", partition="cpu", output="/dev/null")
    result = await submit(job, testbed.slurm)
    assert result.job_id is not None, result.ssh_result
    before, start = stats.squeue_calls + stats.sacct_calls, loop.time()
    try:
        await wait_until_running(result.job_id, testbed.slurm, poll_interval=1e-6, timeout=30)
        info = await wait(result.job_id, testbed.slurm, poll_interval=1e-6, timeout=60)
    finally:
        await cancel(result.job_id, testbed.slurm)
    assert info.main is not None and info.main.state == "COMPLETED", info
    # At most one squeue (+ one sacct) per MIN_POLL_SECONDS, not back-to-back calls.
    elapsed = loop.time() - start
    calls = stats.squeue_calls + stats.sacct_calls - before
    assert poller.MIN_POLL_SECONDS >= 0.1
    assert calls <= 2 * (elapsed / 0.1 + 2), (calls, elapsed)


async def test_timeout_zero_answers_at_once_as_timed_out(testbed: Testbed) -> None:
    info = await wait(_never_existed(), testbed.slurm, poll_interval=POLL, timeout=0)
    assert info.ssh_result.returncode == -1 and "timed out" in info.ssh_result.stderr


async def test_array_wait_covers_all_elements_and_main_shows_the_failure(
    testbed: Testbed,
) -> None:
    job = SlurmJob(
        name="review-array", partition="cpu", output="/dev/null",
        command='sleep "$SLURM_ARRAY_TASK_ID"; [ "$SLURM_ARRAY_TASK_ID" != 2 ]',
        extra_directives=["--array=1-3"],
    )
    result = await submit(job, testbed.slurm)
    assert result.job_id is not None, result.ssh_result  # the base id
    info = await wait(result.job_id, testbed.slurm, poll_interval=POLL, timeout=120)
    elements = {s.job_id: s.state for s in info.steps if "." not in s.job_id}
    assert elements == {
        f"{result.job_id}_1": "COMPLETED",
        f"{result.job_id}_2": "FAILED",
        f"{result.job_id}_3": "COMPLETED",
    }, info
    assert info.main is not None and info.main.job_id == f"{result.job_id}_2"


async def test_mem_with_gb_suffix_is_accepted_by_sbatch(testbed: Testbed) -> None:
    job = SlurmJob(name="review-mem", command="true", partition="cpu", mem="100MB",
                   output="/dev/null")
    result = await submit(job, testbed.slurm)
    assert result.job_id is not None, result.ssh_result
    info = await wait(result.job_id, testbed.slurm, poll_interval=POLL, timeout=60)
    assert info.main is not None and info.main.state == "COMPLETED", info


async def test_queue_of_unknown_user_is_not_ok(testbed: Testbed) -> None:
    # squeue exits 0 with "error: Invalid user: ..." on stderr; that used to look like an
    # empty queue.
    result = await queue(testbed.slurm, user="nosuchuser" + secrets.token_hex(3))
    assert result.jobs == []
    assert result.ssh_result.returncode == 1
    assert "Invalid user" in result.ssh_result.stderr


async def test_queue_of_known_user_with_no_jobs_is_ok(testbed: Testbed) -> None:
    result = await queue(testbed.slurm, user="root")
    assert result.ssh_result.ok, result.ssh_result
    assert all(job.user == "root" for job in result.jobs)
