"""The resubmit path of checkpoint/restart on the testbed: ``restart_by="resubmit"``.

The job has ``--no-requeue``, so Slurm refuses ``scontrol requeue`` and cancels it when it
is preempted (the testbed's ``cpu`` partition has PreemptMode=CANCEL, GraceTime 20 s) or
lets it end at its time limit. The bootstrap then submits the same wrapper again as a new
job with the same exactly-once token: the successor runs with ``DISPATCH_RESTART=1``,
resumes from the checkpoint and completes, appending to the same output file.

The successor is found by its token (squeue/sacct comments) and waited on by its own id.
"""

from __future__ import annotations

import asyncio

import pytest

from dispatch.slurm.job import SlurmJob
from dispatch.slurm.models import JobInfoResult
from dispatch.slurm.poller import wait, wait_until_running
from dispatch.slurm.query import status
from dispatch.slurm.submission import submit
from dispatch.ssh import run

from ..conftest import Testbed
from ..support.checkpoint import CHECKPOINTING, cpu_partition, payload_lines
from ..support.remote import until
from .test_slurm_jobs import remote_dir  # noqa: F401  (fixture)

POLL = 0.5

#: Job states after which sacct's record of a job no longer changes.
_LIVE = ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "SUSPENDED", "CONFIGURING", "")


async def _token(host: str, job_id: int) -> str:
    """The exactly-once token dispatch's submit put in the job's comment."""
    r = await run(["squeue", "-h", "-j", str(job_id), "-o", "%k"], host)
    assert r.ok and r.stdout.strip().startswith("dispatch:"), (r.stdout, r.stderr)
    return r.stdout.strip().removeprefix("dispatch:")


async def _token_jobs(host: str, token: str) -> list[int] | None:
    """Ids of the jobs (an array element: its array's id) whose comment carries the token
    (a successor's: ``dispatch:<token>/<restarts before it>``), from squeue and sacct
    (``AccountingStoreFlags=job_comment``); None when a lookup failed.

    (Not `find_token`: it reads sacct's ``123_4`` as 1234, Python's int() taking the
    underscore for a digit separator.)
    """
    sq = await run(["squeue", "--me", "--states=all", "-h", "-o", "%i|%k"], host)
    sa = await run(["sacct", "-X", "-P", "-n", "--starttime=now-1days",
                    "--format=JobID,Comment"], host)
    if not (sq.ok and sa.ok):
        return None
    ids = set()
    for line in (sq.stdout + "\n" + sa.stdout).splitlines():
        job, _, comment = line.partition("|")
        if comment.strip() == f"dispatch:{token}" or comment.strip().startswith(
            f"dispatch:{token}/"
        ):
            ids.add(int(job.split("_")[0]))
    return sorted(ids)


async def _successor(host: str, token: str, old: int, out_path: str) -> int:
    """The id of the one other job with the same token (waits until it appears)."""
    async def probe() -> list[int] | None:
        ids = await _token_jobs(host, token)
        return ids if ids is not None and len(ids) > 1 else None

    try:
        ids = await until(probe, 180, every=POLL,
                          what=f"a job other than {old} with token {token}")
    except AssertionError as exc:  # what the bootstrap said, and what Slurm knows
        job = await run(["scontrol", "--oneliner", "show", "job", str(old)], host)
        acct = await run(["sacct", "-n", "-P", "-j", str(old),
                          "--format=JobID,State,ExitCode,Comment"], host)
        raise AssertionError(
            f"{exc}\n--- {out_path}:\n{await _output(host, out_path)}"
            f"--- scontrol:\n{job.stdout}{job.stderr}--- sacct:\n{acct.stdout}{acct.stderr}"
        ) from None
    assert old in ids and len(ids) == 2, ids  # submitted again exactly once
    return next(i for i in ids if i != old)


async def _final_state(host: str, job_id: int) -> str:
    """The job's state in sacct once it has ended (``-X``: the allocation, not steps)."""
    async def probe() -> str | None:
        r = await run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "--format=State"], host)
        state = r.stdout.strip().split("\n")[0].split(" ")[0] if r.ok else ""
        return None if state in _LIVE else state

    return await until(probe, 120, every=POLL, what=f"job {job_id} ending")


