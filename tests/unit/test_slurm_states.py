"""State codes and classes: squeue codes, long names and sacct decorations."""

from __future__ import annotations

import pytest

from dispatch.slurm import states
from dispatch.slurm.models import JobInfo, JobStatus

ALL_CODES = {
    "BF": "BOOT_FAIL",
    "CA": "CANCELLED",
    "CD": "COMPLETED",
    "CF": "CONFIGURING",
    "CG": "COMPLETING",
    "DL": "DEADLINE",
    "F": "FAILED",
    "NF": "NODE_FAIL",
    "OOM": "OUT_OF_MEMORY",
    "PD": "PENDING",
    "PR": "PREEMPTED",
    "R": "RUNNING",
    "RD": "RESV_DEL_HOLD",
    "RF": "REQUEUE_FED",
    "RH": "REQUEUE_HOLD",
    "RQ": "REQUEUED",
    "RS": "RESIZING",
    "RV": "REVOKED",
    "SI": "SIGNALING",
    "SE": "SPECIAL_EXIT",
    "SO": "STAGE_OUT",
    "ST": "STOPPED",
    "S": "SUSPENDED",
    "TO": "TIMEOUT",
}


@pytest.mark.parametrize(("code", "name"), sorted(ALL_CODES.items()))
def test_every_squeue_code_maps_to_its_long_name(code: str, name: str) -> None:
    assert states.normalize_state(code) == name
    assert states.normalize_state(code.lower()) == name
    assert states.normalize_state(name) == name
    # Every known state falls in exactly one class.
    classes = [states.is_pending(code), states.is_active(code), states.is_terminal(code)]
    assert classes.count(True) == 1, (code, classes)


def test_code_table_is_complete() -> None:
    assert states.STATE_CODES == ALL_CODES
    assert set(ALL_CODES.values()) == states.KNOWN_STATES


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("CANCELLED by 0", "CANCELLED"),
        ("CANCELLED by 1001", "CANCELLED"),
        ("CANCELLED+", "CANCELLED"),
        ("  OUT_OF_MEMORY ", "OUT_OF_MEMORY"),
        ("NODE_FAIL", "NODE_FAIL"),
        ("TIMEOUT", "TIMEOUT"),
        ("PREEMPTED", "PREEMPTED"),
        ("running", "RUNNING"),
        ("", ""),
        ("WEIRD_NEW_STATE", "WEIRD_NEW_STATE"),
    ],
)
def test_normalize_sacct_variants(raw: str, normal: str) -> None:
    assert states.normalize_state(raw) == normal


@pytest.mark.parametrize(
    "state",
    ["CANCELLED by 0", "OUT_OF_MEMORY", "NODE_FAIL", "TIMEOUT", "PREEMPTED", "BOOT_FAIL",
     "DEADLINE", "REVOKED", "FAILED", "COMPLETED", "CD", "F", "TO", "OOM"],
)
def test_terminal_states(state: str) -> None:
    assert states.is_terminal(state)
    assert not states.is_pending(state)
    assert not states.is_running(state)


@pytest.mark.parametrize("state", ["PENDING", "PD", "REQUEUED", "RH", "RESV_DEL_HOLD", "SE"])
def test_pending_states(state: str) -> None:
    assert states.is_pending(state)
    assert not states.is_terminal(state)


@pytest.mark.parametrize("state", ["RUNNING", "R", "CG", "COMPLETING", "CF", "SIGNALING", "SO"])
def test_running_states(state: str) -> None:
    assert states.is_running(state)
    assert states.is_active(state)
    assert not states.is_terminal(state)


def test_suspended_is_active_not_running() -> None:
    for state in ("SUSPENDED", "S", "STOPPED", "ST"):
        assert states.is_active(state)
        assert not states.is_running(state)
        assert not states.is_terminal(state)


def test_unknown_state_is_in_no_class() -> None:
    for fn in (states.is_pending, states.is_running, states.is_active, states.is_terminal):
        assert not fn("SOMETHING_NEW")


def test_success_only_for_completed() -> None:
    assert states.is_success("COMPLETED")
    assert states.is_success("CD")
    for s in ("FAILED", "CANCELLED by 0", "TIMEOUT", "RUNNING"):
        assert not states.is_success(s)


def _status(state: str) -> JobStatus:
    return JobStatus(1, "p", "n", "u", state, "0:00", 1, "node1")


def _info(state: str) -> JobInfo:
    return JobInfo("1", "n", "p", state, "0:0", "00:00:01", "", "node1")


def test_model_helpers() -> None:
    assert _status("PENDING").is_pending and not _status("PENDING").is_finished
    assert _status("RUNNING").is_running and not _status("RUNNING").is_pending
    assert _status("COMPLETING").is_running
    assert _status("CANCELLED").is_finished
    assert _info("CANCELLED by 0").is_finished and not _info("CANCELLED by 0").is_success
    assert _info("COMPLETED").is_success and _info("COMPLETED").is_finished
    assert not _info("RUNNING").is_finished
