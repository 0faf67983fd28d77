"""Where a command's output goes: memory (optionally capped) or a caller's file (issue 16.8).

``run`` used to keep every byte in a list and join it at the end: 200 MB of stdout cost
three copies. A `MemorySink` keeps one growing buffer (and at most ``limit`` bytes of it,
noting that it dropped the rest); a `FileSink` writes straight through and keeps nothing.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, Protocol

from ..errors import InvalidValueError

__all__ = [
    "MemorySink", "FileSink", "Sink", "OutputTarget", "check_max_output", "check_target",
    "open_sink",
]

# A path (opened "wb" by run and closed after) or an open binary file (left open).
OutputTarget = str | os.PathLike[str] | IO[bytes]


class Sink(Protocol):
    """Receives one stream of a command's output, in order."""

    truncated: bool

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the stream."""

    def text(self) -> str:
        """What the result shows (UTF-8, replacement characters); "" when streamed away."""

    def close(self) -> None:
        """Finish (close a file run opened); idempotent."""


class MemorySink:
    """Keeps the stream in one buffer, at most ``limit`` bytes (the first ones) if given."""

    __slots__ = ("buf", "limit", "truncated")

    def __init__(self, limit: int | None = None) -> None:
        self.buf = bytearray()
        self.limit = limit
        self.truncated = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``, dropping what exceeds the limit."""
        if self.limit is None:
            self.buf += data
            return
        room = self.limit - len(self.buf)
        if len(data) > room:
            self.truncated = True
            data = memoryview(data)[: max(room, 0)]
        if data:
            self.buf += data

    def text(self) -> str:
        """The kept bytes decoded as UTF-8 (replacement characters for bad bytes)."""
        return self.buf.decode("utf-8", errors="replace")

    def close(self) -> None:
        """Nothing to release."""


class FileSink:
    """Writes the stream to a binary file; the result's text is empty."""

    __slots__ = ("_file", "_owned", "truncated")

    def __init__(self, file: IO[bytes], owned: bool) -> None:
        self._file = file
        self._owned = owned
        self.truncated = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` through to the file."""
        self._file.write(data)

    def text(self) -> str:
        """Always "": the output went to the file."""
        return ""

    def close(self) -> None:
        """Flush; close the file if run opened it (idempotent)."""
        if self._file.closed:
            return
        self._file.flush()
        if self._owned:
            self._file.close()


def check_max_output(max_output: object) -> None:
    """Raise InvalidValueError unless ``max_output`` is None or an int >= 0."""
    if max_output is None:
        return
    if not isinstance(max_output, int) or isinstance(max_output, bool) or max_output < 0:
        raise InvalidValueError(f"max_output must be an int >= 0 (bytes), not {max_output!r}")


def check_target(name: str, target: object) -> None:
    """Raise InvalidValueError unless ``target`` is None, a path, or a writable binary file."""
    if target is None or isinstance(target, str | os.PathLike):
        return
    if isinstance(target, io.TextIOBase) or not callable(getattr(target, "write", None)):
        raise InvalidValueError(
            f"{name} must be a path or a file opened in binary mode, not {target!r}"
        )


def open_sink(name: str, target: OutputTarget | None, max_output: int | None) -> Sink:
    """A sink for one stream: the file ``target`` if given, else memory capped at ``max_output``.

    Raises:
        InvalidValueError: the path ``target`` cannot be opened for writing.
    """
    if target is None:
        return MemorySink(max_output)
    if isinstance(target, str | os.PathLike):
        path = Path(target).expanduser()
        try:
            return FileSink(path.open("wb"), owned=True)
        except OSError as exc:
            raise InvalidValueError(f"{name}: cannot write {str(path)!r}: {exc.strerror}") from None
    return FileSink(target, owned=False)
