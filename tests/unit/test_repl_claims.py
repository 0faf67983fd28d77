"""GPU claims of a plain-host Jupyter session (issue 18): which GPUs a plan claims, the
claiming bootstrap (run here with bash against a temporary HOME, locks held by this test
process standing in for a concurrent session), and reading a failed claim from the log."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dispatch.errors import InvalidValueError
from dispatch.jupyter import api as repl
from dispatch.jupyter import parse as rp
from dispatch.jupyter import plan, scripts
from dispatch.placement import (
    CLAIM_FAILED_EXIT,
    ClusterConfig,
    DispatchConfig,
    GpuRef,
    JobSpec,
    PartitionConfig,
    PlainHostConfig,
    SlurmHostConfig,
    parse_claimed,
)
from dispatch.slurm import SlurmJob

G0 = "GPU-0a1b2c3d-0000-4000-8000-000000000000"
G1 = "GPU-0a1b2c3d-0000-4000-8000-000000000001"
FREE = (GpuRef(0, G0), GpuRef(1, G1))
PLAIN = PlainHostConfig("box", "t", chips={"h200": 2})
SLURM = SlurmHostConfig("login", "t", partitions=[PartitionConfig("gpu")])


@pytest.mark.parametrize(("host", "gpus", "free", "want"), [
    (PLAIN, 1, FREE, (G0, G1)),       # every free GPU is a candidate, in the solver's order
    (PLAIN, 2, FREE, (G0, G1)),
    (PLAIN, 0, FREE, ()),             # CPU-only: nothing claimed
    (PLAIN, 1, (), ()),               # availability not checked: nothing known, not pinned
    (SLURM, 1, FREE, ()),             # SLURM pins the allocation itself
])
def test_claim_candidates(host: PlainHostConfig | SlurmHostConfig, gpus: int,
                          free: tuple[GpuRef, ...], want: tuple[str, ...]) -> None:
    assert plan.claim_candidates(host, gpus, free) == want


def test_make_plan_carries_the_candidates() -> None:
    cfg = DispatchConfig(clusters={"t": ClusterConfig("/r", "/w", log="/l")},
                         hosts={"box": PLAIN})
    p = plan.make_plan(JobSpec("nb"), cfg, "box", PLAIN, None, 1, None, None, None,
                       free_gpus=FREE)
    assert p.claim_from == (G0, G1) and p.gpus == 1
    unpinned = plan.make_plan(JobSpec("nb"), cfg, "box", PLAIN, None, 1, None, None, None)
    assert unpinned.claim_from == ()


def _bootstrap(tmp: Path, count: int) -> Path:
    job = SlurmJob(name="nb", command="printenv CUDA_VISIBLE_DEVICES", workdir=str(tmp / "w"),
                   is_slurm=False)
    text = scripts.claiming_bootstrap(job.to_bootstrap_script(), [G0, G1], count)
    path = tmp / "nb.bootstrap.sh"
    path.write_text(text)
    return path


def _run(path: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    return subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


@contextmanager
def _held(home: Path, uuid: str) -> Iterator[None]:
    """Hold ``uuid``'s claim lock as another session would (an exclusive flock)."""
    lock = home / ".dispatch" / "gpu-claims" / f"{uuid}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


def test_claim_runs_first_and_pins_the_command(tmp_path: Path) -> None:
    path = _bootstrap(tmp_path, 1)
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/bin/bash"
    claim_at = next(i for i, line in enumerate(lines) if "flock -n" in line)
    assert claim_at < lines.index("set -euo pipefail")  # before anything else runs
    res = _run(path, tmp_path)
    assert res.returncode == 0, res.stderr
    assert parse_claimed(res.stdout) == [G0]
    assert res.stdout.splitlines()[-1] == G0  # what the command saw


def test_claim_skips_a_gpu_another_session_holds(tmp_path: Path) -> None:
    path = _bootstrap(tmp_path, 1)
    with _held(tmp_path, G0):
        res = _run(path, tmp_path)
    assert res.returncode == 0, res.stderr
    assert parse_claimed(res.stdout) == [G1]
    assert res.stdout.splitlines()[-1] == G1


def test_claim_failure_exits_75_and_says_why(tmp_path: Path) -> None:
    path = _bootstrap(tmp_path, 2)
    with _held(tmp_path, G1):
        res = _run(path, tmp_path)
    assert res.returncode == CLAIM_FAILED_EXIT
    assert res.stdout == ""  # the command never ran
    log = res.stdout + res.stderr
    assert parse_claimed(log) is None
    assert rp.claim_failure(log) == (
        "cannot claim 2 GPU(s): only 1 of 2 free GPU(s) unclaimed "
        "(another dispatch session holds the rest)")


def test_result_gpus_default_and_json_round_trip() -> None:
    r = repl.ReplResult(True, False, "box", "ssh", "/l.log")
    assert r.gpus == ()
    again = repl.ReplResult(**json.loads(json.dumps(dataclasses.asdict(
        dataclasses.replace(r, gpus=(G1, G0))))))
    assert again.gpus == (G1, G0) and again == dataclasses.replace(r, gpus=(G1, G0))
    hash(again)


def test_claim_failure_is_none_without_a_claim_message() -> None:
    assert rp.claim_failure("") is None
    assert rp.claim_failure("dispatch-gpu-claimed: GPU-x\n[I ServerApp] running\n") is None


def test_claiming_bootstrap_rejects_bad_counts() -> None:
    with pytest.raises(InvalidValueError, match="count must be an int from 1 to 2"):
        scripts.claiming_bootstrap("#!/bin/bash\n:\n", [G0, G1], 3)
    with pytest.raises(InvalidValueError, match="not a GPU uuid"):
        scripts.claiming_bootstrap("#!/bin/bash\n:\n", ["GPU-0; rm -rf ~"], 1)
