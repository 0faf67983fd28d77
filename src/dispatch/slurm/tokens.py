"""The job comment dispatch's submit sets: ``dispatch:<token>``, the exactly-once token.

Pure. A job resubmitted in another's place (``restart_by="resubmit"``) carries the same
token and the restarts before it: ``dispatch:<token>/<n>``, so any squeue row of it
tells its whole restart count (`parse.SQUEUE_ARGS` lists the comment) without walking
the chain of jobs it came from.
"""

from __future__ import annotations

import re

__all__ = ["comment", "parse_comment"]

_COMMENT = re.compile(r"dispatch:([A-Za-z0-9_-]+)(?:/([0-9]{1,6}))?")


def comment(token: str, carried: int = 0) -> str:
    """The ``--comment`` for a job of ``token`` that ``carried`` restarts came before."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", token) or not 0 <= carried <= 999_999:
        raise ValueError(f"not a dispatch token and count: {token!r}, {carried!r}")
    return f"dispatch:{token}" + (f"/{carried}" if carried else "")


def parse_comment(text: str) -> tuple[str, int] | None:
    """``(token, restarts carried)`` for a dispatch comment, None for any other text."""
    m = _COMMENT.fullmatch(text.strip())
    if m is None:
        return None
    return m.group(1), int(m.group(2) or 0)
