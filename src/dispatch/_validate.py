"""Checks for values that reach a remote shell or a generated script, shared by every layer.

Each raises `InvalidValueError` naming the parameter and the bad value, so a caller sees
what to fix instead of a failure from deep inside.
"""

from __future__ import annotations

import re

from .errors import InvalidValueError

__all__ = ["check_name", "check_path", "check_port", "check_seconds"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(what: str, value: object) -> str:
    """``value`` if it is a plain name (letters, digits, ``._-``; not starting with ``-.``)."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidValueError(f"{what} must match [A-Za-z0-9][A-Za-z0-9._-]*: {value!r}")
    return value


def check_path(what: str, value: object) -> None:
    """None, or a non-empty path without newline or NUL (it goes into a script)."""
    if value is None:
        return
    if not isinstance(value, str) or not value or "\n" in value or "\0" in value:
        raise InvalidValueError(f"{what} must be a non-empty path: {value!r}")


def check_port(what: str, value: object) -> int:
    """``value`` as a TCP port number."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidValueError(f"{what} must be an int in 1..65535, got {value!r}")
    return value


def check_seconds(what: str, value: object, *, optional: bool = False) -> None:
    """A positive number of seconds (None too when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidValueError(f"{what} must be a positive number of seconds, not {value!r}")
