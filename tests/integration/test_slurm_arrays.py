"""Job arrays on the testbed cluster: element ids in queue/status, cancelling one element,
waiting for every element, and submit_packed shipping the code once for all of them."""

from __future__ import annotations

import importlib
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dispatch.results import RunResult
from dispatch.slurm.job import SlurmJob
from dispatch.slurm.poller import wait, wait_until_running
from dispatch.slurm.query import cancel, job_info, queue, status
from dispatch.slurm.submission import submit, submit_packed
from dispatch.ssh.commands import run

from ..conftest import Testbed
from .test_slurm_jobs import git_repo, remote_dir  # noqa: F401  (fixtures)

POLL = 0.5
submit_mod = importlib.import_module("dispatch.slurm.submission")
payload_mod = importlib.import_module("dispatch.slurm.payload")


def _cpu(testbed: Testbed) -> str:
    return testbed.env.get("DISPATCH_TESTBED_CPU_PARTITION", "cpu")


async def _outputs(host: str, pattern: str) -> dict[str, str]:
    """File name -> content of the files matching a remote glob."""
    out = await run(f"for f in {pattern}; do printf '%s\\t' \"$f\"; tr '\\n' ' ' < \"$f\"; "
                    "echo; done", host)
    assert out.ok, out.stderr
    files = {}
    for line in out.stdout.splitlines():
        name, _, content = line.partition("\t")
        files[Path(name).name] = content
    return files


async def test_array_of_20_element_ids_cancel_one_and_wait_for_all(
    testbed: Testbed, remote_dir: str  # noqa: F811
) -> None:
    host = testbed.slurm
    name = f"sweep-{uuid.uuid4().hex[:6]}"
    job = SlurmJob(
        name=name, partition=_cpu(testbed), array="0-19%8", time="5",
        command='echo "task=$SLURM_ARRAY_TASK_ID"; sleep 6; [ "$SLURM_ARRAY_TASK_ID" != 7 ]',
        output=f"{remote_dir}/out/{name}-%A_%a.out",
    )
    result = await submit(job, host)
    assert result.job_id is not None, result.ssh_result
    job_id = result.job_id
    try:
        node, st = await wait_until_running(f"{job_id}_4", host, poll_interval=POLL,
                                            timeout=120)
        assert node is not None and st.job is not None, st
        assert (st.job.raw_id, st.job.array_task, st.job.job_id) == (f"{job_id}_4", "4", job_id)

        listed = await queue(host, user=testbed.user)
        assert listed.ssh_result.ok, listed.ssh_result
        mine = [j for j in listed.jobs if j.job_id == job_id]
        raw = [j.raw_id for j in mine]
        assert len(raw) == len(set(raw)) >= 2, raw  # each element its own row
        assert f"{job_id}_4" in raw
        assert all(j.array_job_id == job_id for j in mine)
        assert 1 <= sum(j.state == "RUNNING" for j in mine) <= 8  # the %8 throttle
        rest = [j for j in mine if j.array_task and not j.array_task.isdigit()]
        assert rest and rest[0].state == "PENDING", mine  # e.g. 123_[8-19%8]
        assert rest[0].array_task is not None and rest[0].array_task.endswith("-19%8")

        cancelled = await cancel(f"{job_id}_4", host)
        assert cancelled.ok, cancelled
        four = await wait(f"{job_id}_4", host, poll_interval=POLL, timeout=60)
        assert [e.job_id for e in four.elements] == [f"{job_id}_4"], four
        assert four.main is not None and four.main.state == "CANCELLED"
        others = await status(job_id, host)  # the array itself goes on
        assert others.job is not None and not others.job.is_finished, others

        info = await wait(job_id, host, poll_interval=POLL, timeout=300)
        assert info.ssh_result.ok, info.ssh_result
        elements = info.elements
        assert [e.job_id for e in elements] == [f"{job_id}_{i}" for i in range(20)], elements
        states = {int(e.array_task or -1): (e.state, e.exit_code) for e in elements}
        assert states[4][0] == "CANCELLED"
        assert states[7] == ("FAILED", "1:0")
        assert all(states[i] == ("COMPLETED", "0:0") for i in range(20) if i not in (4, 7))
        assert info.main is not None and info.main.job_id == f"{job_id}_4"  # first not ok

        seven = await job_info(f"{job_id}_7", host)
        assert seven.main is not None and (seven.main.state, seven.main.exit_code) == (
            "FAILED", "1:0")
        assert {s.array_task for s in seven.steps} == {"7"}

        files = await _outputs(host, f"{remote_dir}/out/{name}-{job_id}_*.out")
        tasks = {int(m.group(1)): content for f, content in files.items()
                 if (m := re.search(r"_(\d+)\.out$", f))}
        for i in set(range(20)) - {4}:  # each element wrote its own file
            assert f"task={i} " in tasks.get(i, ""), (i, files)
    finally:
        await cancel(job_id, host)


async def test_submit_packed_array_ships_the_code_once(
    testbed: Testbed, remote_dir: str, git_repo: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = testbed.slurm
    uploads: list[str] = []
    real_write: Callable[..., Awaitable[RunResult]] = payload_mod.write_file

    async def counting(host: str, path: str, data: bytes, **kw: Any) -> RunResult:
        uploads.append(path)
        return await real_write(host, path, data, **kw)

    monkeypatch.setattr(payload_mod, "write_file", counting)
    monkeypatch.setattr(submit_mod, "write_file", counting)
    name = f"packed-arr-{uuid.uuid4().hex[:6]}"
    job = SlurmJob(
        name=name, partition=_cpu(testbed), array="0-3", time="5",
        command='echo "el=$SLURM_ARRAY_TASK_ID"; cat pkg/main.py',
        output=f"{remote_dir}/out/{name}-%A_%a.out",
    )
    result = await submit_packed(job, host, repo_path=str(git_repo),
                                 share_dir=f"{remote_dir}/share")
    assert result.job_id is not None, result.ssh_result
    try:
        payloads = [p for p in uploads if "/payloads/" in p]
        assert len(payloads) == 1, uploads  # one upload for all four elements
        info = await wait(result.job_id, host, poll_interval=POLL, timeout=180)
        assert [(e.job_id, e.state) for e in info.elements] == [
            (f"{result.job_id}_{i}", "COMPLETED") for i in range(4)], info
        files = await _outputs(host, f"{remote_dir}/out/{name}-{result.job_id}_*.out")
        assert len(files) == 4, files
        for i in range(4):
            content = files[f"{name}-{result.job_id}_{i}.out"]
            assert f"el={i} " in content and "print('packed')" in content, content
    finally:
        await cancel(result.job_id, host)
