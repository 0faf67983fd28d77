"""Job array elements: ids, sbatch's --array syntax, and the parsers and matchers on
squeue/sacct output captured from the testbed (tests/fixtures/slurm/array_*.txt, made
by capture_array.sh: a 0-19%8 array ``arr`` with element 4 cancelled while running, and
a 1,3,5-11:2%2 array ``odd`` with element 9 cancelled while pending)."""

from __future__ import annotations

import pathlib

import pytest

from dispatch.errors import InvalidValueError
from dispatch.results import RunResult
from dispatch.slurm import parse
from dispatch.slurm.arrays import (
    JobId,
    check_array_spec,
    job_ref,
    split_array_id,
    task_in,
)
from dispatch.slurm.job import SlurmJob
from dispatch.slurm.models import JobInfo, JobInfoResult, JobStatus
from dispatch.slurm.query import pick_status, status_of, steps_of

from ..support import slurm_fixtures

FIX = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "slurm"


def real(name: str) -> str:
    return slurm_fixtures.read(name)


IDS = dict(kv.split("=") for kv in real("array_ids.txt").split())
ARR, ODD = int(IDS["arr"]), int(IDS["odd"])


def _statuses(ref: object, fixture: str = "array_squeue.txt") -> list[JobStatus]:
    rows = parse.parse_squeue_rows(real(fixture))
    return [st for row in rows if (st := status_of(job_ref(ref), row)) is not None]


# --- ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(123, JobId(123)), ("123_4", JobId(123, 4)), ("7_0", JobId(7, 0)),
     (JobId(5, 1), JobId(5, 1))],
)
def test_job_ref_accepts_ids_and_element_ids(value: object, expected: JobId) -> None:
    assert job_ref(value) == expected
    assert str(job_ref(value)) == (str(value) if not isinstance(value, JobId) else "5_1")


@pytest.mark.parametrize(
    "value", [0, -3, True, 1.5, None, "", "123", "abc", "123_", "_4", "123_[1-3]", "0_1", "12 3",
              "123_4; rm -rf ~", "123.batch", "123+1"],
)
def test_job_ref_rejects_anything_else_naming_it(value: object) -> None:
    with pytest.raises(InvalidValueError, match="job_id") as exc:
        job_ref(value)
    assert repr(value) in str(exc.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("123_4", (123, "4")), ("123_[5-19%8]", (123, "5-19%8")), ("123_4.batch", (123, "4")),
     ("123_[1,3,5,7,11%2]", (123, "1,3,5,7,11%2")), ("123", (None, None)),
     ("123+1", (None, None)), ("123.extern", (None, None)), ("junk", (None, None))],
)
def test_split_array_id(raw: str, expected: tuple[int | None, str | None]) -> None:
    assert split_array_id(raw) == expected


@pytest.mark.parametrize(
    ("spec", "inside", "outside"),
    [("4", [4], [3, 5]), ("5-19%8", [5, 12, 19], [4, 20]),
     ("1,3,5-11:2%2", [1, 3, 5, 9, 11], [2, 4, 8, 13]), ("0-15:4", [0, 4, 12], [1, 16])],
)
def test_task_in(spec: str, inside: list[int], outside: list[int]) -> None:
    assert all(task_in(spec, t) for t in inside)
    assert not any(task_in(spec, t) for t in outside)
    assert not task_in("garbage", 1)


# --- sbatch --array syntax ------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["0-99%8", "0-15:4", "1,3,5", "7", "1-3,5-9:2%3", "0"])
def test_array_spec_accepts_sbatch_syntax(spec: str) -> None:
    assert check_array_spec(spec) == spec


@pytest.mark.parametrize(
    "spec",
    ["", "0-", "-1", "5-1", "1-5:0", "%8", "1-5%0", "1-5%", "1-5%2%3", "a", "1 - 5", "1,,3",
     "1-5\n#SBATCH --uid=0", "0-9;id", "1-5:2:3", 5, ["0-3"]],
)
def test_array_spec_rejects_anything_else_naming_it(spec: object) -> None:
    with pytest.raises(InvalidValueError, match=r"SlurmJob\.array") as exc:
        SlurmJob(name="a", command="true", array=spec)  # type: ignore[arg-type]
    assert repr(spec) in str(exc.value)


