"""estimate_start's pure parts on text captured from the testbed (capture_estimate.sh),
the pending-reason table, and the split of a joint ("ask once") command's output."""

from __future__ import annotations

import pathlib
from datetime import UTC, datetime, timedelta

import pytest

from dispatch.results import RunResult
from dispatch.slurm import estimate, parse
from dispatch.slurm.reasons import REASONS, explain_reason
from dispatch.slurm.together import split_together, together_command

FIX = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "slurm"


def real(name: str) -> str:
    return (FIX / name).read_text(encoding="utf-8")


IDS = dict(kv.split("=") for kv in real("estimate_ids.txt").split())


def test_capture_script_uses_the_constants() -> None:
    script = real("capture_estimate.sh")
    assert "'" + parse.SINFO_GPU_USABLE_ARGS[-1] + "'" in script
    assert "'" + estimate.SQUEUE_START_ARGS[-1] + "'" in script
    assert estimate.SQUEUE_START_ARGS[:2] == ["env", "TZ=UTC"]
    assert " ".join(estimate.TEST_ONLY_ARGS) in script
    assert "date -u +%Y-%m-%dT%H:%M:%S" in script and estimate.NOW_ARGS[-1] in script


# --- available_gpus: a node whose CPUs are all taken has no usable GPU (issue 16 item 4) --


def test_cpu_hog_node_gpus_do_not_count() -> None:
    text = real("sinfo_gpus_usable_cpu_hog.txt")
    # node1: 4 GPUs unallocated, but a CPU-only job holds all 4 CPUs (4/0/0/4).
    assert "node1|allocated|gpu:h100:4|gpu:h100:0" in text and "|4/0/0/4|" in text
    assert parse.parse_available_gpus(text) == [("node2", 4)]
    assert parse.parse_available_gpus(text, "h100") == [("node2", 4)]
    # The 4-column format has no CPU/memory columns: not checked (old behaviour).
    four = "\n".join("|".join(line.split("|")[:4]) for line in text.splitlines())
    assert parse.parse_available_gpus(four) == [("node1", 4), ("node2", 4)]


def test_cpus_and_memory_must_fit_the_request() -> None:
    text = (
        "g1|mixed|gpu:a100:8|gpu:a100:2(IDX:0-1)|62/2/0/64|512000|100000\n"
        "g2|mixed|gpu:a100:8|gpu:a100:2(IDX:0-1)|10/54/0/64|512000|511000\n"
        "g3|idle|gpu:a100:8|gpu:a100:0(IDX:N/A)|0/64/0/64|512000|0\n"
        "g4|mixed|gpu:a100:8|gpu:a100:0(IDX:N/A)|0/0/64/64|512000|0\n"  # CPUs "other"
        "g5|mixed|gpu:a100:8|gpu:a100:0(IDX:N/A)|x/y|512000|0\n"  # unreadable: skipped
    )
    assert parse.parse_available_gpus(text) == [("g3", 8), ("g1", 6), ("g2", 6)]
    assert parse.parse_available_gpus(text, min_cpus=4) == [("g3", 8), ("g2", 6)]
    assert parse.parse_available_gpus(text, min_mem_mb=2000) == [("g3", 8), ("g1", 6)]
    assert parse.parse_available_gpus(text, min_cpus=4, min_mem_mb=2000) == [("g3", 8)]


# --- sbatch --test-only ---------------------------------------------------------------


def test_test_only_now_and_later() -> None:
    start, nodes, part, cpus = estimate.parse_test_only(real("sbatch_test_only_now.txt"))
    assert (nodes, part, cpus) == (("node2",), "gpu", 1)
    later, nodes2, part2, _ = estimate.parse_test_only(real("sbatch_test_only_later.txt"))
    assert (nodes2, part2) == (("node1",), "gpu")
    assert start is not None and later is not None and start.tzinfo is UTC
    # The hog had --time=5 and started a second before: node1 frees up ~5 min later.
    assert timedelta(minutes=4) < later - start <= timedelta(minutes=5)


def test_test_only_multinode_and_refusal() -> None:
    _, nodes, part, cpus = estimate.parse_test_only(real("sbatch_test_only_multinode.txt"))
    assert (nodes, part, cpus) == (("node3", "node4"), "cpu", 2)
    text = real("sbatch_test_only_impossible.txt")
    assert "Requested node configuration is not available" in text
    assert estimate.parse_test_only(text) == (None, (), None, None)


