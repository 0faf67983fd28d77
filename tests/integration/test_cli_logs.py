"""``dispatch logs HOST JOB [-f] [--stderr]`` as a subprocess against the testbed's SLURM."""

from __future__ import annotations

import asyncio
import json

from dispatch.slurm.job import SlurmJob
from dispatch.slurm.submission import submit

from ..conftest import Testbed
from .test_cli import assert_one_error_line, cli
from .test_slurm_jobs import remote_dir  # noqa: F401  (fixture)

# Ten numbered lines on stdout (one every 0.2 s) and two on stderr.
COMMAND = ('for i in $(seq 1 10); do echo "line-$i"; sleep 0.2; done; '
           "echo oops-1 >&2; echo oops-2 >&2")
LINES = [f"line-{i}" for i in range(1, 11)]


async def _submit(testbed: Testbed, remote_dir: str, name: str, **kw: object) -> int:  # noqa: F811
    job = SlurmJob(name=name, command=COMMAND,
                   partition=testbed.env.get("DISPATCH_TESTBED_CPU_PARTITION", "cpu"),
                   output=f"{remote_dir}/out/{name}-%j.out", **kw)  # type: ignore[arg-type]
    res = await submit(job, testbed.slurm)
    assert res.job_id is not None, res.ssh_result.stderr
    return res.job_id


def _payload(stdout: str) -> list[str]:
    """The command's lines (srun's and the bootstrap's own messages left out)."""
    return [ln for ln in stdout.splitlines() if not ln.startswith(("srun:", "dispatch-bootstrap:"))]


async def test_logs_follow_prints_every_line_until_the_job_ends_then_without_f_the_file(
    testbed: Testbed, remote_dir: str  # noqa: F811
) -> None:
    job_id = await _submit(testbed, remote_dir, "cli-logs", error=f"{remote_dir}/out/cli-logs.err")
    # Started while the job is pending or running: -f returns only once the job has ended.
    proc = await asyncio.to_thread(
        cli, "logs", testbed.slurm, str(job_id), "-f", "--interval", "0.3", timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert _payload(proc.stdout) == LINES
    # The job is over: without -f it prints what the file holds, the same lines.
    again = await asyncio.to_thread(cli, "logs", testbed.slurm, str(job_id))
    assert again.returncode == 0, again.stderr
    assert _payload(again.stdout) == LINES
    err = await asyncio.to_thread(cli, "logs", testbed.slurm, str(job_id), "--stderr")
    assert err.returncode == 0, err.stderr
    assert _payload(err.stdout) == ["oops-1", "oops-2"]
    as_json = await asyncio.to_thread(cli, "--json", "logs", testbed.slurm, str(job_id))
    assert as_json.returncode == 0, as_json.stderr
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["line"] for r in rows if r["line"] in LINES] == LINES
    assert {(r["job"], r["stream"]) for r in rows} == {(str(job_id), "stdout")}


async def test_logs_without_f_does_not_wait_for_a_running_job(
    testbed: Testbed, remote_dir: str  # noqa: F811
) -> None:
    job = SlurmJob(name="cli-logs-long", command="echo first; sleep 300",
                   partition=testbed.env.get("DISPATCH_TESTBED_CPU_PARTITION", "cpu"),
                   output=f"{remote_dir}/out/cli-logs-long-%j.out")
    res = await submit(job, testbed.slurm)
    assert res.job_id is not None, res.ssh_result.stderr
    try:
        proc = None
        for _ in range(60):  # until the job has written its first line
            proc = await asyncio.to_thread(cli, "logs", testbed.slurm, str(res.job_id),
                                           timeout=30)
            if proc.returncode == 0 and "first" in proc.stdout:
                break
            await asyncio.sleep(0.5)
        assert proc is not None and proc.returncode == 0, proc
        assert _payload(proc.stdout) == ["first"]
    finally:
        await asyncio.to_thread(cli, "cancel", testbed.slurm, str(res.job_id))


def test_logs_of_an_unknown_job_is_one_error_line(testbed: Testbed) -> None:
    proc = cli("logs", testbed.slurm, "99999997")
    line = assert_one_error_line(proc)
    assert proc.returncode == 1
    assert "job 99999997 on" in line, line


def test_logs_bad_job_id_is_a_usage_error(testbed: Testbed) -> None:
    proc = cli("logs", testbed.slurm, "12x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "dispatch: error: argument JOB: expected a SLURM job id like 123 or 123_4, got '12x'"
    )