def test_array_directive_and_per_element_output() -> None:
    job = SlurmJob(name="sweep", command="echo $SLURM_ARRAY_TASK_ID", array="0-19%8")
    directives = job.sbatch_directives()
    assert "--array=0-19%8" in directives
    assert '--output="slurm-%A_%a.out"' in directives  # one file per element
    assert "#SBATCH --array=0-19%8\n" in job.to_sbatch_script("/x/bootstrap.sh")
    mine = SlurmJob(name="s", command="true", array="1,3", output="logs/%A_%a.out")
    assert '--output="logs/%A_%a.out"' in mine.sbatch_directives()
    # %j is each element's own job id: distinct files too
    SlurmJob(name="s", command="true", array="1,3", output="logs/%j.out", error="/dev/null")
    plain = SlurmJob(name="p", command="true").sbatch_directives()
    assert not any(d.startswith(("--array", "--output")) for d in plain)


@pytest.mark.parametrize("field", ["output", "error"])
def test_array_with_one_shared_output_file_is_rejected(field: str) -> None:
    with pytest.raises(InvalidValueError, match=rf"SlurmJob\.{field}: 'logs/run\.log'"):
        SlurmJob(name="s", command="true", array="0-3", **{field: "logs/run.log"})  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="every array element"):
        SlurmJob(name="s", command="true", array="0-3", **{field: "logs/%A.log"})  # type: ignore[arg-type]


def test_array_is_a_keyword_only_field_with_a_default() -> None:
    job = SlurmJob("n", "true")
    assert job.array is None


# --- squeue ---------------------------------------------------------------------------------


def test_queue_rows_carry_element_ids() -> None:
    jobs = parse.parse_squeue(real("array_squeue.txt"))
    arr = [j for j in jobs if j.job_id == ARR]
    assert len(arr) == 10  # elements 0-8 started (4 then cancelled) + the pending rest
    assert len({j.raw_id for j in arr}) == 10  # no longer 10 rows with the same id
    assert all(j.array_job_id == ARR for j in arr)
    running = sorted(int(j.array_task or -1) for j in arr if j.state == "RUNNING")
    assert running == [0, 1, 2, 3, 5, 6, 7, 8]
    rest = next(j for j in arr if j.state == "PENDING")
    assert rest.raw_id == f"{ARR}_[9-19%8]" and rest.array_task == "9-19%8"
    assert rest.nodelist == "(JobArrayTaskLimit)"
    cancelled = next(j for j in arr if j.state == "CANCELLED")
    assert (cancelled.raw_id, cancelled.array_task) == (f"{ARR}_4", "4")
    odd = next(j for j in jobs if j.job_id == ODD)
    assert odd.array_task == "1,3,5,7,11%2"  # 9 was cancelled while pending


def test_squeue_of_one_pending_element_names_it() -> None:
    (row,) = parse.parse_squeue(real("array_squeue_element.txt"))
    assert (row.job_id, row.raw_id, row.array_job_id, row.array_task) == (
        ARR, f"{ARR}_17", ARR, "17")


def test_plain_rows_have_no_element_and_raw_id_defaults_to_the_id() -> None:
    plain = parse.parse_squeue(real("squeue.txt"))[0]
    assert plain.array_job_id is None and plain.array_task is None
    assert plain.raw_id == str(plain.job_id)
    made = JobStatus(5, "p", "n", "u", "RUNNING", "0:01", 1, "node1")
    assert made.raw_id == "5" and made.array_task is None


