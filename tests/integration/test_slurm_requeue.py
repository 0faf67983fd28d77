"""Time limits and preemption on the testbed: the job gets its signal, checkpoints, is
requeued, and finishes on its restart, seen by `watch`, `follow` and `wait` together.

The testbed's time limit granularity is a minute and slurmctld checks signals and limits
about every 30 s, so the time-limit test takes 1-2 minutes; the preemption test uses the
testbed's hidden ``urgent`` partition (PreemptMode=REQUEUE, GraceTime 20 s).
"""

from __future__ import annotations

import asyncio

from dispatch.slurm import JobEvent, follow, watch
from dispatch.slurm.job import SlurmJob
from dispatch.slurm.poller import wait, wait_until_running
from dispatch.slurm.submission import submit
from dispatch.ssh import run

from ..conftest import Testbed
from ..support.checkpoint import CHECKPOINTING, cpu_partition, payload_lines
from .test_slurm_jobs import remote_dir  # noqa: F401  (fixture)

POLL = 0.5


async def _run_and_observe(host: str, job_id: int) -> tuple[list[JobEvent], list[str], str]:
    """watch + follow + wait on one job at once; their results."""
    async def events() -> list[JobEvent]:
        return [e async for e in watch(host, [job_id], poll_interval=POLL)]

    async def lines() -> list[str]:
        return [line async for line in follow(job_id, host, poll_interval=POLL)]

    ev, out, info = await asyncio.wait_for(
        asyncio.gather(events(), lines(), wait(job_id, host, poll_interval=POLL)), 400
    )
    main = info.main
    assert main is not None, info.ssh_result.stderr
    return ev, out, f"{main.state} {main.exit_code}"


async def test_job_hits_its_time_limit_checkpoints_and_finishes_on_restart(
    testbed: Testbed, remote_dir: str  # noqa: F811
) -> None:
    job = SlurmJob(
        name="dispatch-ckpt-limit", command=CHECKPOINTING, partition=cpu_partition(testbed.env),
        time="00:01:00", workdir=remote_dir, output=f"{remote_dir}/out/limit-%j.out",
        signal_before_end=50, max_restarts=2,
    )
    res = await submit(job, testbed.slurm)
    assert res.job_id is not None, res.ssh_result.stderr
    events, out, final = await _run_and_observe(testbed.slurm, res.job_id)
    assert final == "COMPLETED 0:0"
    assert payload_lines(out) == [
        "run 0 task none", "started", "checkpointed", "run 1 task none", "resumed from 41",
        "done",
    ]
    assert "dispatch-bootstrap: got SIGUSR1: restart 1 of 2" in out
    assert max(e.restarts for e in events) == 1
    assert events[-1].new_state == "COMPLETED" and events[-1].exit_code == "0:0"
    assert events[-1].restarts == 1
    states = [e.new_state for e in events]
    # It ran, then was requeued (pending again, one restart more). The restarted run is
    # proven by its output above: watch samples states at each tick, and a run shorter
    # than a tick (this one resumes and ends at once) may show no RUNNING of its own.
    first_run = states.index("RUNNING")
    back = [e for e in events[first_run + 1:] if e.new_state == "PENDING"]
    assert back and back[0].restarts == 1, states


async def test_preempted_job_checkpoints_and_comes_back(
    testbed: Testbed, remote_dir: str  # noqa: F811
) -> None:
    urgent = testbed.env.get("DISPATCH_TESTBED_URGENT_PARTITION", "urgent")
    job = SlurmJob(
        name="dispatch-ckpt-preempt", command=CHECKPOINTING, partition=cpu_partition(testbed.env),
        time="00:10:00", workdir=remote_dir, output=f"{remote_dir}/out/preempt-%j.out",
        signal_before_end=60, max_restarts=2, exclusive=True,  # alone on its node
    )
    res = await submit(job, testbed.slurm)
    assert res.job_id is not None, res.ssh_result.stderr
    observe = asyncio.ensure_future(_run_and_observe(testbed.slurm, res.job_id))
    node, _ = await wait_until_running(res.job_id, testbed.slurm, POLL, timeout=120)
    assert node is not None
    st = await run(["squeue", "-h", "-j", str(res.job_id), "-o", "%N"], testbed.slurm)
    slurm_node = st.stdout.strip()
    # A job in the high-priority partition that needs exactly that node preempts ours.
    pre = await run(
        ["sbatch", "--parsable", f"--partition={urgent}", f"--nodelist={slurm_node}",
         "--exclusive", "--time=1", "--output=/dev/null", "--wrap=sleep 2"],
        testbed.slurm,
    )
    assert pre.ok, pre.stderr
    try:
        events, out, final = await observe
    finally:
        await run(["scancel", pre.stdout.strip().split(";")[0]], testbed.slurm)
    assert final == "COMPLETED 0:0", out
    assert payload_lines(out) == [
        "run 0 task none", "started", "checkpointed", "run 1 task none", "resumed from 41",
        "done",
    ], out
    assert "dispatch-bootstrap: got SIGTERM: restart 1 of 2" in out
    assert max(e.restarts for e in events) >= 1
    assert events[-1].new_state == "COMPLETED"
