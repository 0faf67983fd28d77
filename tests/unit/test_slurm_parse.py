"""Parsers against output captured from the testbed's SLURM 22.05 (tests/fixtures/slurm/*.txt)
and synthetic inputs in the same formats (tests/fixtures/slurm/synthetic/*.txt)."""

from __future__ import annotations

import pathlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch.results import RunResult
from dispatch.slurm import parse
from dispatch.slurm.models import JobInfoResult, NodeGres
from dispatch.slurm.nodelist import expand_nodelist, first_node_from_nodelist

from ..support import slurm_fixtures

FIX = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "slurm"


def real(name: str) -> str:
    return slurm_fixtures.read(name)


def synth(name: str) -> str:
    return (FIX / "synthetic" / name).read_text(encoding="utf-8")


IDS = dict(kv.split("=") for kv in real("ids.txt").split())


# --- the argv constants are the ones the fixtures were captured with ---------------------


def test_capture_script_uses_the_constants() -> None:
    script = real("capture.sh")
    # the capture scripts write the unit separator as bash's $'\x1f'
    assert "'" + parse.SQUEUE_ARGS[-1].replace("\x1f", "'$'\\x1f''") + "'" in script
    assert parse.SQUEUE_ARGS[-1] in real("squeue_comments_chain.txt").splitlines()[0]
    assert parse.SQUEUE_ARGS[-1].startswith("--Format=RestartCnt:0|,exit_code:0|,Reason:0|")
    assert parse.SACCT_ARGS[-1].removeprefix("--format=") in script
    assert "'" + parse.SINFO_GPU_ARGS[-1] + "'" in script
    assert "'" + parse.SINFO_PARTITION_ARGS[-1] + "'" in script
    assert parse.SINFO_NODES_ARGS[-1] in script
    assert " ".join(parse.SCONTROL_NODE_ARGS[1:]) in script
    for args in (
        parse.SQUEUE_ARGS,
        parse.SACCT_ARGS,
        parse.SCONTROL_NODE_ARGS,
        parse.SINFO_PARTITION_ARGS,
        parse.SINFO_GPU_ARGS,
        parse.SINFO_NODES_ARGS,
        parse.SQUEUE_COMMENT_ARGS,
        parse.SACCT_COMMENT_ARGS,
    ):
        assert all(isinstance(a, str) and a for a in args)
        assert "--noheader" in args or args[0] == "scontrol"


# --- squeue --------------------------------------------------------------------------------


def test_squeue_real_capture() -> None:
    jobs = parse.parse_squeue(real("squeue.txt"))
    by_name = {j.name: j for j in jobs}
    hostile = by_name['dispatch |pipe "q" #h ü']
    assert hostile.job_id == int(IDS["hostile"])
    assert hostile.state == "RUNNING"
    assert hostile.user == "dispatcher"
    assert hostile.partition == "cpu"
    assert hostile.nodelist == "node3"
    assert first_node_from_nodelist(hostile.nodelist) == "node3"

    two = by_name["two nodes"]
    assert two.nodes == 2
    assert expand_nodelist(two.nodelist) == ["node3", "node4"]

    later = by_name["begins later"]
    assert later.state == "PENDING" and later.is_pending
    assert later.nodelist == "(BeginTime)"
    assert first_node_from_nodelist(later.nodelist) is None

    array = [j for j in jobs if j.name == "array"]
    assert len(array) == 4
    assert {j.job_id for j in array} == {int(IDS["arr"])}


def test_squeue_rows_keep_array_ids() -> None:
    rows = parse.parse_squeue_rows(real("squeue.txt"))
    arr = int(IDS["arr"])
    array_rows = [r for r in rows if r.status.job_id == arr]
    raw = sorted(r.raw_id for r in array_rows)
    assert raw[-1] == f"{arr}_[4-5]"
    assert f"{arr}_1" in raw
    pending = next(r for r in array_rows if r.raw_id.endswith("[4-5]"))
    assert pending.unique_id == arr and pending.status.nodelist == "(Resources)"
    element = next(r for r in array_rows if r.raw_id == f"{arr}_1")
    assert element.unique_id != arr
    assert element.ids == {arr, element.unique_id}


