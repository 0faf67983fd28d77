"""Malformed scheduler output is skipped and logged, line by line, never raised.

Complements tests/unit/test_slurm_parse.py (whole-text truncation and random text): here
random lines of real captures (tests/fixtures/slurm/) are corrupted - cut short, id column
garbled, columns dropped, CRLF endings, NUL and binary junk - and the property is that
every intact line still parses exactly as it would alone, and every line that cannot be
parsed leaves a log record naming it.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch.slurm import parse

from ..support import slurm_fixtures

FIX = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "slurm"

# (fixture, parser, columns): one record per line, '|'-delimited
LINE_FORMATS: list[tuple[str, Callable[[str], list[Any]], int]] = [
    ("watch_squeue.txt", parse.parse_squeue, 12),
    ("watch_squeue_requeued.txt", parse.parse_squeue, 12),
    ("squeue_comments_chain.txt", parse.parse_squeue, 12),
    ("sacct.txt", parse.parse_sacct, 8),
]

CORRUPTIONS = ["cut", "bad-id", "drop-column", "junk"]

SETTINGS = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _lines(name: str) -> list[str]:
    return [ln for ln in slurm_fixtures.read(name).splitlines() if ln.strip()]


def _corrupt(line: str, how: str, columns: int, cut_at: int) -> str:
    """A version of ``line`` no parser may accept."""
    parts = line.split("|", columns - 1)
    if how == "cut":  # ends before the last delimiter: too few columns
        prefix = "|".join(parts[: max(1, cut_at % (columns - 1))])
        return prefix
    if how in ("bad-id", "drop-column"):
        return "|".join(["x" + parts[0].lstrip("0123456789"), *parts[1:]])
    if how == "drop-column" and line.count("|") == columns - 1:
        # (a name holding '|' would absorb the shift: undetectable, so not generated)
        i = 1 + cut_at % (columns - 2)
        return "|".join(parts[:i] + parts[i + 1 :])
    return "\x00\x1b[31m" + "\ufffd" * (cut_at % 7)  # junk without any '|'


@pytest.mark.parametrize(("name", "parser", "columns"), LINE_FORMATS)
@given(data=st.data())
@SETTINGS
def test_corrupted_lines_are_skipped_and_logged(
    caplog: pytest.LogCaptureFixture,
    name: str,
    parser: Callable[[str], list[Any]],
    columns: int,
    data: st.DataObject,
) -> None:
    lines = _lines(name)
    bad = data.draw(st.sets(st.integers(0, len(lines) - 1), max_size=len(lines)))
    plan = {i: (data.draw(st.sampled_from(CORRUPTIONS)), data.draw(st.integers(0, 99)))
            for i in bad}
    crlf = data.draw(st.booleans())
    out_lines = []
    corrupted = []
    for i, ln in enumerate(lines):
        if i in plan:
            c = _corrupt(ln, plan[i][0], columns, plan[i][1])
            corrupted.append(c)
            out_lines.append(c)
        else:
            out_lines.append(ln)
    text = ("\r\n" if crlf else "\n").join(out_lines) + "\n"
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="dispatch"):
        got = parser(text)
    intact = [ln for i, ln in enumerate(lines) if i not in plan]
    assert got == [rec for ln in intact for rec in parser(ln + "\n")]
    logged = caplog.text
    for c in corrupted:
        assert repr(c.rstrip("\r"))[1:-1][:20] in logged, f"not logged: {c!r}"


@pytest.mark.parametrize(
    ("name", "parser"),
    [
        ("scontrol_nodes.txt", parse.parse_scontrol_nodes),
        ("sinfo_partitions.txt", parse.parse_sinfo_partitions),
        ("sinfo_gpus_all.txt", parse.parse_available_gpus),
        ("sinfo_nodes.txt", parse.parse_partition_nodes),
    ],
)
@given(data=st.data())
@SETTINGS
def test_other_formats_survive_line_corruption(name: str, parser: Callable[[str], Any],
                                               data: st.DataObject) -> None:
    lines = _lines(name)
    out = []
    for ln in lines:
        how = data.draw(st.sampled_from(["keep", "cut", "extra", "swap", "junk"]))
        if how == "cut":
            out.append(ln[: data.draw(st.integers(0, len(ln)))])
        elif how == "extra":
            out.append(ln + data.draw(st.sampled_from(["|extra", " Extra=1", "|", "=", "(("])))
        elif how == "swap":
            out.append(ln.replace("|", " ").replace("=", "|"))
        elif how == "junk":
            out.append(data.draw(st.text(max_size=40)))
        else:
            out.append(ln)
    parser("\n".join(out))  # must not raise


def test_unexpected_extra_column_in_sinfo_is_not_misread() -> None:
    """A line with more columns than asked for must not yield values from wrong columns."""
    good = (FIX / "sinfo_partitions.txt").read_text(encoding="utf-8")
    shifted = "\n".join("extra|" + ln for ln in good.splitlines() if ln.strip())
    names = {p.name for p in parse.parse_sinfo_partitions(shifted)}
    assert "extra" not in names