async def _comment(host: str, job_id: int) -> str:
    r = await run(["squeue", "-h", "--states=all", "-j", str(job_id), "-o", "%k"], host)
    assert r.ok, r.stderr
    return r.stdout.strip()


async def _output(host: str, path: str) -> str:
    r = await run(["cat", path], host)
    return r.stdout if r.ok else ""


async def _job_field(host: str, job_id: int, fmt: str) -> str:
    r = await run(["sacct", "-n", "-X", "-P", "-j", str(job_id), f"--format={fmt}"], host)
    assert r.ok, r.stderr
    return r.stdout.strip().split("\n")[0]


async def _cleanup(host: str, token: str, extra: list[str]) -> None:
    """Cancel whatever this test left (the job, its successor, the preempting job)."""
    ours = [str(i) for i in await _token_jobs(host, token) or []] + extra
    if ours:
        await run(["scancel", *ours], host)


@pytest.mark.timeout(600)
async def test_preempted_job_is_cancelled_and_resubmitted_with_its_token(
    testbed: Testbed, remote_dir: str  # noqa: F811
) -> None:
    host = testbed.slurm
    urgent = testbed.env.get("DISPATCH_TESTBED_URGENT_PARTITION", "urgent")
    job = SlurmJob(
        name="dispatch-resubmit-preempt", command=CHECKPOINTING,
        partition=cpu_partition(testbed.env),
        time="00:10:00", workdir=remote_dir,
        # %j: the successor (a new id) must not re-expand it; %% and the space: quoting,
        # and scontrol's StdOut (which shows %% unexpanded) must not be what is reused.
        output=f"{remote_dir}/out/preempt 100%%-%j.out",
        signal_before_end=60, max_restarts=2, exclusive=True,  # alone on its node
        restart_by="resubmit",
    )
    res = await submit(job, host)
    assert res.job_id is not None, res.ssh_result.stderr
    old = res.job_id
    token = await _token(host, old)
    out_path = f"{remote_dir}/out/preempt 100%-{old}.out"
    preempting: list[str] = []
    followed: asyncio.Task[JobInfoResult] | None = None
    try:
        node, _ = await wait_until_running(old, host, POLL, timeout=240)
        assert node is not None
        # A user's wait on the id submit gave, started before the hand-over: it follows
        # the successor (same token) and returns the work's final result.
        followed = asyncio.create_task(wait(old, host, poll_interval=POLL))
        # --no-requeue: Slurm itself refuses to requeue the job.
        refused = await run(["scontrol", "requeue", str(old)], host)
        assert not refused.ok and "disabled" in refused.stderr, refused
        # The command has set its trap (a signal before that would just kill it).
        await until(lambda: _ready(host, out_path, "started"), 120, every=POLL,
                    what="the command starting")
        st = await run(["squeue", "-h", "-j", str(old), "-o", "%N"], host)
        slurm_node = st.stdout.strip()
        assert slurm_node, st.stderr
        # A job in the high-priority partition that needs exactly that node preempts ours.
        pre = await run(
            ["sbatch", "--parsable", f"--partition={urgent}", f"--nodelist={slurm_node}",
             "--exclusive", "--time=1", "--output=/dev/null", "--wrap=sleep 2"],
            host,
        )
        assert pre.ok, pre.stderr
        preempting.append(pre.stdout.strip().split(";")[0])

        new = await _successor(host, token, old, out_path)
        # Its comment carries the restart before it, so its own status counts it.
        st_new = await status(new, host)
        assert st_new.job is not None and st_new.job.restarts == 1, st_new
        assert await _comment(host, new) == f"dispatch:{token}/1"
        assert await _final_state(host, old) in ("PREEMPTED", "CANCELLED")
        info = await asyncio.wait_for(wait(new, host, poll_interval=POLL), 400)
        assert info.main is not None, info.ssh_result.stderr
        assert (info.main.state, info.main.exit_code) == ("COMPLETED", "0:0")
        via_old = await asyncio.wait_for(followed, 120)
        assert via_old.main is not None, via_old.ssh_result.stderr
        assert (via_old.main.job_id, via_old.main.state) == (str(new), "COMPLETED")
        out = await _output(host, out_path)
        assert payload_lines(out.splitlines()) == [
            "run 0 task none", "started", "checkpointed",
            "run 1 task none", "resumed from 41", "done",
        ], out
        assert "dispatch-bootstrap: got SIGTERM: restart 1 of 2" in out
        assert f"dispatch-bootstrap: resubmitted job {old} as job {new} (dispatch:{token}/1)" \
            in out, out
        # The same name, and the successor may not be requeued by Slurm either.
        assert await _job_field(host, new, "JobName") == job.name
        assert await _job_field(host, old, "JobName") == job.name
        # No second output file under the successor's id: it appended to the first.
        listing = await run(["ls", f"{remote_dir}/out"], host)
        assert listing.stdout.splitlines() == [f"preempt 100%-{old}.out"], listing
    finally:
        if followed is not None:
            followed.cancel()
        await _cleanup(host, token, preempting)