def test_squeue_states_all_capture() -> None:
    jobs = {j.job_id: j for j in parse.parse_squeue(real("squeue_states_all.txt"))}
    assert jobs[int(IDS["ok"])].state == "COMPLETED" and jobs[int(IDS["ok"])].is_finished
    assert jobs[int(IDS["fail"])].state == "FAILED"
    assert jobs[int(IDS["fail"])].nodelist == "(NonZeroExitCode)"
    cancelled = jobs[int(IDS["cancel"])]
    assert cancelled.state == "CANCELLED" and cancelled.nodelist == ""
    assert first_node_from_nodelist(cancelled.nodelist) is None


def test_squeue_synthetic() -> None:
    rows = parse.parse_squeue_rows(synth("squeue.txt"))
    by_raw = {r.raw_id: r for r in rows}
    # Heterogeneous components report the leader's id.
    assert by_raw["200+0"].status.job_id == 200
    assert by_raw["200+1"].status.job_id == 200
    assert by_raw["200+1"].unique_id == 201
    assert expand_nodelist(by_raw["200+0"].status.nodelist) == ["gpu01-ib", "gpu02-ib"]
    assert by_raw["310_[1-5,9]"].status.job_id == 310
    assert by_raw["310_6"].status.time_elapsed == "1-00:00:01"
    # A name with '|' (last column) parses whole; the reason has commas and brackets.
    job400 = by_raw["400"].status
    assert job400.name == "a|b|c"
    assert job400.nodes == 4
    assert first_node_from_nodelist(job400.nodelist) is None
    assert by_raw["401"].status.name == "  spaced name  "
    assert by_raw["401"].status.state == "COMPLETING"
    assert by_raw["402"].status.state == "CONFIGURING"
    assert by_raw["403"].status.name == ""
    # Truncated line, non-numeric id, non-numeric node count, no comment column: skipped.
    assert "404" not in by_raw
    assert "405" not in by_raw
    assert "409" not in by_raw
    # A resubmitted job's dispatch comment carries the restarts before it: squeue's own
    # count (1) + 2. A foreign comment (even one holding "|" and a token after it) or a
    # malformed count carries none; a name may hold the unit separator.
    assert (by_raw["406"].status.restarts, by_raw["406"].status.name) == (3, "resumed")
    assert (by_raw["407"].status.restarts, by_raw["407"].status.name) == (0, "foreign comment")
    assert (by_raw["408"].status.restarts, by_raw["408"].status.name) == (0, "a\x1fb|c")
    assert by_raw["403"].status.restarts == 0
    assert len(rows) == 11


def test_squeue_rows_read_restarts_carried_in_a_dispatch_comment() -> None:
    """Captured: a job of a token (cancelled), its resubmitted successor ("<token>/1",
    then requeued once), a foreign comment with "|", a name with "|" and the separator."""
    captured = parse.parse_squeue_rows(real("squeue_comments_chain.txt"))
    rows = {r.unique_id: r.status for r in captured}
    first, succ, foreign, odd, plain = sorted(rows)
    assert (rows[first].restarts, rows[first].name) == (0, "chain")
    assert rows[first].state == "CANCELLED"
    assert (rows[succ].restarts, rows[succ].name) == (2, "chain")  # 1 requeue + 1 before it
    assert (rows[plain].restarts, rows[plain].name) == (0, "plain")
    assert (rows[odd].restarts, rows[odd].name) == (0, "odd|name\x1fhere")
    assert (rows[foreign].restarts, rows[foreign].name) == (0, "foreign")
    assert len(rows) == 5


def test_squeue_comments_capture() -> None:
    pairs = dict(parse.parse_squeue_comments(real("squeue_comments.txt")))
    assert pairs[int(IDS["hostile"])] == "dispatch-token-abc123"
    assert pairs[int(IDS["two"])] == "(null)"
    assert parse.parse_squeue_comments("garbage\n12|a|b\n") == [(12, "a|b")]
    # An array element (%i) is its array's id, not int("9686_3") == 96863 (Python's int
    # takes "_" as a digit separator); anything else after the id is no job id.
    text = "9686_3|dispatch:t\n9688_[1-3%2]|u\n12x|v\n13_|w\n"
    assert parse.parse_squeue_comments(text) == [(9686, "dispatch:t"), (9688, "u")]
    # find_token's real format (%A|%k): a comment holding "|" stays whole
    pairs = parse.parse_squeue_comments(real("successor_comments.txt"))
    assert pairs == [(9762, "dispatch:capture-1796148724"), (9763, "dispatch:capture-1796148724"),
                     (9764, "note|not a token"), (9765, "dispatch:capture-1796148724")]


