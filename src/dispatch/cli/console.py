"""What the command line writes: stdout results, one-line errors (JSON too), held log lines.

Shared by the entry point and the command handlers; it imports nothing from the library,
so `dispatch --help` does not pay for it, and neither `logging` nor `json` until they are
used, so a call served by the agent does not either (~5 ms of a ~40 ms process).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

TYPE_CHECKING = False  # not typing's: a served CLI call skips importing typing

if TYPE_CHECKING:
    import logging
    from typing import TextIO

    from .. import RunResult

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "PROG",
    "CliError",
    "ConsoleHandler",
    "HeldLog",
    "check_ssh",
    "emit",
    "error_json",
    "exit_status",
    "held_log",
    "install_handler",
    "one_line",
    "out",
    "report_error",
    "show_run",
    "show_run_result",
]

PROG = "dispatch"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure reported as one ``dispatch: error: ...`` line (and a JSON object with --json).

    ``fields`` are added to the JSON object (e.g. the ``job_id`` a timed-out wait was for).
    """

    def __init__(
        self, message: str, code: int = EXIT_ERROR, *, fields: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.fields: dict[str, object] = dict(fields or {})


def out(text: str) -> None:
    """Write ``text`` to stdout as whole lines (nothing for an empty string)."""
    if text:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def emit(as_json: bool, value: object, human: Callable[[], str]) -> None:
    """Print ``value`` as JSON under ``--json``, else the human rendering."""
    from .render import to_json

    out(to_json(value) if as_json else human())


def exit_status(returncode: int) -> int:
    """The exit status for a remote status: itself, 124 for a timeout (-1), else 1."""
    if returncode == -1:
        return EXIT_TIMEOUT
    return returncode if 0 <= returncode <= 255 else EXIT_ERROR


def show_run_result(result: RunResult, host: str, timeout: float | None) -> int:
    """Print a `run` result as ssh would (its output, then our notes); return the exit status."""
    return show_run(
        result.returncode, result.stdout, result.stderr, result.may_have_run,
        host=host, timeout=timeout,
    )  # fmt: skip


def show_run(
    returncode: int, stdout: str, stderr: str, may_have_run: bool, *, host: str,
    timeout: float | None,
) -> int:  # fmt: skip
    """`show_run_result` from the result's fields (the agent's plain form of a `RunResult`)."""
    sys.stdout.write(stdout)
    sys.stdout.flush()
    sys.stderr.write(stderr)
    if may_have_run:
        sys.stderr.write(
            f"{PROG}: warning: the connection to {host} broke while the command ran; "
            "it may have run (it was not re-run)\n"
        )
    if returncode == -1 and not stderr:
        sys.stderr.write(f"{PROG}: error: timed out after {timeout} s\n")
    return exit_status(returncode)


def check_ssh(what: str, host: str, result: RunResult) -> None:
    """Raise a one-line `CliError` when an SSH/SLURM call's `RunResult` failed."""
    if result.returncode != 0:
        lines = [ln.strip() for ln in (result.stderr + "\n" + result.stdout).splitlines()]
        detail = next((ln for ln in lines if ln), f"exit status {result.returncode}")
        raise CliError(f"{what} on {host} failed: {detail}")


def one_line(text: str) -> str:
    """Join a multi-line message into one line: ``a:`` + ``b`` -> ``a: b``, else ``a; b``."""
    result = ""
    for line in (part.strip() for part in text.splitlines()):
        if not line:
            continue
        line = " ".join(line.split())
        if not result:
            result = line
        else:
            result = f"{result} {line}" if result.endswith(":") else f"{result}; {line}"
    return result


def error_json(message: str, code: int, fields: dict[str, object] | None = None) -> str:
    """The ``--json`` form of an error: ``{"error": ..., "exit_code": N, ...fields}``."""
    import json

    return json.dumps({"error": message, "exit_code": code, **(fields or {})}, indent=2)


def report_error(
    message: str, code: int, *, as_json: bool, fields: dict[str, object] | None = None
) -> int:
    """Print the one-line error on stderr (and its JSON object on stdout); return ``code``."""
    if as_json:
        with contextlib.suppress(BrokenPipeError):
            out(error_json(message, code, fields))
            sys.stdout.flush()
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return code


class HeldLog:
    """Log records kept back while a library call runs (see :func:`held_log`)."""

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []

    def messages(self) -> list[str]:
        """The held records' messages, one line each."""
        return [one_line(r.getMessage()) for r in self.records]


if TYPE_CHECKING:

    class ConsoleHandler(logging.StreamHandler[TextIO]):
        """``dispatch: LEVEL logger: message`` on stderr; can hold records back."""

        held: HeldLog | None
        may_hold: bool

        def __init__(self) -> None: ...

else:

    def __getattr__(name: str) -> object:
        if name == "ConsoleHandler":  # defined on first use: it needs `logging`
            return _console_handler_class()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_handler_class: type[ConsoleHandler] | None = None


def _console_handler_class() -> type[ConsoleHandler]:
    """The `ConsoleHandler` class, made once, when logging is first set up."""
    global _handler_class
    if _handler_class is not None:
        return _handler_class
    import logging

    class _ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
        """``dispatch: LEVEL logger: message`` on stderr; can hold records back."""

        def __init__(self) -> None:
            super().__init__(sys.stderr)
            self.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s %(name)s: %(message)s"))
            self.held: HeldLog | None = None
            self.may_hold = True

        def emit(self, record: logging.LogRecord) -> None:
            held = self.held
            if held is not None and record.levelno < logging.ERROR:
                held.records.append(record)
                return
            super().emit(record)

    _ConsoleHandler.__name__ = _ConsoleHandler.__qualname__ = "ConsoleHandler"
    made: type[ConsoleHandler] = _ConsoleHandler  # type: ignore[assignment]  # it is one
    _handler_class = made
    return made


_handler: ConsoleHandler | None = None


def install_handler(level: int, *, may_hold: bool) -> ConsoleHandler:
    """Attach the console handler to the ``dispatch`` logger at ``level`` (once per process)."""
    import logging

    global _handler
    logger = logging.getLogger("dispatch")
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = _console_handler_class()()
    _handler.may_hold = may_hold
    logger.addHandler(_handler)
    logger.setLevel(level)
    return _handler


@contextlib.contextmanager
def held_log() -> Iterator[HeldLog]:
    """Hold the library's warnings back while a call runs.

    A command that turns a failed call into its own error line raises `CliError` inside the
    block and the held lines (which said the same thing) are dropped; otherwise they are
    printed when the block ends. With ``--debug`` or ``-v`` nothing is held.
    """
    held = HeldLog()
    handler = _handler
    if handler is None or not handler.may_hold or handler.held is not None:
        yield held
        return
    handler.held = held
    dropped = False
    try:
        yield held
    except CliError:
        dropped = True
        raise
    finally:
        handler.held = None
        if not dropped:
            for record in held.records:
                handler.handle(record)
