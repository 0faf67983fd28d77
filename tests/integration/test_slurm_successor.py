"""`wait` and `watch` follow a job resubmitted with the same dispatch token (issue 17).

Where a site will not requeue, dispatch's bootstrap submits the job's script again with the
same token, ``--comment=dispatch:<token>/<restarts before it>``, while the old job ends.
Self-contained here: the test submits job A with ``sbatch --comment=dispatch:<random
token>``, starts `wait(A)` and `watch([A])`, submits B as the bootstrap would (the token,
``/1``), cancels A, and both follow B, counting its restart. With a different token on B
(or a comment that is no dispatch token), they end with A.
"""

from __future__ import annotations

import asyncio
import uuid

from dispatch import aio
from dispatch.slurm import JobEvent, hub, watch
from dispatch.slurm.models import JobInfoResult
from dispatch.slurm.poller import wait

from ..conftest import Testbed

POLL = 0.3


async def _sbatch(testbed: Testbed, comment: str, command: str) -> int:
    cpu = testbed.env.get("DISPATCH_TESTBED_CPU_PARTITION", "cpu")
    argv = ["sbatch", "--parsable", f"--partition={cpu}", "--output=/dev/null",
            "--job-name=dispatch-successor", f"--comment={comment}", f"--wrap={command}"]
    res = await aio.run(argv, testbed.slurm)
    assert res.ok, res.stderr
    return int(res.stdout.strip().split(";")[0])


async def _until_seen(got: list[JobEvent], job_id: int) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while not any(e.job_id == job_id for e in got):
        assert asyncio.get_running_loop().time() < deadline, got
        await asyncio.sleep(0.05)


async def _scenario(
    testbed: Testbed, comment_a: str, comment_b: str
) -> tuple[int, int, JobInfoResult, list[JobEvent]]:
    """A (sleep 300) watched and waited on; B submitted; A cancelled. Returns A, B, the
    wait's result and the watch's events."""
    a = await _sbatch(testbed, comment_a, "sleep 300")
    got: list[JobEvent] = []

    async def collect() -> None:
        async for e in watch(testbed.slurm, [a], poll_interval=POLL):
            got.append(e)

    watcher = asyncio.ensure_future(collect())
    waiter = asyncio.ensure_future(wait(a, testbed.slurm, poll_interval=POLL, timeout=150))
    b = 0
    try:
        await _until_seen(got, a)
        b = await _sbatch(testbed, comment_b, "sleep 2")
        cancelled = await aio.run(["scancel", str(a)], testbed.slurm)
        assert cancelled.ok, cancelled.stderr
        info = await asyncio.wait_for(waiter, 160)
        await asyncio.wait_for(watcher, 60)
    finally:
        watcher.cancel()
        waiter.cancel()
        await aio.run(["scancel", str(a)] + ([str(b)] if b else []), testbed.slurm)
    return a, b, info, got


async def test_wait_and_watch_follow_a_job_resubmitted_with_its_token(testbed: Testbed) -> None:
    token = f"dispatch:test-{uuid.uuid4().hex}"
    stats = hub.poller_stats(testbed.slurm)
    lookups = stats.successor_calls
    a, b, info, events = await _scenario(testbed, token, token + "/1")
    assert b > a
    # wait returns the successor's final result
    assert info.ssh_result.returncode == 0, info.ssh_result
    assert info.main is not None and info.main.job_id == str(b), info.steps
    assert info.main.state == "COMPLETED" and info.main.exit_code == "0:0"
    # the events: A's end, then B's run with one restart, B's end last
    a_events = [e for e in events if e.job_id == a]
    b_events = [e for e in events if e.job_id == b]
    assert a_events[-1].new_state == "CANCELLED" and a_events[-1].restarts == 0, events
    assert all(e.restarts == 0 and e.resubmitted_from is None for e in a_events)
    assert b_events, events
    assert events.index(a_events[-1]) < events.index(b_events[0])
    assert all(e.restarts == 1 and e.resubmitted_from == a for e in b_events), b_events
    assert b_events[0].old_state is None
    assert events[-1] is b_events[-1]
    assert b_events[-1].new_state == "COMPLETED" and b_events[-1].exit_code == "0:0"
    # the wait and the watch both looked for A's successor: one lookup in that tick
    assert stats.successor_calls - lookups >= 1


async def test_a_later_job_with_another_comment_is_not_followed(testbed: Testbed) -> None:
    a, b, info, events = await _scenario(
        testbed, f"dispatch:test-{uuid.uuid4().hex}", f"dispatch:test-{uuid.uuid4().hex}"
    )
    assert info.main is not None and info.main.job_id == str(a), info.steps
    assert info.main.state == "CANCELLED"
    assert {e.job_id for e in events} == {a} and b > a, events
    assert events[-1].new_state == "CANCELLED"


async def test_a_comment_that_is_no_dispatch_token_is_never_followed(testbed: Testbed) -> None:
    comment = f"user-note-{uuid.uuid4().hex}"
    a, b, info, events = await _scenario(testbed, comment, comment)
    assert info.main is not None and info.main.job_id == str(a), info.steps
    assert info.main.state == "CANCELLED"
    assert {e.job_id for e in events} == {a} and b > a, events


# --- array elements: OLD_2 resubmitted alone as NEW_2 (a one-element array) ---------------