# --- sacct ---------------------------------------------------------------------------------


def test_sacct_real_capture() -> None:
    steps = parse.parse_sacct(real("sacct.txt"))
    by_id = {s.job_id: s for s in steps}
    ok = by_id[IDS["ok"]]
    assert ok.state == "COMPLETED" and ok.exit_code == "0:0" and ok.is_success
    assert ok.name == "plain ok" and ok.partition == "cpu"
    assert by_id[IDS["ok"] + ".extern"].max_rss.endswith("K")
    fail = by_id[IDS["fail"]]
    assert fail.state == "FAILED" and fail.exit_code == "3:0" and fail.is_finished
    cancelled = by_id[IDS["cancel"]]
    assert cancelled.state == "CANCELLED"
    assert cancelled.nodelist == "None assigned"
    assert first_node_from_nodelist(cancelled.nodelist) is None
    # slurmdbd stores '"' as '`' in names; '|' and '#' survive.
    assert by_id[IDS["hostile"]].name == "dispatch |pipe `q` #h ü"
    assert by_id[IDS["two"]].nodelist == "node[3-4]"
    assert by_id[IDS["two"] + ".0"].name == "hostname"
    assert by_id[f"{IDS['arr']}_[4-5]"].state == "PENDING"
    assert by_id[f"{IDS['arr']}_1"].state == "RUNNING"

    result = JobInfoResult(
        steps=[s for s in steps if s.job_id.split(".")[0] == IDS["fail"]],
        ssh_result=RunResult(0, "", ""),
    )
    assert result.main is not None and result.main.job_id == IDS["fail"]


def test_sacct_synthetic() -> None:
    steps = parse.parse_sacct(synth("sacct.txt"))
    by_id = {s.job_id: s for s in steps}
    assert by_id["500+0"].nodelist == "gpu[01-02]-ib"
    assert by_id["500+0.batch"].state == "RUNNING"
    assert by_id["501"].state == "CANCELLED" and by_id["501"].is_finished
    assert by_id["502"].state == "OUT_OF_MEMORY" and by_id["502"].max_rss == "3999M"
    assert by_id["503"].state == "NODE_FAIL"
    assert by_id["504"].state == "TIMEOUT"
    assert by_id["505"].state == "PREEMPTED"
    assert by_id["506"].state == "CANCELLED"
    assert by_id["507"].name == "pipe|in|name" and by_id["507"].state == "DEADLINE"
    for skipped in ("508", "509"):
        assert skipped not in by_id
    assert len(steps) == 11


def test_sacct_comments_capture() -> None:
    # The testbed does not set AccountingStoreFlags=job_comment: comments come back empty.
    pairs = parse.parse_sacct_comments(real("sacct_comments.txt"))
    assert pairs == [(int(IDS["ok"]), ""), (int(IDS["hostile"]), "")]
    assert parse.parse_sacct_comments("7_3|tok\nx|y\n") == [(7, "tok")]


# --- scontrol show node --------------------------------------------------------------------


def test_scontrol_real_capture() -> None:
    nodes = parse.parse_scontrol_nodes(real("scontrol_nodes.txt"))
    assert sorted(nodes) == ["node1", "node2", "node3", "node4"]
    n1 = nodes["node1"]
    assert n1.state == "MIXED"
    assert (n1.cpus_total, n1.cpus_allocated) == (4, 3)
    assert (n1.memory_total, n1.memory_allocated) == (4000, 768)
    assert n1.gres == [NodeGres(name="gpu", type="h100", configured=4, allocated=3)]
    assert n1.get_gres("gpu") is not None and n1.get_gres("shard") is None
    assert n1.partitions == ["gpu"]
    assert n1.features == ["gpu", "h100"]
    n2 = nodes["node2"]
    assert n2.state == "ALLOCATED"
    assert n2.gres == [NodeGres(name="gpu", type="h100", configured=4, allocated=0)]
    n3 = nodes["node3"]
    assert n3.gres == [] and n3.features == ["cpu"] and n3.partitions == ["cpu"]
    assert parse.parse_scontrol_nodes(real("scontrol_node_missing.txt")) == {}