def test_estimate_properties() -> None:
    now = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
    ok = RunResult(0, "", "")
    soon = estimate.StartEstimate(now + timedelta(seconds=2), now, ("n1",), "gpu", 1, ok)
    later = estimate.StartEstimate(now + timedelta(hours=1, minutes=5), now, ("n1",), "gpu",
                                   1, ok)
    assert soon.starts_now and soon.delay == timedelta(seconds=2)
    assert not later.starts_now and later.delay == timedelta(hours=1, minutes=5)
    assert later.describe() == ("starts 2026-12-01 16:05:00 UTC (in 1h05m) on n1 "
                                "in partition gpu")
    refused = estimate.StartEstimate(None, now, (), None, None,
                                     RunResult(1, "", "allocation failure: nope\n"))
    assert not refused.ok and refused.delay is None and not refused.starts_now
    assert refused.describe() == "no estimate: allocation failure: nope"


# --- squeue start + reasons -------------------------------------------------------------


def test_squeue_start_rows() -> None:
    rows = {str(r.job_id): r for r in estimate.parse_squeue_start(real("squeue_start.txt"))}
    assert set(rows) == set(IDS.values())
    res = rows[IDS["resources"]]
    hog = rows[IDS["hog"]]
    assert res.state == "PENDING" and res.nodes == ("node1",) and res.partition == "gpu"
    assert res.reason is not None and res.reason.code == "Resources"
    assert res.start is not None and hog.start is not None
    assert timedelta(minutes=4) < res.start - hog.start <= timedelta(minutes=5)
    assert hog.state == "RUNNING" and hog.nodes == ("node1",) and hog.reason is None
    assert hog.processors == 4
    held, dep = rows[IDS["held"]], rows[IDS["dependent"]]
    assert held.start is None and held.nodes == ()
    assert held.reason is not None and held.reason.code == "JobHeldUser"
    assert "scontrol release" in held.reason.remedy
    assert dep.reason is not None and dep.reason.code == "Dependency"


def test_slurm_time() -> None:
    assert estimate.parse_slurm_time(real("date_utc.txt")) is not None
    assert estimate.parse_slurm_time("N/A") is None
    assert estimate.parse_slurm_time("Unknown") is None


@pytest.mark.parametrize("code", sorted(REASONS))
def test_every_table_reason_is_explained(code: str) -> None:
    r = explain_reason(f"({code})")
    assert r.known and r.code == code and r.meaning and r.remedy


def test_reason_details_and_limits() -> None:
    r = explain_reason("ReqNodeNotAvail, UnavailableNodes:node3")
    assert (r.code, r.detail) == ("ReqNodeNotAvail", "UnavailableNodes:node3")
    assert r.describe().startswith("ReqNodeNotAvail (UnavailableNodes:node3): ")
    gres = explain_reason("QOSMaxGRESPerUser")
    assert gres.known and "GPUs" in gres.meaning and "per user" in gres.meaning
    assert "QOS" in gres.meaning
    grp = explain_reason("AssocGrpCpuLimit")
    assert grp.known and "CPUs" in grp.meaning and "association" in grp.meaning
    minutes = explain_reason("AssocGrpGRESRunMinutes")
    assert minutes.known and "minutes" in minutes.meaning
    per_job = explain_reason("QOSMaxNodePerJobLimit")
    assert per_job.known and "never start" in per_job.remedy
    odd = explain_reason("SomethingNew")
    assert not odd.known and "scontrol show job" in odd.remedy
    assert explain_reason("").code == "None"


# --- ask once: joint command output split back per command ---------------------------


def test_together_split_roundtrip() -> None:
    token = "0123456789abcdef"
    argv = together_command([["sacct", "-j", "1"], ["squeue", "--jobs=1"]], token)
    assert argv[:2] == ["sh", "-c"] and argv[2].startswith("sacct -j 1; printf")
    mark = f"--dispatch-{token}--"
    out = f"a|b\n\n{mark} 0\nno newline\n{mark} 1\n"
    err = f"\n{mark}\nslurm_load_jobs error: Invalid job id specified\n\n{mark}\n"
    first, second = split_together(RunResult(1, out, err), 2, token)
    assert first == RunResult(0, "a|b\n", "")
    assert second == RunResult(1, "no newline", "slurm_load_jobs error: Invalid job id "
                               "specified\n")


def test_together_split_broken_connection() -> None:
    token = "0123456789abcdef"
    mark = f"--dispatch-{token}--"
    broken = RunResult(255, f"x\n\n{mark} 0\npartial", f"\n{mark}\nssh: reset",
                       may_have_run=True)
    first, second, third = split_together(broken, 3, token)
    assert first == RunResult(0, "x\n", "")
    assert (second.returncode, second.stdout, second.stderr) == (255, "partial", "ssh: reset")
    assert third.returncode == 255 and third.stdout == "" and third.may_have_run
    with pytest.raises(ValueError, match="token"):
        together_command([["true"]], "x;rm")
