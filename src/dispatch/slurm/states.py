"""SLURM job state names: squeue codes, long names, sacct variants, and their classes.

squeue prints either compact codes (``%t``: ``PD``, ``R``) or long names (``%T``: ``PENDING``);
sacct prints long names with decorations (``CANCELLED by 1000``, ``CANCELLED+``).
`normalize_state` maps all of them to the long upper-case name, and the ``is_*``
helpers classify a state so that ``wait`` never mistakes a live job for a finished one.
"""

from __future__ import annotations

__all__ = [
    "STATE_CODES",
    "PENDING_STATES",
    "RUNNING_STATES",
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "KNOWN_STATES",
    "normalize_state",
    "is_pending",
    "is_running",
    "is_active",
    "is_terminal",
    "is_success",
]

#: Compact squeue state code (``squeue -o %t``) -> long state name (``%T``, sacct).
STATE_CODES: dict[str, str] = {
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

#: Waiting for resources or held: the job has no nodes (yet, or again after a requeue).
PENDING_STATES: frozenset[str] = frozenset(
    {
        "PENDING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
    }
)

#: The job holds nodes and its processes are (being) started or run.
RUNNING_STATES: frozenset[str] = frozenset(
    {"RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}
)

#: Holds nodes, including suspended/stopped jobs that are not currently executing.
ACTIVE_STATES: frozenset[str] = RUNNING_STATES | {"SUSPENDED", "STOPPED"}

#: Final states: the job will not run again under this id.
TERMINAL_STATES: frozenset[str] = frozenset(
    {
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
        "REVOKED",
    }
)

KNOWN_STATES: frozenset[str] = PENDING_STATES | ACTIVE_STATES | TERMINAL_STATES


def normalize_state(state: str) -> str:
    """Long upper-case state name for a squeue code, long name or sacct state.

    ``"CANCELLED by 0"`` -> ``"CANCELLED"``, ``"CANCELLED+"`` -> ``"CANCELLED"``,
    ``"pd"`` -> ``"PENDING"``, ``"OOM"`` -> ``"OUT_OF_MEMORY"``. Unknown states come back
    upper-cased and stripped (never raises).
    """
    words = state.strip().split()
    if not words:
        return ""
    word = words[0].upper().rstrip("+*")
    return STATE_CODES.get(word, word)


def is_pending(state: str) -> bool:
    """True when the job waits for resources or is held (``PENDING``, ``REQUEUED`` ...)."""
    return normalize_state(state) in PENDING_STATES


def is_running(state: str) -> bool:
    """True when the job holds nodes and runs (``RUNNING``, ``COMPLETING``, ``CONFIGURING`` ...)."""
    return normalize_state(state) in RUNNING_STATES


def is_active(state: str) -> bool:
    """True when the job holds nodes, including ``SUSPENDED``/``STOPPED``."""
    return normalize_state(state) in ACTIVE_STATES


def is_terminal(state: str) -> bool:
    """True for final states (``COMPLETED``, ``FAILED``, ``CANCELLED by 0``, ``TIMEOUT`` ...)."""
    return normalize_state(state) in TERMINAL_STATES


def is_success(state: str) -> bool:
    """True only for ``COMPLETED``."""
    return normalize_state(state) == "COMPLETED"
