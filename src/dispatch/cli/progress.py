"""Terminal progress for the command line: a byte progress bar and an elapsed-time spinner.

Both draw only when their stream is a terminal, so piped output stays clean.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import TextIO

from .render import format_bytes

__all__ = ["ProgressBar", "Spinner", "is_tty"]


def is_tty(stream: TextIO) -> bool:
    """True when ``stream`` is attached to a terminal."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """``label [#####.....] 45% 12.0 MiB/26.7 MiB 3.1 MiB/s``, redrawn at most 10 times a second.

    Call the instance with ``(done, total)`` byte counts (the shape of dispatch's transfer
    progress callbacks); it is safe to call from another thread.
    """

    def __init__(self, stream: TextIO, label: str, *, width: int = 30) -> None:
        self.stream = stream
        self.label = label
        self.width = width
        self.enabled = is_tty(stream)
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._last_draw < 0.1 and done < total:
                return
            self._last_draw = now
            self._draw(done, total, now)

    def _draw(self, done: int, total: int, now: float) -> None:
        frac = min(1.0, done / total) if total > 0 else 1.0
        filled = int(frac * self.width)
        rate = done / max(now - self._start, 1e-6)
        line = (
            f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {frac * 100:3.0f}% "
            f"{format_bytes(done)}/{format_bytes(total)} {format_bytes(rate)}/s"
        )
        self.stream.write(line + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line (if anything was drawn)."""
        with self._lock:
            if self.enabled and self._drawn:
                self.stream.write("\n")
                self.stream.flush()
                self._drawn = False


class Spinner:
    """A one-line ``| message (elapsed 1m 05s)`` indicator running in a thread while a call blocks.

    Use as a context manager; :meth:`update` changes the message (e.g. the job's state).
    """

    FRAMES = "|/-\\"

    def __init__(self, stream: TextIO, message: str, *, interval: float = 0.2) -> None:
        self.stream = stream
        self.message = message
        self.interval = interval
        self.enabled = is_tty(stream)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = time.monotonic()

    def update(self, message: str) -> None:
        """Replace the message shown next to the spinner."""
        self.message = message

    def __enter__(self) -> Spinner:
        if self.enabled:
            self._draw(0)
            self._thread = threading.Thread(target=self._run, name="dispatch-spinner", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _draw(self, i: int) -> None:
        elapsed = int(time.monotonic() - self._start)
        mins, secs = divmod(elapsed, 60)
        frame = self.FRAMES[i % len(self.FRAMES)]
        self.stream.write(f"\r{frame} {self.message} (elapsed {mins}m {secs:02d}s)\x1b[K")
        self.stream.flush()

    def _run(self) -> None:
        i = 1
        while not self._stop.wait(self.interval):
            self._draw(i)
            i += 1