def test_scontrol_synthetic_long_gres() -> None:
    nodes = parse.parse_scontrol_nodes(synth("scontrol_nodes.txt"))
    assert sorted(nodes) == ["gpu01-ib", "gpu02-ib", "gpu03-ib"]
    g1 = nodes["gpu01-ib"]
    assert g1.gres == [
        NodeGres("gpu", "a100", 4, 2),
        NodeGres("gpu", "v100", 2, 1),
        NodeGres("shard", "a100", 64, 0),
        NodeGres("mps", None, 400, 0),
    ]
    assert g1.partitions == ["gpu", "gpu-long"]
    assert g1.memory_allocated == 512000
    assert g1.cpus_total == 128
    g2 = nodes["gpu02-ib"]
    assert g2.state == "DOWN+DRAIN+NOT_RESPONDING"
    assert g2.features == []
    assert g2.gres == [NodeGres("gpu", None, 8, 0)]
    assert not parse.node_state_usable(g2.state)
    # Untyped allocation total is spread over the typed entries in order.
    g3 = nodes["gpu03-ib"]
    assert g3.gres == [NodeGres("gpu", "a100", 2, 2), NodeGres("gpu", "h100", 2, 1)]


# --- sinfo ---------------------------------------------------------------------------------


def test_sinfo_partitions_real_capture() -> None:
    text = real("sinfo_partitions.txt")
    parts = {p.name: p for p in parse.parse_sinfo_partitions(text)}
    assert sorted(parts) == ["cpu", "gpu"]
    assert parts["gpu"].nodes == ["node1", "node2"]
    assert parts["gpu"].total_cpus == 8 and parts["gpu"].total_nodes == 2
    assert parts["cpu"].state == "up"
    assert parse.parse_default_partition(text) == "cpu"


def test_sinfo_partitions_synthetic_merges_state_groups() -> None:
    text = synth("sinfo_partitions.txt")
    parts = {p.name: p for p in parse.parse_sinfo_partitions(text)}
    assert sorted(parts) == ["cpu", "debug", "gpu"]
    assert parts["gpu"].nodes == ["gpu01-ib", "gpu02-ib", "gpu07-ib"]
    assert parts["gpu"].total_nodes == 3 and parts["gpu"].total_cpus == 384
    assert parts["cpu"].nodes == ["cpu01", "cpu02", "cpu03", "cpu07"]
    assert parts["debug"].nodes == [] and parts["debug"].state == "down"
    assert parse.parse_default_partition(text) == "cpu"
    assert parse.parse_default_partition("gpu|up|1|0/1/0/1|n1\n") is None


def test_available_gpus_real_capture() -> None:
    # node1: 4 configured, 3 used by the GPU job; node2: all CPUs taken by array tasks but
    # its GPUs are free (sinfo's GresUsed says 0).
    assert parse.parse_available_gpus(real("sinfo_gpus.txt")) == [("node2", 4), ("node1", 1)]
    assert parse.parse_available_gpus(real("sinfo_gpus.txt"), "H100") == [
        ("node2", 4),
        ("node1", 1),
    ]
    assert parse.parse_available_gpus(real("sinfo_gpus.txt"), "a100") == []
    assert parse.parse_available_gpus(real("sinfo_gpus_all.txt")) == [("node2", 4), ("node1", 1)]


def test_available_gpus_synthetic() -> None:
    text = synth("sinfo_gpus.txt")
    assert parse.parse_available_gpus(text) == [
        ("gpu05-ib", 8),
        ("gpu01-ib", 4),
        ("gpu10-ib", 4),
        ("gpu08-ib", 3),
    ]
    assert parse.parse_available_gpus(text, "a100") == [("gpu01-ib", 2)]
    assert parse.parse_available_gpus(text, "v100") == [("gpu01-ib", 2)]
    assert parse.parse_available_gpus(text, "h100") == [("gpu05-ib", 8), ("gpu08-ib", 3)]


@pytest.mark.parametrize(
    ("state", "usable"),
    [
        ("idle", True),
        ("mixed", True),
        ("allocated", True),
        ("mixed-", True),
        ("idle~", True),
        ("completing", True),
        ("down*", False),
        ("idle*", False),
        ("drained", False),
        ("draining", False),
        ("fail", False),
        ("failing", False),
        ("maint", False),
        ("inval", False),
        ("IDLE+DRAIN", False),
        ("MIXED+DRAIN", False),
        ("", False),
    ],
)
def test_node_state_usable(state: str, usable: bool) -> None:
    assert parse.node_state_usable(state) is usable


