"""events.py: the watch squeue format's parser, scontrol records, and the per-watch event
logic (`Subscriber`, following resubmitted jobs too) fed captured testbed text
(tests/fixtures/slurm/watch_squeue*.txt, squeue_restarts.txt, successor_elements*.txt,
scontrol_show_job.txt; Slurm 22.05.8)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from dispatch.errors import InvalidValueError
from dispatch.results import RunResult
from dispatch.slurm import events, parse, settle, tokens
from dispatch.slurm.arrays import JobId
from dispatch.slurm.events import JobEvent, Subscriber, parse_watch_rows

from ..support import slurm_fixtures

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "slurm"
T0 = datetime(2026, 12, 1, 16, 13, tzinfo=UTC)


def _text(name: str) -> str:
    return slurm_fixtures.read(name)


def _rows(name: str) -> list[events.WatchRow]:
    return parse_watch_rows(_text(name))


def test_parse_watch_rows_captured() -> None:
    rows = {r.status.raw_id: r for r in _rows("watch_squeue.txt")}
    assert sorted(rows) == ["7375", "7376", "7377", "7378_0", "7378_1", "7378_[2-5%2]"]
    failed = rows["7376"]
    # squeue prints the raw wait status (768 = exit 3): sacct's form once over.
    assert (failed.status.state, failed.exit_code, failed.reason) == ("FAILED", "3:0",
                                                                        "NonZeroExitCode")
    held = rows["7375"]
    assert (held.status.state, held.reason, held.exit_code) == ("PENDING", "JobHeldUser", "")
    assert held.status.name == "held job|x"  # a '|' in the name (the last field) survives
    element = rows["7378_1"]
    assert (element.status.job_id, element.status.array_task) == (7378, "1")
    assert element.status.nodelist == "node3" and not element.is_remainder
    rest = rows["7378_[2-5%2]"]
    assert rest.is_remainder and rest.status.array_task == "2-5%2"
    assert all(r.restarts == 0 for r in rows.values())


def test_parse_watch_rows_requeued_and_cancelled() -> None:
    rows = {r.status.raw_id: r for r in _rows("watch_squeue_requeued.txt")}
    requeued = rows["7377"]
    assert (requeued.restarts, requeued.status.state, requeued.reason) == (1, "PENDING",
                                                                           "BeginTime")
    cancelled = rows["7375"]
    assert cancelled.status.state == "CANCELLED" and cancelled.exit_code == "0:0"


@pytest.mark.parametrize("line", [
    "", "   ", "garbage", "x|0|None|1|1|cpu|u|RUNNING|0:01|1|n1|(null)\x1fa|",  # restarts NaN
    "0|0|None|1|1|cpu|u|RUNNING|0:01|1|n1|a|",  # no comment column
    "0|0|None|",  # no squeue fields after the extras
    "0|0|None|1|1|cpu",  # too few squeue fields
])
def test_parse_watch_rows_skips_malformed_lines(line: str) -> None:
    assert parse_watch_rows(line) == []


def test_exit_code_only_once_over() -> None:
    line = "0|256|None|5|5|cpu|u|{state}|0:01|1|n1|(null)\x1fa|"
    assert parse_watch_rows(line.format(state="RUNNING"))[0].exit_code == ""
    assert parse_watch_rows(line.format(state="FAILED"))[0].exit_code == "1:0"
    cancelled = "0|9|None|5|5|cpu|u|CANCELLED|0:01|1|n1|(null)\x1fa|"
    assert parse_watch_rows(cancelled)[0].exit_code == "0:9"


def test_parse_scontrol_job_captured() -> None:
    records = events.parse_scontrol_job(_text("scontrol_show_job.txt"))
    assert [r["JobId"] for r in records] == ["7376", "7378", "7381", "7380"]
    failed = records[0]
    assert (failed["JobState"], failed["ExitCode"], failed["Restarts"]) == ("FAILED", "3:0", "0")
    assert events.scontrol_state(failed) == "FAILED"
    info = events.info_from_scontrol(records[2])
    assert info is not None
    assert (info.job_id, info.array_job_id, info.array_task, info.state) == (
        "7378_1", 7378, "1", "RUNNING")
    rest = events.info_from_scontrol(records[1])  # the pending remainder keeps its own id
    assert rest is not None and rest.job_id == "7378"
    assert events.info_from_scontrol({"JobId": "abc"}) is None


def test_squeue_forgot_all_and_accounting_disabled() -> None:
    assert events.squeue_forgot_all(1, "slurm_load_jobs error: Invalid job id specified\n")
    assert not events.squeue_forgot_all(1, "Connection refused")
    assert not events.squeue_forgot_all(0, "Invalid job id specified")
    assert events.accounting_disabled(
        "sacct: error: Slurm accounting storage is disabled\n")
    assert not events.accounting_disabled("sacct: error: Problem talking to the database")


def test_row_matches_and_raw_ref() -> None:
    rows = {r.status.raw_id: r.row for r in _rows("watch_squeue.txt")}
    assert events.row_matches(JobId(7378, None), rows["7378_0"])
    assert events.row_matches(JobId(7378, 4), rows["7378_[2-5%2]"])  # pending in the rest
    assert not events.row_matches(JobId(7378, 1), rows["7378_0"])
    assert not events.row_matches(JobId(7375, None), rows["7376"])
    assert events.raw_ref("7378_3") == JobId(7378, 3)
    assert events.raw_ref("7378_[2-5%2]") == JobId(7378, None)


def _drain(sub: Subscriber) -> list[JobEvent]:
    out: list[JobEvent] = []
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        assert isinstance(item, JobEvent), item
        out.append(item)
    return out


def _sub(jobs: frozenset[JobId] | None) -> Subscriber:
    return Subscriber("slurm", jobs, 1.0, 0.0)


def test_subscriber_first_sight_then_changes_only() -> None:
    sub = _sub(frozenset({JobId(7377, None), JobId(7375, None)}))
    first = _rows("watch_squeue.txt")
    assert sub.update(first, T0) == []
    seen = {e.raw_id: e for e in _drain(sub)}
    assert set(seen) == {"7375", "7377"}  # only the watched jobs
    assert seen["7377"].old_state is None and seen["7377"].new_state == "RUNNING"
    assert seen["7377"].nodelist == "node4" and seen["7375"].nodelist == ""
    sub.update(first, T0)
    assert _drain(sub) == []  # nothing changed: no event
    sub.update(_rows("watch_squeue_requeued.txt"), T0)
    changed = {e.raw_id: e for e in _drain(sub)}
    assert (changed["7377"].old_state, changed["7377"].new_state, changed["7377"].restarts,
            changed["7377"].reason) == ("RUNNING", "PENDING", 1, "BeginTime")
    cancelled = changed["7375"]
    assert cancelled.is_final and cancelled.reason == ""  # no stale reason once over
    assert not sub.all_over()  # 7377 is pending again
    assert sub.open_refs() == [JobId(7377, None)]


def test_subscriber_job_that_left_the_queue_and_unknown_ids() -> None:
    sub = _sub(frozenset({JobId(7377, None), JobId(99999999, None)}))
    sub.update(_rows("watch_squeue.txt"), T0)
    _drain(sub)
    assert sub.unseen() == [JobId(99999999, None)]
    gone = sub.update([], T0)  # 7377 left squeue between two ticks, unfinished
    assert gone == ["7377"]
    sub.finish("7377", "COMPLETED", "0:0", T0)
    (done,) = _drain(sub)
    assert (done.old_state, done.new_state, done.exit_code) == ("RUNNING", "COMPLETED", "0:0")
    sub.finish("7377", "FAILED", "1:0", T0)  # already over: no second final event
    assert _drain(sub) == []
    sub.finish("99999999", "UNKNOWN", "", T0, "nobody knows")
    (unknown,) = _drain(sub)
    assert (unknown.old_state, unknown.new_state, unknown.reason) == (None, "UNKNOWN",
                                                                      "nobody knows")
    assert sub.all_over()


def test_subscriber_of_all_jobs_ignores_a_vanished_array_remainder() -> None:
    sub = _sub(None)
    sub.update(_rows("watch_squeue.txt"), T0)
    assert len(_drain(sub)) == 6
    rows = [r for r in _rows("watch_squeue.txt") if not r.is_remainder]
    assert sub.update(rows, T0) == []  # the remainder's id changes as elements start
    assert not sub.all_over()  # a watch of all jobs never ends by itself


# --- restarts in the one squeue format; following a resubmitted job (issue 17) -----------


def test_restart_count_reaches_job_status() -> None:
    jobs = {j.job_id: j for j in parse.parse_squeue(_text("squeue_restarts.txt"))}
    assert (jobs[9762].restarts, jobs[9762].state, jobs[9762].name) == (1, "PENDING", "succ-a")
    assert jobs[9763].restarts == 0
    assert parse.SQUEUE_ARGS is events.WATCH_SQUEUE_ARGS  # one squeue format
    (row,) = [r for r in _rows("watch_squeue_requeued.txt") if r.status.job_id == 7377]
    assert row.restarts == row.status.restarts == 1


def test_successor_is_the_next_job_with_the_same_dispatch_token() -> None:
    # p1=10978 -> p2=10979 -> p3=10980 (plain, one token); n1/n2 share "note|not a token"
    for name in ("successor_elements_pending.txt", "successor_elements.txt"):
        text = _text(name)
        assert settle.successor(JobId(10978), text) == JobId(10979)  # the next link
        assert settle.successor(JobId(10979), text) == JobId(10980)  # ... and the next
        assert settle.successor(JobId(10980), text) is None  # no later job: ends as it is
        assert settle.successor(JobId(10981), text) is None  # not a token: never followed
        assert settle.successor(JobId(1), text) is None  # not listed: its comment is unknown
    assert settle.is_dispatch_token("dispatch:abc_D-9")
    assert settle.is_dispatch_token("dispatch:abc_D-9/12")  # a resubmitted successor's
    for comment in ("dispatch:", "dispatch:a b", "xdispatch:abc", "dispatch:a;rm", "note",
                    "dispatch:a/", "dispatch:a/x", "dispatch:a/1/2", "dispatch:/3"):
        assert not settle.is_dispatch_token(comment), comment
    # a successor's comment carries the count; the token part is what links the chain
    assert tokens.parse_comment(" dispatch:abc/3\n") == ("abc", 3)
    assert tokens.parse_comment("dispatch:abc") == ("abc", 0)
    assert tokens.comment("abc", 3) == "dispatch:abc/3" and tokens.comment("abc") == "dispatch:abc"
    for token, n in (("a b", 1), ("", 0), ("abc", -1)):
        with pytest.raises(ValueError, match="not a dispatch token"):
            tokens.comment(token, n)
    text = "10|N/A|dispatch:t\n12|N/A|dispatch:t/1\n13|N/A|dispatch:u/2\n14|N/A|dispatch:t/2\n"
    assert settle.successor(JobId(10), text) == JobId(12)
    assert settle.successor(JobId(12), text) == JobId(14)  # not 13: another token
    assert settle.successor_argv("dispatcher")[-1] == "--user=dispatcher"
    assert settle.successor_argv("dispatcher")[:3] == parse.SQUEUE_SUCCESSOR_ARGS
    with pytest.raises(InvalidValueError):
        settle.successor_argv("a;b")


def test_successor_of_an_element_is_that_element_of_a_later_array() -> None:
    # old=10974 (--array=0-3), new=10975 (--array=2) and decoy=10976 (--array=1) with its
    # token, other=10977 (--array=2) with another token. squeue prints a pending
    # one-element array's index as "2" (%K), the pending rest of old as "2-3".
    for name in ("successor_elements_pending.txt", "successor_elements.txt"):
        text = _text(name)
        assert settle.successor(JobId(10974, 2), text) == JobId(10975, 2), name
        assert settle.successor(JobId(10974, 1), text) == JobId(10976, 1), name  # the decoy
        assert settle.successor(JobId(10974, 3), text) is None  # nobody carries on 3
        assert settle.successor(JobId(10974, 0), text) is None
        assert settle.successor(JobId(10977, 2), text) is None  # another token: none later
        assert settle.successor(JobId(10975, 2), text) is None  # the last link
        # a plain id never follows to an element, nor an element to a plain job
        assert settle.successor(JobId(10974), text) is None
    rows = parse.parse_squeue_successors(_text("successor_elements_pending.txt"))
    assert (10974, "2-3", "dispatch:capture-el-1796151302") in rows
    assert (10981, None, "note|not a token") in rows  # "|" in the comment (last) survives
    assert len(rows) == 11  # the capture's "# ..." line is skipped
    assert parse.parse_squeue_successors("12|N/A\n12_3|3|x\n13|a b|x\n14|3|\n") == [
        (14, "3", "")
    ]


def _element_row(line: str) -> events.WatchRow:
    (row,) = events.parse_watch_rows(line)
    return row


def test_subscriber_follows_a_resubmitted_element_through_a_pending_one_element_array() -> None:
    # 10986 is a captured one-element array (--array=3): "10986_[3]" pending, "10986_3"
    # running. It stands in for NEW_3 continuing OLD_3 (OLD=10900), so it gets the comment
    # dispatch's resubmission gives it (the token, one restart before it).
    pending, running = parse_watch_rows(
        _text("watch_squeue_one_element.txt").replace("(null)\x1f", "dispatch:t/1\x1f"))
    old = JobId(10900, 3)
    sub = Subscriber("slurm", frozenset({old}), 1.0, 0.0, successors=True, wants_final=True)
    ok = RunResult(0, "", "")
    ended = ("0|15|None|10901|10900_3|cpu|dispatcher|CANCELLED|0:05|1|node3|"
             "dispatch:t\x1fone-element|")
    sub.update([_element_row(ended)], T0, ok)
    assert sub.squeue_done() and sub.follow_candidates() == [(old, "dispatcher")]
    sub.follow(old, JobId(10986, 3))
    new = JobId(10986, 3)
    assert sub.head(old) == new and sub.active() == [new] and sub.roots() == [old]
    assert sub.follow_candidates() == [] and not sub.all_over()
    assert sub.update([pending], T0, ok) == []
    assert sub.update([running], T0, ok) == []  # "10986_[3]" is "10986_3": nothing left
    got = _drain(sub)
    assert [(e.raw_id, e.new_state, e.restarts, e.resubmitted_from) for e in got] == [
        ("10900_3", "CANCELLED", 0, None),
        ("10986_3", "PENDING", 1, 10900), ("10986_3", "RUNNING", 1, 10900),
    ]
    status = sub.statuses[new]
    assert status is not None and status.state == "RUNNING" and status.restarts == 1


def test_subscriber_of_a_whole_array_follows_each_resubmitted_element() -> None:
    arr = JobId(10900)
    sub = Subscriber("slurm", frozenset({arr}), 1.0, 0.0, successors=True, wants_final=True)
    ok = RunResult(0, "", "")
    line = ("0|{code}|None|{uid}|10900_{task}|cpu|dispatcher|{state}|0:05|1|node3|"
            "dispatch:t\x1fsweep|")
    rows = [_element_row(line.format(code=c, uid=u, task=t, state=st)) for c, u, t, st in (
        ("0", 10901, 0, "COMPLETED"), ("15", 10902, 1, "CANCELLED"),
        ("15", 10903, 2, "TIMEOUT"), ("0", 10900, 3, "RUNNING"))]
    sub.update(rows, T0, ok)
    # only the elements that ended other than COMPLETED, each looked up once
    assert sorted(sub.follow_candidates(), key=str) == [
        (JobId(10900, 1), "dispatcher"), (JobId(10900, 2), "dispatcher")]
    sub.follow(JobId(10900, 1), None)
    sub.follow(JobId(10900, 2), JobId(10986, 2))
    assert sub.follow_candidates() == [] and sub.roots() == [arr]
    assert sub.element_heads(arr) == {2: JobId(10986, 2)}
    assert sub.active() == [arr, JobId(10986, 2)]
    assert sub.element_heads(JobId(10900, 2)) == {}
    done = [*rows[:3], _element_row(line.format(code="0", uid=10900, task=3,
                                                state="COMPLETED"))]
    new = "0|{code}|None|10986|10986_2|cpu|dispatcher|{state}|0:01|1|node4|dispatch:t/1\x1fsweep|"
    sub.update([*done, _element_row(new.format(code="0", state="RUNNING"))], T0, ok)
    assert not sub.squeue_done() and not sub.all_over()  # the successor still runs
    sub.update([*done, _element_row(new.format(code="0", state="COMPLETED"))], T0, ok)
    assert sub.squeue_done() and sub.all_over() and sub.follow_candidates() == []
    got = [(e.raw_id, e.new_state, e.restarts, e.resubmitted_from) for e in _drain(sub)]
    assert got[-3:] == [("10900_3", "COMPLETED", 0, None), ("10986_2", "RUNNING", 1, 10900),
                        ("10986_2", "COMPLETED", 1, 10900)]


def _row(
    job: int, state: str, restarts: int = 0, code: str = "0", comment: str = "dispatch:t"
) -> events.WatchRow:
    line = (f"{restarts}|{code}|None|{job}|{job}|cpu|dispatcher|{state}|0:01|1|node3|"
            f"{comment}\x1ftrain|")
    (row,) = events.parse_watch_rows(line)
    return row


def test_subscriber_follows_a_chain_of_resubmissions() -> None:
    a = JobId(100, None)
    sub = Subscriber("slurm", frozenset({a}), 1.0, 0.0, successors=True, wants_final=True)
    ok = RunResult(0, "", "")
    sub.update([_row(100, "RUNNING")], T0, ok)
    assert sub.follow_candidates() == []  # still running
    sub.update([_row(100, "CANCELLED", code="15")], T0, ok)
    assert sub.squeue_done() and sub.follow_candidates() == [(a, "dispatcher")]
    sub.follow(a, JobId(105))
    b = JobId(105, None)
    assert sub.head(a) == b and sub.active() == [b] and not sub.all_over()
    assert not sub.squeue_done()  # the successor was not asked about yet
    assert sub.follow_candidates() == []
    # each successor's comment carries the restarts before it (dispatch's resubmission)
    b1, c2 = "dispatch:t/1", "dispatch:t/2"
    sub.update([_row(100, "CANCELLED", code="15"), _row(105, "RUNNING", comment=b1)], T0, ok)
    sub.update([_row(105, "PREEMPTED", comment=b1)], T0, ok)
    sub.follow(b, JobId(107))  # ... and again
    sub.update([_row(107, "RUNNING", comment=c2)], T0, ok)
    sub.update([_row(107, "RUNNING", restarts=1, comment=c2)], T0, ok)  # requeued by Slurm
    sub.update([_row(107, "COMPLETED", restarts=1, comment=c2)], T0, ok)
    got = _drain(sub)
    assert [(e.job_id, e.new_state, e.restarts, e.resubmitted_from) for e in got] == [
        (100, "RUNNING", 0, None), (100, "CANCELLED", 0, None),
        (105, "RUNNING", 1, 100), (105, "PREEMPTED", 1, 100),
        (107, "RUNNING", 2, 105), (107, "RUNNING", 3, 105), (107, "COMPLETED", 3, 105),
    ]
    assert sub.all_over() and sub.squeue_done() and sub.follow_candidates() == []
    status = sub.statuses[JobId(107, None)]
    assert status is not None and status.restarts == 3  # squeue's 1 + the chain's 2


def test_subscriber_without_successor_or_token_ends_as_before() -> None:
    a = JobId(100, None)
    sub = Subscriber("slurm", frozenset({a}), 1.0, 0.0, successors=True)
    sub.update([_row(100, "TIMEOUT", code="15")], T0, RunResult(0, "", ""))
    sub.follow(a, None)  # the lookup found no later job with its token
    assert sub.all_over() and sub.follow_candidates() == [] and sub.head(a) == a
    plain = Subscriber("slurm", frozenset({a}), 1.0, 0.0)  # follow(): not asked to
    plain.update([_row(100, "TIMEOUT", code="15")], T0)
    assert plain.follow_candidates() == [] and plain.all_over()
    done = Subscriber("slurm", frozenset({a}), 1.0, 0.0, successors=True)
    done.update([_row(100, "COMPLETED")], T0)
    assert done.follow_candidates() == []  # only a job that ended other than COMPLETED


def test_subscriber_keeps_the_final_row_once_the_job_is_no_longer_asked_about() -> None:
    a = JobId(100, None)
    sub = Subscriber("slurm", frozenset({a}), 1.0, 0.0, wants_final=True)
    sub.update([_row(100, "FAILED", code="768")], T0, RunResult(0, "", ""))
    sub.update([], T0, RunResult(0, "", ""))  # over: the poller asks squeue no more
    status = sub.statuses[a]
    assert status is not None and status.state == "FAILED"
    running = Subscriber("slurm", frozenset({a}), 1.0, 0.0, wants_final=True)
    running.update([_row(100, "RUNNING")], T0, RunResult(0, "", ""))
    running.update([], T0, RunResult(0, "", ""))  # left squeue unfinished: nothing to keep
    assert running.statuses[a] is None and running.squeue_done()