def test_status_of_an_element_running_cancelled_and_pending_in_the_rest() -> None:
    (four,) = _statuses(f"{ARR}_4")
    assert four.state == "CANCELLED" and four.raw_id == f"{ARR}_4"
    (two,) = _statuses(f"{ARR}_2")
    assert two.state == "RUNNING" and two.nodelist == "node3"
    (seventeen,) = _statuses(f"{ARR}_17")  # held in the pending rest 272_[9-19%8]
    assert seventeen.state == "PENDING"
    assert (seventeen.raw_id, seventeen.array_task) == (f"{ARR}_17", "17")
    assert _statuses(f"{ARR}_20") == []
    assert _statuses(f"{ODD}_9") == []  # cancelled while pending: gone from the rest
    assert len(_statuses(f"{ODD}_11")) == 1


def test_status_of_the_whole_array_is_running_until_every_element_ended() -> None:
    rows = _statuses(ARR)
    assert len(rows) == 10
    assert pick_status(rows).state == "RUNNING"
    # No element running, one finished, the rest pending: the array is not over.
    idle = [r for r in rows if r.state != "RUNNING"]
    assert idle[0].state == "CANCELLED"
    assert pick_status(idle).state == "PENDING"
    done = [r for r in rows if r.state == "CANCELLED"]
    assert pick_status(done).state == "CANCELLED"


def test_an_elements_own_id_still_finds_it() -> None:
    rows = parse.parse_squeue_rows(real("array_squeue.txt"))
    four = next(r for r in rows if r.raw_id == f"{ARR}_4")
    (st,) = _statuses(four.unique_id)
    assert st.raw_id == f"{ARR}_4"


# --- sacct ----------------------------------------------------------------------------------


def test_wait_result_lists_every_element_with_state_and_exit_code() -> None:
    steps = steps_of(JobId(ARR), parse.parse_sacct(real("array_sacct_done.txt")))
    result = JobInfoResult(steps, RunResult(0, "", ""))
    elements = result.elements
    assert [e.array_task for e in elements] == [str(i) for i in range(20)]
    assert [e.job_id for e in elements] == [f"{ARR}_{i}" for i in range(20)]
    states = {int(e.array_task or -1): (e.state, e.exit_code) for e in elements}
    assert {t for t, (s, _) in states.items() if s == "FAILED"} == {3, 8, 13, 18}
    assert all(states[t][1] == "1:0" for t in (3, 8, 13, 18))
    assert states[4][0] == "CANCELLED"
    assert sum(s == "COMPLETED" for s, _ in states.values()) == 15
    assert result.main is not None and result.main.job_id == f"{ARR}_3"  # first not ok


def test_element_steps_from_sacct() -> None:
    rows = parse.parse_sacct(real("array_sacct_running.txt"))
    two = steps_of(JobId(ARR, 2), rows)
    assert [s.job_id for s in two] == [f"{ARR}_2", f"{ARR}_2.batch", f"{ARR}_2.extern"]
    assert all(s.array_task == "2" and s.array_job_id == ARR for s in two)
    (pending,) = steps_of(JobId(ARR, 12), rows)  # in the pending rest 272_[9-19%8]
    assert (pending.job_id, pending.state, pending.raw_id) == (
        f"{ARR}_12", "PENDING", f"{ARR}_[9-19%8]")
    assert steps_of(JobId(ODD, 9), rows) == []
    whole = JobInfoResult(steps_of(JobId(ARR), rows), RunResult(0, "", ""))
    assert len(whole.elements) == 10  # 0..8 and the pending rest
    assert whole.main is not None and whole.main.state == "RUNNING"
    element_only = parse.parse_sacct(real("array_sacct_element.txt"))
    assert steps_of(JobId(ARR, 2), element_only) == element_only


def test_sacct_rows_of_plain_jobs_are_not_elements() -> None:
    info = JobInfo("8.batch", "batch", "", "COMPLETED", "0:0", "00:00:00", "", "node3")
    assert info.array_job_id is None and info.array_task is None and info.raw_id == "8.batch"
    (single,) = JobInfoResult([JobInfo("9", "n", "cpu", "FAILED", "3:0", "", "", "")],
                              RunResult(0, "", "")).elements
    assert single.job_id == "9"