def test_partition_nodes() -> None:
    assert parse.parse_partition_nodes(real("sinfo_nodes.txt")) == ["node1", "node2"]
    assert parse.parse_partition_nodes(synth("sinfo_nodes.txt")) == [
        "gpu01-ib",
        "gpu02-ib",
        "cpu01",
        "cpu02",
    ]


def test_sbatch_parsable() -> None:
    assert parse.parse_sbatch_parsable(real("sbatch_parsable.txt")) == int(IDS["ok"])
    assert parse.parse_sbatch_parsable("123;testbed\n") == 123
    assert parse.parse_sbatch_parsable("sbatch: error: nope\n") is None
    assert parse.parse_sbatch_parsable("") is None


# --- GRES / TRES ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gpu:h100:4(S:0-1)", [("gpu", "h100", 4)]),
        ("gpu:4", [("gpu", None, 4)]),
        ("gpu:h100:2(IDX:0,3),gpu:a100:0(IDX:N/A)", [("gpu", "h100", 2), ("gpu", "a100", 0)]),
        ("(null)", []),
        ("", []),
        ("gpu", [("gpu", None, 1)]),
        ("bandwidth:lustre:no_consume:4G", [("bandwidth", "lustre", 4 * 1024**3)]),
        ("shard:2K", [("shard", None, 2048)]),
        ("gpu:h100:x,gpu:2", [("gpu", None, 2)]),
    ],
)
def test_parse_gres(text: str, expected: list[tuple[str, str | None, int]]) -> None:
    assert parse.parse_gres(text) == expected


def test_parse_tres() -> None:
    assert parse.parse_tres("cpu=3,mem=768M,gres/gpu=3") == {
        "cpu": 3,
        "mem": 768,
        "gres/gpu": 3,
    }
    assert parse.parse_tres("cpu=4,mem=1G") == {"cpu": 4, "mem": 1024}
    assert parse.parse_tres("") == {}
    assert parse.parse_tres("junk,gres/gpu:a100=2") == {"gres/gpu:a100": 2}


# --- nodelists -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("gpu[01-03,07]-ib", ["gpu01-ib", "gpu02-ib", "gpu03-ib", "gpu07-ib"]),
        ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
        ("node1,node[3-5]", ["node1", "node3", "node4", "node5"]),
        ("node[009-011]", ["node009", "node010", "node011"]),
        ("node[8-10]", ["node8", "node9", "node10"]),
        ("gpu[01-02]-ib,cpu07", ["gpu01-ib", "gpu02-ib", "cpu07"]),
        ("localhost", ["localhost"]),
        ("", []),
        ("(null)", []),
        ("(Resources)", []),
        ("None assigned", []),
        ("node[1-", []),
        ("node]1", []),
        ("node[a-b]", []),
        ("node[5-3]", []),
    ],
)
def test_expand_nodelist(expr: str, names: list[str]) -> None:
    assert expand_nodelist(expr) == names


@pytest.mark.parametrize(
    ("expr", "first"),
    [
        ("gpu[01-03,07]-ib", "gpu01-ib"),
        ("node[3-4]", "node3"),
        ("node7,node[1-2]", "node7"),
        ("a[1-2]b[3-4]", "a1b3"),
        ("", None),
        ("   ", None),
        ("(null)", None),
        ("(Resources)", None),
        ("(ReqNodeNotAvail, UnavailableNodes:gpu[01-03,07]-ib)", None),
        ("None assigned", None),
    ],
)
def test_first_node_from_nodelist(expr: str, first: str | None) -> None:
    assert first_node_from_nodelist(expr) == first


# --- robustness ----------------------------------------------------------------------------

PARSERS = [
    parse.parse_squeue,
    parse.parse_squeue_comments,
    parse.parse_sacct,
    parse.parse_sacct_comments,
    parse.parse_scontrol_nodes,
    parse.parse_sinfo_partitions,
    parse.parse_default_partition,
    parse.parse_available_gpus,
    parse.parse_partition_nodes,
    parse.parse_sbatch_parsable,
    parse.parse_gres,
    parse.parse_tres,
    expand_nodelist,
    first_node_from_nodelist,
]


@given(st.text(alphabet=st.sampled_from("ab01|[]-,:()=* \n/+_.#\tü"), max_size=200))
def test_parsers_never_raise(text: str) -> None:
    for fn in PARSERS:
        fn(text)  # type: ignore[operator]


