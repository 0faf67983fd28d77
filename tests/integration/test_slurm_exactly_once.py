"""Exactly-once submission: the SSH connection is cut while sbatch runs.

A test-only ``sbatch`` shim on the SLURM host kills the sshd session process that serves
its connection (``kill -9`` on the first ``sshd`` ancestor): after the real sbatch
accepted the job (the answer never arrives), instead of calling it (no job exists), or
before calling it a few seconds later (the job appears only after the first lookups: the
still-running sbatch must be noticed, not duplicated). The shim
cuts the connection only on its first call (a marker file), so a resubmission runs
normally. Afterwards exactly one job with the test's unique name must exist, and submit
must have returned its id.
"""

from __future__ import annotations

import importlib
import logging
import uuid
from collections.abc import AsyncIterator

import pytest

from dispatch.slurm import query
from dispatch.slurm.job import SlurmJob
from dispatch.ssh.commands import run

from ..conftest import Testbed

submit_mod = importlib.import_module("dispatch.slurm.submission")

SHIM = r"""#!/bin/bash
# test shim: cut this SSH connection around the real sbatch, once
real={real}
marker={marker}
cut() {{
    pid=$$
    while [ "${{pid:-1}}" -gt 1 ]; do
        if [ "$(ps -o comm= -p "$pid")" = sshd ]; then kill -9 "$pid"; break; fi
        pid=$(ps -o ppid= -p "$pid" | tr -d ' ')
    done
    sleep 2
}}
if [ -e "$marker" ]; then exec "$real" "$@"; fi
touch "$marker"
if [ {when} = before ]; then cut; exit 1; fi
if [ {when} = late ]; then cut; sleep 3; exec "$real" "$@"; fi
out=$("$real" "$@"); rc=$?
cut
printf '%s\n' "$out"
exit $rc
"""


@pytest.fixture
async def shim_dir(testbed: Testbed) -> AsyncIterator[str]:
    home = await submit_mod.remote_home(testbed.slurm)
    path = f"{home}/.dispatch-tests/shim-{uuid.uuid4().hex[:8]}"
    assert (await run(["mkdir", "-p", path], testbed.slurm)).ok
    yield path
    await run(["rm", "-rf", path], testbed.slurm)


async def _install_shim(host: str, directory: str, when: str) -> str:
    real = (await run("command -v sbatch", host)).stdout.strip()
    assert real.startswith("/"), real
    body = SHIM.format(real=real, marker=f"{directory}/cut-done", when=when)
    path = f"{directory}/sbatch-{when}"
    assert (await submit_mod.write_file(host, path, body.encode(), mode=0o700)).ok
    return path


async def _jobs_named(host: str, name: str) -> list[tuple[int, str]]:
    out = await run(["squeue", "--me", "--noheader", "--states=all", "--format=%A|%k|%j"], host)
    assert out.ok, out.stderr
    jobs = []
    for line in out.stdout.splitlines():
        job_id, comment, job_name = line.split("|", 2)
        if job_name == name:
            jobs.append((int(job_id), comment))
    return jobs


@pytest.mark.parametrize("when", ["after", "before", "late"])
async def test_cut_connection_submits_exactly_once(
    testbed: Testbed, shim_dir: str, when: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shim = await _install_shim(testbed.slurm, shim_dir, when)
    monkeypatch.setattr(submit_mod, "SBATCH", shim)
    monkeypatch.setattr(submit_mod, "RECOVER_CONFIRM_SECONDS", 1.0)
    name = f"once-{when}-{uuid.uuid4().hex[:6]}"
    job = SlurmJob(name=name, command="sleep 30", output="/dev/null",
                   partition=testbed.env.get("DISPATCH_TESTBED_CPU_PARTITION", "cpu"))
    with caplog.at_level(logging.WARNING, logger="dispatch.slurm.submission"):
        result = await submit_mod.submit(job, testbed.slurm)
    resubmitted = "submitting again" in caplog.text
    try:
        assert "outcome unknown" in caplog.text
        # recovered by token after the cut; resubmitted only when no job existed
        assert resubmitted == (when == "before")
        # the first sbatch call really lost its connection
        assert (await run(["test", "-e", f"{shim_dir}/cut-done"], testbed.slurm)).ok
        assert result.ssh_result.may_have_run or when == "before"
        jobs = await _jobs_named(testbed.slurm, name)
        assert len(jobs) == 1, jobs
        job_id, comment = jobs[0]
        assert result.job_id == job_id
        assert comment.startswith("dispatch:")
    finally:
        for job_id, _ in await _jobs_named(testbed.slurm, name):
            await query.cancel(job_id, testbed.slurm)


async def _held_job(testbed: Testbed, comment: str) -> int:
    out = await run(
        ["sbatch", "--parsable", f"--comment={comment}", "--output=/dev/null",
         "--hold", "--wrap", "true"],
        testbed.slurm,
    )
    assert out.ok, out.stderr
    return int(out.stdout.strip().split(";")[0])


async def test_find_token_sees_the_comment(testbed: Testbed) -> None:
    token = uuid.uuid4().hex[:16]
    job_id = await _held_job(testbed, f"dispatch:{token}")
    # a successor resubmitted in its place carries the token too, with its restart count
    succ_id = await _held_job(testbed, f"dispatch:{token}/1")
    try:
        ids, answered = await submit_mod.find_token(token, testbed.slurm)
        assert answered and ids == [job_id]  # what submit created, not its successor
        ids, answered = await submit_mod.find_token("0" * 16, testbed.slurm)
        assert answered and ids == []
    finally:
        await query.cancel(job_id, testbed.slurm)
        await query.cancel(succ_id, testbed.slurm)
