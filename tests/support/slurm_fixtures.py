"""Reading tests/fixtures/slurm/: captures taken with an earlier squeue format are brought
to today's columns (`parse.SQUEUE_ARGS`), the columns they lack left neutral."""

from __future__ import annotations

import pathlib

__all__ = ["FIX", "read"]

FIX = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "slurm"

#: What squeue prints in the Comment column of a job without one.
NO_COMMENT = "(null)"

# Captured with ``--format=%A|%i|%P|%u|%T|%M|%D|%R|%j`` (2026-11-26): today's columns but
# the three leading ones (restart count, wait status, reason) and the comment.
PERCENT_FORMAT = {"squeue.txt", "squeue_states_all.txt", "array_squeue.txt",
                  "array_squeue_element.txt"}

# Captured with today's ``--Format`` before it had the Comment column (2026-12-01). The
# comment is covered by squeue_comments_chain.txt (captured with it).
BEFORE_COMMENT = {"watch_squeue.txt", "watch_squeue_requeued.txt",
                  "watch_squeue_one_element.txt", "squeue_restarts.txt"}


def _from_percent(line: str) -> str:
    *head, name = line.split("|", 8)
    return f"0||None|{'|'.join(head)}|{NO_COMMENT}\x1f{name}|"


def _add_comment(line: str) -> str:
    parts = line.split("|", 11)
    if line.startswith("#") or len(parts) < 12:
        return line
    return "|".join(parts[:11]) + f"|{NO_COMMENT}\x1f" + parts[11]


def read(name: str) -> str:
    """The fixture ``name``, in today's squeue columns where it is a squeue capture."""
    text = (FIX / name).read_text(encoding="utf-8")
    if name in PERCENT_FORMAT:
        return "".join(_from_percent(ln) + "\n" for ln in text.splitlines() if ln.strip())
    if name in BEFORE_COMMENT:
        return "".join(_add_comment(ln) + "\n" for ln in text.splitlines())
    return text
