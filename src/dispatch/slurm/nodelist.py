"""SLURM hostlist expressions: ``gpu[01-03,07]-ib``, ``a[1-2]b[3-4]``, ``node1,node[3-5]``."""

from __future__ import annotations

import logging
import re

__all__ = ["expand_nodelist", "first_node_from_nodelist", "split_top_level"]

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
# Bigger expansions are almost certainly garbage; refuse rather than allocate millions.
_MAX_EXPANSION = 1_000_000


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split ``text`` at ``sep`` outside ``[...]`` and ``(...)``."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth = max(0, depth - 1)
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _expand_ranges(body: str) -> list[str]:
    """``01-03,07`` -> ``['01', '02', '03', '07']`` (zero padding of the low bound kept)."""
    out: list[str] = []
    for part in body.split(","):
        m = _RANGE.match(part.strip())
        if m is None:
            raise ValueError(f"bad range {part!r}")
        lo_s, hi_s = m.group(1), m.group(2)
        if hi_s is None:
            out.append(lo_s)
            continue
        lo, hi = int(lo_s), int(hi_s)
        if hi < lo or hi - lo > _MAX_EXPANSION:
            raise ValueError(f"bad range {part!r}")
        width = len(lo_s)
        out.extend(str(n).zfill(width) for n in range(lo, hi + 1))
    return out


def _expand_one(expr: str) -> list[str]:
    """Expand one host expression (no top-level commas): cartesian product of brackets."""
    results = [""]
    pos = 0
    while pos < len(expr):
        open_i = expr.find("[", pos)
        if open_i < 0:
            tail = expr[pos:]
            if "]" in tail:
                raise ValueError(f"unbalanced ']' in {expr!r}")
            results = [r + tail for r in results]
            break
        close_i = expr.find("]", open_i)
        if close_i < 0:
            raise ValueError(f"unbalanced '[' in {expr!r}")
        prefix = expr[pos:open_i]
        if "]" in prefix:
            raise ValueError(f"unbalanced ']' in {expr!r}")
        values = _expand_ranges(expr[open_i + 1 : close_i])
        if len(results) * len(values) > _MAX_EXPANSION:
            raise ValueError(f"expression too large: {expr!r}")
        results = [r + prefix + v for r in results for v in values]
        pos = close_i + 1
    return results


def expand_nodelist(expr: str) -> list[str]:
    """Expand a SLURM hostlist expression into node names, in order.

    ``gpu[01-03,07]-ib`` -> ``gpu01-ib, gpu02-ib, gpu03-ib, gpu07-ib``;
    ``a[1-2]b[3-4]`` -> ``a1b3, a1b4, a2b3, a2b4``. Empty, ``(null)``, ``None assigned`` and
    pending reasons such as ``(Resources)`` give ``[]``. Malformed expressions give ``[]``
    (logged at debug), never an exception.
    """
    text = expr.strip()
    if not text or text.startswith("(") or text in {"None", "None assigned", "n/a", "N/A"}:
        return []
    if any(ch.isspace() for ch in text):
        log.debug("nodelist with whitespace ignored: %r", expr)
        return []
    names: list[str] = []
    try:
        for part in split_top_level(text):
            if part:
                names.extend(_expand_one(part))
    except ValueError as exc:
        log.debug("malformed nodelist %r: %s", expr, exc)
        return []
    return names


def first_node_from_nodelist(nodelist: str) -> str | None:
    """Get first hostname from a SLURM nodelist expression.

    Args:
        nodelist: A hostlist expression such as ``gpu[01-03,07]``.

    Returns:
        The first node name; None for an empty list, ``(null)``, ``None assigned`` or a
        pending reason such as ``(Resources)``.
    """
    text = nodelist.strip()
    if not text or text.startswith("("):
        return None
    first = split_top_level(text)[0]
    names = expand_nodelist(first)
    return names[0] if names else None