@pytest.mark.parametrize(
    "name",
    [
        "squeue.txt",
        "squeue_states_all.txt",
        "sacct.txt",
        "scontrol_nodes.txt",
        "sinfo_partitions.txt",
        "sinfo_gpus_all.txt",
    ],
)
def test_truncated_real_output_never_raises(name: str) -> None:
    text = real(name)
    for cut in range(0, len(text), max(1, len(text) // 97)):
        for fn in PARSERS:
            fn(text[:cut])  # type: ignore[operator]
    # Extra trailing garbage columns on the fixed-column formats drop just those lines.
    garbled = re.sub(r"$", "|extra", text, count=1, flags=re.MULTILINE)
    for fn in PARSERS:
        fn(garbled)  # type: ignore[operator]


# sacct for a 3-element array whose element 2 failed (captured on the testbed; job 2140).
ARRAY_SACCT = (
    "2140_1|cpu|COMPLETED|0:0|00:00:02||node3|arr\n"
    "2140_1.batch||COMPLETED|0:0|00:00:02||node3|batch\n"
    "2140_1.extern||COMPLETED|0:0|00:00:02|1644K|node3|extern\n"
    "2140_1.0||COMPLETED|0:0|00:00:02||node3|bash\n"
    "2140_2|cpu|FAILED|1:0|00:00:04||node3|arr\n"
    "2140_2.batch||FAILED|1:0|00:00:04||node3|batch\n"
    "2140_2.extern||COMPLETED|0:0|00:00:04|1644K|node3|extern\n"
    "2140_2.0||FAILED|1:0|00:00:04||node3|bash\n"
    "2140_3|cpu|COMPLETED|0:0|00:00:06||node3|arr\n"
    "2140_3.batch||COMPLETED|0:0|00:00:06|8928K|node3|batch\n"
    "2140_3.extern||COMPLETED|0:0|00:00:06|1636K|node3|extern\n"
    "2140_3.0||COMPLETED|0:0|00:00:06|7116K|node3|bash\n"
)


def test_array_main_is_the_failed_element_not_the_first() -> None:
    result = JobInfoResult(parse.parse_sacct(ARRAY_SACCT), RunResult(0, ARRAY_SACCT, ""))
    assert result.main is not None
    assert (result.main.job_id, result.main.state) == ("2140_2", "FAILED")


def test_array_main_prefers_an_unfinished_element() -> None:
    text = ARRAY_SACCT.replace("2140_3|cpu|COMPLETED", "2140_3|cpu|RUNNING")
    result = JobInfoResult(parse.parse_sacct(text), RunResult(0, text, ""))
    assert result.main is not None and result.main.job_id == "2140_3"


def test_array_all_completed_main_is_first() -> None:
    text = ARRAY_SACCT.replace("FAILED|1:0", "COMPLETED|0:0")
    result = JobInfoResult(parse.parse_sacct(text), RunResult(0, text, ""))
    assert result.main is not None and result.main.job_id == "2140_1"


# --- sinfo partition GRES (for placement) --------------------------------------------------

SINFO_FIX = pathlib.Path(__file__).parent.parent / "fixtures" / "sinfo-partitions"


def test_sinfo_partition_gres_args_print_partition_and_gres() -> None:
    assert parse.SINFO_PARTITION_GRES_ARGS == ["sinfo", "--noheader", "--format=%P|%G"]


def test_parse_sinfo_gres_on_testbed_capture() -> None:
    text = (SINFO_FIX / "testbed_P_G.txt").read_text()
    assert parse.parse_sinfo_gres(text) == {"gpu": {"h100"}, "cpu": set()}
    assert parse.parse_sinfo_gres_counts(text) == {"gpu": {"h100": 4}, "cpu": {}}


def test_parse_sinfo_gres_counts_mixed_untyped_and_bracketed() -> None:
    text = "a*|gpu:a100:4(S:0,1),gpu:v100:2\na|gpu:a100:8(S:0-1)\nb|gpu:2,shard:8\nc|gpu:x:y\n"
    assert parse.parse_sinfo_gres_counts(text) == {
        "a": {"a100": 8, "v100": 2},
        "b": {"": 2},
        "c": {"x": 0},
    }
    assert parse.parse_sinfo_gres("no bar line\n|gpu:1\n") == {}