async def _ready(host: str, path: str, line: str) -> bool | None:
    return True if line in (await _output(host, path)).splitlines() else None


@pytest.mark.timeout(600)
async def test_array_element_at_its_time_limit_resubmits_only_itself(
    testbed: Testbed, remote_dir: str  # noqa: F811
) -> None:
    """The pre-limit signal resubmits too; an element comes back as ``--array=<task>``,
    with the element's checkpoint dir and output file (``%A_%a``, the default). The
    wrapper submit wrote is gone before then (as on a node that does not see it:
    ``sbcast=True`` without a shared dir): the resubmission gets it from slurmctld."""
    host = testbed.slurm
    job = SlurmJob(
        name="dispatch-resubmit-limit", command=CHECKPOINTING,
        partition=cpu_partition(testbed.env),
        time="00:01:00", workdir=remote_dir, array="3",
        signal_before_end=50, max_restarts=1, restart_by="resubmit",
    )
    res = await submit(job, host)
    assert res.job_id is not None, res.ssh_result.stderr
    old = res.job_id
    token = await _token(host, old)
    out_path = f"{remote_dir}/slurm-{old}_3.out"
    try:
        listed = await run(["squeue", "-h", "-j", str(old), "-o", "%o"], host)
        wrapper = listed.stdout.strip().splitlines()[0]
        assert listed.ok and wrapper.endswith(".sh"), listed
        gone = await run(["rm", "--", wrapper], host)
        assert gone.ok, gone.stderr
        new = await _successor(host, token, old, out_path)
        st_new = await status(f"{new}_3", host)
        assert st_new.job is not None and st_new.job.restarts == 1, st_new
        # The first run checkpointed, resubmitted and cancelled itself before its limit:
        # not COMPLETED (an afterok dependent must not start), not requeued.
        assert await _final_state(host, old) == "CANCELLED"
        info = await asyncio.wait_for(wait(new, host, poll_interval=POLL), 400)
        assert info.main is not None, info.ssh_result.stderr
        assert (info.main.state, info.main.exit_code) == ("COMPLETED", "0:0")
        assert await _job_field(host, new, "JobID") == f"{new}_3"  # the element alone
        out = await _output(host, out_path)
        assert payload_lines(out.splitlines()) == [
            "run 0 task 3", "started", "checkpointed",
            "run 1 task 3", "resumed from 41", "done",
        ], out
        assert "dispatch-bootstrap: got SIGUSR1: restart 1 of 1" in out
        assert f"resubmitted job {old} as job {new} (dispatch:{token}/1)" in out, out
        # the private copy of the script slurmctld gave was removed once sbatch read it
        left = await run("ls -d /tmp/dispatch-resubmit.* 2>/dev/null || true", host)
        assert left.stdout == "", left.stdout
        # The checkpoint dir is the first run's (named after its array job and task).
        ckpt = await run(["cat", f"{remote_dir}/.dispatch-checkpoint/{old}_3/state"], host)
        assert ckpt.stdout.strip() == "41", ckpt
    finally:
        await _cleanup(host, token, [])
