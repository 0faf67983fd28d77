"""Each example in examples/ runs against the testbed as a user would run it, and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ..conftest import ROOT, Testbed

EXAMPLES = ROOT / "examples"


def bad_host(testbed: Testbed) -> str:
    """A host that refuses connections (the testbed's ssh config maps every name to loopback)."""
    return f"{testbed.plain}:1"


def run_example(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True, text=True, timeout=timeout, env=os.environ.copy(), cwd=ROOT,
    )  # fmt: skip


def test_fleet_gpu_survey_over_the_fleet(testbed: Testbed) -> None:
    proc = run_example("fleet_gpu_survey.py", timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(testbed.fleet) + 1
    assert [line.split()[0] for line in lines[:-1]] == testbed.fleet
    # Every fleet host answered (with or without GPUs); none was unreachable.
    assert lines[-1].startswith(f"{len(testbed.fleet)} hosts: ")
    assert lines[-1].endswith(" 0 unreachable")
    assert all(" unreachable " not in line for line in lines[:-1])


def test_fleet_gpu_survey_reports_unreachable_hosts_and_json(testbed: Testbed) -> None:
    proc = run_example(
        "fleet_gpu_survey.py", "--json", testbed.plain, bad_host(testbed), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    reports = {r["host"]: r for r in json.loads(proc.stdout)}
    assert reports[bad_host(testbed)]["status"] == "unreachable"
    assert reports[testbed.plain]["status"] in ("gpus", "no GPU")
    assert "1 unreachable" in proc.stderr


def test_job_pipeline_runs_stages_in_dependency_order(testbed: Testbed) -> None:
    proc = run_example("job_pipeline.py", "--poll", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("submitted pipeline-") == 4
    finished = [line.split()[0] for line in out.splitlines() if " finished: " in line]
    assert sorted(finished) == ["evaluate", "lint", "prepare", "train"]
    # afterok: each stage read what its parent wrote (a stage run early would fail).
    assert "evaluate output: model says 5050" in out
    assert "lint output: 100 lines" in out
    assert out.rstrip().endswith("pipeline succeeded")


def test_async_orchestration_submits_and_waits_for_20_jobs(testbed: Testbed) -> None:
    proc = run_example("async_orchestration.py", "--poll", "1", "--sleep", "0.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted 20 jobs" in proc.stdout
    assert "20 jobs finished in" in proc.stdout and ": 20 COMPLETED" in proc.stdout


def test_quickstart_solves_ships_submits_and_waits(testbed: Testbed) -> None:
    """The README's demo: SSH command, solve 1x h100, packed job on the solved partition."""
    proc = run_example("quickstart.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"[{testbed.plain}] exit 0: hello from" in out
    assert "[solve] 1x h100 -> host slurm (ssh slurm), partition gpu, gres type h100" in out
    assert "state=COMPLETED exit=0:0" in out and "partition=gpu" in out
    # the job ran inside the shipped project, on a GPU node, with one GPU
    assert "job output | node=node" in out and "gpus=0" in out
    assert "job output | _blocking.py" in out
