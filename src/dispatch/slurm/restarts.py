"""Checkpoint/restart fields of `SlurmJob`: their validation and what they render.

``signal_before_end`` / ``checkpoint_signal`` / ``max_restarts`` / ``restart_by`` become
``--signal``, ``--requeue`` (or ``--no-requeue``) and ``--open-mode=append`` directives and
wrap the command in the ``templates/restart.sh`` block: the bootstrap traps the signal (and
SIGTERM, which is what Slurm 22.05 sends a preempted step), lets the command checkpoint and
exit, then requeues the job (``restart_by="requeue"``; it resubmits where Slurm refuses) or
submits the same wrapper again with the same exactly-once token (``"resubmit"``, for sites
that cancel preempted and timed-out jobs). Pure: no I/O.
"""

from __future__ import annotations

import re
import shlex
from importlib import resources

from ..errors import InvalidValueError

__all__ = [
    "CHECKPOINT_SIGNALS",
    "MAX_SIGNAL_SECONDS",
    "RESTART_BY",
    "check_restart_fields",
    "check_resubmit_pattern",
    "frozen_pattern",
    "restart_directives",
    "restart_command",
]

#: Signals `SlurmJob.checkpoint_signal` may name (sbatch ``--signal`` takes these names).
CHECKPOINT_SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP")
#: sbatch's ``--signal=SIG@N`` takes N up to 65535 seconds.
MAX_SIGNAL_SECONDS = 65535
#: How a signalled job comes back (`SlurmJob.restart_by`): requeued by Slurm (same job id;
#: resubmitted where Slurm refuses), or resubmitted as a new job with the same token.
RESTART_BY = ("requeue", "resubmit")

_SLOT = re.compile(r"\{\{([a-z_]+)\}\}")
#: sbatch file name pattern items: ``%%`` or ``%`` + optional zero-pad width + a letter.
_PATTERN_ITEM = re.compile(r"%(?:%|(\d*)([A-Za-z]))")
#: Items naming the job id, which a resubmitted job does not share: frozen to this run's.
_FROZEN = {"j": '"$SLURM_JOB_ID"', "A": '"${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}"'}
#: Items that may differ on the resubmitted job's node or step: refused with "resubmit".
_UNFREEZABLE = "JNn"


def _bad(fieldname: str, value: object, why: str) -> InvalidValueError:
    return InvalidValueError(f"SlurmJob.{fieldname}: {value!r} {why}")


def check_restart_fields(
    signal_before_end: int | None, checkpoint_signal: str, max_restarts: int,
    restart_by: str = "requeue",
) -> None:
    """Validate the checkpoint/restart fields together.

    Args:
        signal_before_end: Seconds before the time limit to signal (None: no signal).
        checkpoint_signal: One of `CHECKPOINT_SIGNALS`.
        max_restarts: Restarts allowed (>= 0; > 0 needs ``signal_before_end``).
        restart_by: One of `RESTART_BY`.

    Raises:
        InvalidValueError: Naming the bad field and value.
    """
    sig = signal_before_end
    if sig is not None and (
        isinstance(sig, bool) or not isinstance(sig, int) or not 1 <= sig <= MAX_SIGNAL_SECONDS
    ):
        raise _bad("signal_before_end", sig,
                   f"must be None or whole seconds in 1..{MAX_SIGNAL_SECONDS}")
    if checkpoint_signal not in CHECKPOINT_SIGNALS:
        raise _bad("checkpoint_signal", checkpoint_signal,
                   f"must be one of {', '.join(CHECKPOINT_SIGNALS)}")
    n = max_restarts
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise _bad("max_restarts", n, "must be an integer >= 0")
    if n > 0 and sig is None:
        raise _bad("max_restarts", n, "needs signal_before_end (the signal starts a restart)")
    if not isinstance(restart_by, str) or restart_by not in RESTART_BY:
        raise _bad("restart_by", restart_by, f"must be one of {', '.join(RESTART_BY)}")


def check_resubmit_pattern(fieldname: str, pattern: str | None) -> None:
    """Refuse an output pattern a resubmitted job could not reopen (``%J``, ``%N``, ``%n``).

    The job id items (``%j``, ``%A``) are frozen to the first run's (`frozen_pattern`); these
    name the job step or the node, which the successor does not share.

    Args:
        fieldname: ``output`` or ``error`` (for the message).
        pattern: The sbatch file name pattern (None: sbatch's default).

    Raises:
        InvalidValueError: Naming the field, the pattern and the item.
    """
    if pattern is None or "\\" in pattern:  # with a backslash sbatch expands nothing
        return
    for m in _PATTERN_ITEM.finditer(pattern):
        if m.group(2) is not None and m.group(2) in _UNFREEZABLE:
            raise _bad(fieldname, pattern,
                       f'has %{m.group(2)}, which a job resubmitted by restart_by="resubmit" '
                       "would expand differently (use %j, %A, %a, %x or %u)")