async def _sbatch_array(testbed: Testbed, spec: str, comment: str, command: str) -> int:
    cpu = testbed.env.get("DISPATCH_TESTBED_CPU_PARTITION", "cpu")
    argv = ["sbatch", "--parsable", f"--partition={cpu}", "--output=/dev/null",
            f"--array={spec}", "--job-name=dispatch-successor-el", f"--comment={comment}",
            f"--wrap={command}"]
    res = await aio.run(argv, testbed.slurm)
    assert res.ok, res.stderr
    return int(res.stdout.strip().split(";")[0])


async def _until_running(testbed: Testbed, element: str) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        res = await aio.run(["squeue", "--noheader", "--format=%T", f"--jobs={element}"],
                            testbed.slurm)
        if res.ok and res.stdout.strip() == "RUNNING":
            return
        assert asyncio.get_running_loop().time() < deadline, (element, res)
        await asyncio.sleep(0.2)


async def _element_scenario(
    testbed: Testbed, token: str, new_token: str
) -> tuple[int, int, int, JobInfoResult, list[JobEvent]]:
    """OLD (--array=0-3, sleep 300): `wait` and `watch` on OLD_2; a decoy --array=1 and
    NEW --array=2 (sleep 2, comment ``new_token``) submitted; OLD_2 cancelled."""
    old = await _sbatch_array(testbed, "0-3", token, "sleep 300")
    element = f"{old}_2"
    got: list[JobEvent] = []

    async def collect() -> None:
        async for e in watch(testbed.slurm, [element], poll_interval=POLL):
            got.append(e)

    watcher = asyncio.ensure_future(collect())
    waiter = asyncio.ensure_future(wait(element, testbed.slurm, poll_interval=POLL,
                                        timeout=150))
    decoy = new = 0
    try:
        await _until_running(testbed, element)
        decoy = await _sbatch_array(testbed, "1", token, "sleep 300")  # the earlier later job
        new = await _sbatch_array(testbed, "2", new_token, "sleep 2")
        cancelled = await aio.run(["scancel", element], testbed.slurm)
        assert cancelled.ok, cancelled.stderr
        info = await asyncio.wait_for(waiter, 160)
        await asyncio.wait_for(watcher, 60)
    finally:
        watcher.cancel()
        waiter.cancel()
        await aio.run(["scancel", str(old), *(str(j) for j in (decoy, new) if j)],
                      testbed.slurm)
    return old, decoy, new, info, got


async def test_wait_and_watch_follow_a_resubmitted_array_element(testbed: Testbed) -> None:
    token = f"dispatch:test-{uuid.uuid4().hex}"
    old, decoy, new, info, events = await _element_scenario(testbed, token, token + "/1")
    assert old < decoy < new
    assert info.ssh_result.returncode == 0, info.ssh_result
    assert info.main is not None and info.main.job_id == f"{new}_2", info.steps  # not the decoy
    assert info.main.state == "COMPLETED" and info.main.exit_code == "0:0"
    assert [r.job_id for r in info.elements] == [f"{new}_2"]
    old_events = [e for e in events if e.job_id == old]
    new_events = [e for e in events if e.job_id == new]
    # (the first event may be the pending remainder holding element 2, 123_[0-3])
    assert old_events[-1].raw_id == f"{old}_2", events
    assert old_events[-1].new_state == "CANCELLED" and old_events[-1].restarts == 0
    assert new_events and all(e.raw_id == f"{new}_2" and e.array_task == "2"
                              and e.restarts == 1 and e.resubmitted_from == old
                              for e in new_events), new_events
    assert not any(e.job_id == decoy for e in events), events
    assert events[-1] is new_events[-1] and new_events[-1].new_state == "COMPLETED"


async def test_an_element_with_another_token_later_is_not_followed(testbed: Testbed) -> None:
    token = f"dispatch:test-{uuid.uuid4().hex}"
    old, _, new, info, events = await _element_scenario(
        testbed, token, f"dispatch:test-{uuid.uuid4().hex}"
    )
    assert info.main is not None and info.main.job_id == f"{old}_2", info.steps
    assert info.main.state == "CANCELLED"
    assert {e.job_id for e in events} == {old} and new > old, events
    assert events[-1].raw_id == f"{old}_2"
    assert events[-1].new_state == "CANCELLED"


async def test_wait_on_a_whole_array_follows_each_resubmitted_element(
    testbed: Testbed,
) -> None:
    token = f"dispatch:test-{uuid.uuid4().hex}"
    # element 0 completes at once, element 1 runs until cancelled, then goes on as NEW_1
    old = await _sbatch_array(testbed, "0-1", token, "sleep $((SLURM_ARRAY_TASK_ID * 300))")
    waiter = asyncio.ensure_future(wait(old, testbed.slurm, poll_interval=POLL, timeout=150))
    new = 0
    try:
        await _until_running(testbed, f"{old}_1")
        new = await _sbatch_array(testbed, "1", token + "/1", "sleep 2")
        cancelled = await aio.run(["scancel", f"{old}_1"], testbed.slurm)
        assert cancelled.ok, cancelled.stderr
        info = await asyncio.wait_for(waiter, 160)
    finally:
        waiter.cancel()
        await aio.run(["scancel", str(old), *([str(new)] if new else [])], testbed.slurm)
    assert info.ssh_result.returncode == 0, info.ssh_result
    got = [(r.job_id, r.state, r.exit_code) for r in info.elements]
    assert got == [(f"{old}_0", "COMPLETED", "0:0"), (f"{new}_1", "COMPLETED", "0:0")], got
    assert info.main is not None and info.main.state == "COMPLETED"
