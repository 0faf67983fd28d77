"""GPU claim rendering and parsing (the shell runs on the testbed in test_solve_testbed)."""

from __future__ import annotations

import pytest

from dispatch.errors import InvalidValueError
from dispatch.placement.claims import (
    CLAIM_FAILED_EXIT,
    CLAIMED_PREFIX,
    claim_gpus_script,
    held_claims_command,
    parse_claimed,
    parse_held_claims,
)
from dispatch.placement.hardware import GpuRef

A = "GPU-43b39da1-c6e1-7025-daca-92c43ef30119"
B = "GPU-7e2f9a04-5b1c-4d3e-9f80-a1b2c3d4e5f6"


def test_script_claims_by_uuid_in_order() -> None:
    text = claim_gpus_script([GpuRef(0, A), B], 1)
    assert f"for __dispatch_uuid in {A} {B}; do" in text
    assert '[ "$__dispatch_n" -ge 1 ] && break' in text
    assert 'export CUDA_VISIBLE_DEVICES="$__dispatch_got"' in text
    assert f'echo "{CLAIMED_PREFIX}$CUDA_VISIBLE_DEVICES"' in text
    assert f"exit {CLAIM_FAILED_EXIT}" in text
    assert '"$HOME"/.dispatch/gpu-claims' in text
    assert text.endswith("\n")


@pytest.mark.parametrize(("candidates", "count", "match"), [
    ([A], 0, "count must be an int from 1 to 1"),
    ([A], 2, "count must be an int from 1 to 1"),
    ([A, B], True, "count must be"),
    ([], 1, "count must be an int from 1 to 0"),
    ([A, A], 1, "duplicate GPU uuids"),
    (["GPU-0; rm -rf ~"], 1, "not a GPU uuid: 'GPU-0; rm -rf ~'"),
    (["0"], 1, "not a GPU uuid: '0'"),
])
def test_script_rejects_bad_input(candidates: list[str], count: int, match: str) -> None:
    with pytest.raises(InvalidValueError, match=match.replace("(", r"\(")):
        claim_gpus_script(candidates, count)


def test_held_claims_parsing() -> None:
    assert parse_held_claims(f"{A}\n\n{B}\nsh: 1: noise\n") == frozenset({A, B})
    assert parse_held_claims("") == frozenset()
    assert held_claims_command().startswith("sh -c '")


def test_claimed_line_parsing() -> None:
    log = f"starting\n{CLAIMED_PREFIX}{B},{A}\n[I] Jupyter...\n"
    assert parse_claimed(log) == [B, A]
    assert parse_claimed("no claim here\n") is None
