"""Pure helpers of the command line: argument parsing of compound values and output rendering.

Nothing here does I/O, so it is unit-tested without a terminal or a testbed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import PurePath
from typing import Any

__all__ = [
    "RemoteSpec",
    "format_bytes",
    "format_table",
    "parse_env",
    "parse_remote",
    "prefix_lines",
    "to_json",
    "to_jsonable",
]


@dataclasses.dataclass(frozen=True)
class RemoteSpec:
    """One side of ``dispatch copy``: ``host`` is None for a local path."""

    host: str | None
    path: str


def parse_remote(spec: str) -> RemoteSpec:
    """Split ``HOST:path`` the way scp does; anything else is a local path.

    A colon counts only before the first ``/``, so ``./a:b`` and ``/tmp/x:y`` stay local.
    An empty remote path (``host:``) means the remote home directory (``.``).
    """
    head, sep, tail = spec.partition(":")
    if not sep or not head or "/" in head:
        return RemoteSpec(None, spec)
    return RemoteSpec(head, tail or ".")


def parse_env(items: Iterable[str]) -> dict[str, str]:
    """Turn ``["K=V", ...]`` into a dict; raises ValueError naming the bad item."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env expects KEY=VALUE, got {item!r}")
        if not (key[0].isalpha() or key[0] == "_") or not all(
            c.isalnum() or c == "_" for c in key
        ):
            raise ValueError(f"--env: {key!r} is not a valid environment variable name")
        env[key] = value
    return env


def to_jsonable(value: Any) -> Any:
    """Dataclasses (as ``dataclasses.asdict``), tuples, paths and sets as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def to_json(value: Any) -> str:
    """Indented JSON of :func:`to_jsonable` (stable key order as the dataclasses declare)."""
    return json.dumps(to_jsonable(value), indent=2)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; numbers are right-aligned."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    numeric = [
        bool(cells) and all(_is_number(row[i]) for row in cells if i < len(row))
        for i in range(len(headers))
    ]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row[: len(headers)]):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *cells]:
        parts = []
        for i, width in enumerate(widths):
            cell = row[i] if i < len(row) else ""
            parts.append(cell.rjust(width) if numeric[i] else cell.ljust(width))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def prefix_lines(prefix: str, text: str) -> str:
    """Every line of ``text`` prefixed (pdsh style); empty text gives an empty string."""
    if not text:
        return ""
    return "".join(f"{prefix}{line}\n" for line in text.splitlines())


def format_bytes(n: float) -> str:
    """Human-readable byte count (1024-based, one decimal)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - loop always returns
