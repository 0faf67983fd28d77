"""Checkpoint/restart fields of `SlurmJob`: their validation and what they render.

``signal_before_end`` / ``checkpoint_signal`` / ``max_restarts`` become ``--signal``,
``--requeue`` and ``--open-mode=append`` directives and wrap the command in the
``templates/restart.sh`` block: the bootstrap traps the signal (and SIGTERM, which is what
Slurm 22.05 sends a preempted step), lets the command checkpoint and exit, then requeues
the job (or resubmits it where the site will not requeue). Pure: no I/O.
"""

from __future__ import annotations

import re
import shlex
from importlib import resources

from ..errors import InvalidValueError

__all__ = [
    "CHECKPOINT_SIGNALS",
    "MAX_SIGNAL_SECONDS",
    "check_restart_fields",
    "restart_directives",
    "restart_command",
]

#: Signals `SlurmJob.checkpoint_signal` may name (sbatch ``--signal`` takes these names).
CHECKPOINT_SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP")
#: sbatch's ``--signal=SIG@N`` takes N up to 65535 seconds.
MAX_SIGNAL_SECONDS = 65535

_SLOT = re.compile(r"\{\{([a-z_]+)\}\}")


def _bad(fieldname: str, value: object, why: str) -> InvalidValueError:
    return InvalidValueError(f"SlurmJob.{fieldname}: {value!r} {why}")


def check_restart_fields(
    signal_before_end: int | None, checkpoint_signal: str, max_restarts: int
) -> None:
    """Validate the three fields together.

    Args:
        signal_before_end: Seconds before the time limit to signal (None: no signal).
        checkpoint_signal: One of `CHECKPOINT_SIGNALS`.
        max_restarts: Restarts allowed (>= 0; > 0 needs ``signal_before_end``).

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


def restart_directives(
    signal_before_end: int | None, checkpoint_signal: str, max_restarts: int
) -> list[str]:
    """The ``#SBATCH`` options (without the prefix) the fields ask for.

    Args:
        signal_before_end: As for `check_restart_fields`.
        checkpoint_signal: As for `check_restart_fields`.
        max_restarts: As for `check_restart_fields`.

    Returns:
        ``--signal=SIG@N`` when a signal is asked for; ``--requeue`` and
        ``--open-mode=append`` (each run appends to the same output file, so `follow` and
        the user see every run) when restarts are allowed.
    """
    d: list[str] = []
    if signal_before_end is not None:
        d.append(f"--signal={checkpoint_signal}@{signal_before_end}")
    if max_restarts > 0:
        d.extend(["--requeue", "--open-mode=append"])
    return d


def restart_command(command: str, checkpoint_signal: str, max_restarts: int) -> str:
    """The bootstrap's command section with checkpoint/restart (``templates/restart.sh``).

    Args:
        command: The user's command (run in a child ``bash -c``; quoted here).
        checkpoint_signal: The signal to trap besides SIGTERM.
        max_restarts: Restarts allowed.

    Returns:
        Shell text for the bootstrap's ``{{command}}`` slot.
    """
    values = {
        "signal": checkpoint_signal,
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