def frozen_pattern(pattern: str) -> str:
    """A shell word giving ``pattern`` with its job id items (``%j``, ``%A``, zero-padded
    ``%5j`` too) replaced by this run's ids, so a resubmitted job (a new id) opens the same
    file; every other item (``%a``, ``%x``, ``%u``, ``%%``) stays for sbatch to expand alike.

    Args:
        pattern: An sbatch ``--output``/``--error`` file name pattern.

    Returns:
        Shell text (quoted literal parts, double-quoted expansions) for one word.
    """
    if "\\" in pattern:  # sbatch expands nothing in a name with a backslash
        return shlex.quote(pattern)
    words: list[str] = []
    literal = ""
    pos = 0
    for m in _PATTERN_ITEM.finditer(pattern):
        width, letter = m.group(1), m.group(2)
        literal += pattern[pos:m.start()]
        pos = m.end()
        if letter not in _FROZEN:
            literal += m.group(0)
            continue
        if literal:
            words.append(shlex.quote(literal))
            literal = ""
        value = _FROZEN[letter]
        if width:
            value = f"\"$(printf %0{int(width)}d {value})\""
        words.append(value)
    literal += pattern[pos:]
    if literal or not words:
        words.append(shlex.quote(literal))
    return "".join(words)


def restart_directives(
    signal_before_end: int | None, checkpoint_signal: str, max_restarts: int,
    restart_by: str = "requeue",
) -> list[str]:
    """The ``#SBATCH`` options (without the prefix) the fields ask for.

    Args:
        signal_before_end: As for `check_restart_fields`.
        checkpoint_signal: As for `check_restart_fields`.
        max_restarts: As for `check_restart_fields`.
        restart_by: As for `check_restart_fields`.

    Returns:
        ``--signal=SIG@N`` when a signal is asked for; when restarts are allowed,
        ``--requeue`` (``restart_by="requeue"``) or ``--no-requeue`` (``"resubmit"``: Slurm
        then neither requeues the job on preemption nor accepts ``scontrol requeue``), and
        ``--open-mode=append`` (each run appends to the same output file, so `follow` and
        the user see every run).
    """
    d: list[str] = []
    if signal_before_end is not None:
        d.append(f"--signal={checkpoint_signal}@{signal_before_end}")
    if max_restarts > 0:
        d.extend(["--no-requeue" if restart_by == "resubmit" else "--requeue",
                  "--open-mode=append"])
    return d


def restart_command(
    command: str, checkpoint_signal: str, max_restarts: int, restart_by: str = "requeue",
    output: str = "slurm-%j.out", error: str | None = None,
) -> str:
    """The bootstrap's command section with checkpoint/restart (``templates/restart.sh``).

    Args:
        command: The user's command (run in a child ``bash -c``; quoted here).
        checkpoint_signal: The signal to trap besides SIGTERM.
        max_restarts: Restarts allowed.
        restart_by: One of `RESTART_BY` (validated here too: it is rendered into shell).
        output: The job's ``--output`` pattern (sbatch's default when it has none), which a
            resubmitted job reopens (`frozen_pattern`).
        error: The job's ``--error`` pattern (None: stderr goes with stdout).

    Returns:
        Shell text for the bootstrap's ``{{command}}`` slot.
    """
    check_restart_fields(None, checkpoint_signal, 0, restart_by)
    values = {
        "signal": checkpoint_signal,
        "restart_by": restart_by,
        "output": frozen_pattern(output),
        "error": frozen_pattern(error) if error is not None else "''",
        "max_restarts": str(max_restarts),
        "command": shlex.quote(command),
    }
    text = (resources.files("dispatch.slurm") / "templates" / "restart.sh").read_text(
        encoding="utf-8"
    )
    missing = sorted(set(_SLOT.findall(text)) - values.keys())
    if missing:
        raise KeyError(f"template restart.sh: no value for {missing}")
    return _SLOT.sub(lambda m: values[m.group(1)], text).rstrip("\n")
