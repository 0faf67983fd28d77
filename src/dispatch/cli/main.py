"""The ``dispatch`` command: quick looks at hosts and SLURM clusters from a terminal.

Every subcommand is a thin layer over the blocking API (``dispatch.run``,
``dispatch.queue``, ...): `dispatch.cli.parser` parses the arguments, a handler in
`dispatch.cli.commands` makes one or a few library calls and renders the result as an
aligned table (default) or as JSON (``--json``). This module is the entry point: logging,
``--ssh-config``, and turning errors and Ctrl-C into one line and an exit status.

Exit codes: ``run`` exits with the remote command's status (124 on timeout); ``wait`` and
``submit --wait`` exit 0 only when the job COMPLETED; errors print one line
``dispatch: error: ...`` (with ``--json`` also ``{"error": ..., "exit_code": N}`` on
stdout) and exit 1 (2 for usage errors, 124 for timeouts, 130 on Ctrl-C). ``--debug``
shows tracebacks and DEBUG logging.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .console import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
    install_handler,
    one_line,
    report_error,
    show_run,
    show_run_result,
)

TYPE_CHECKING = False  # not typing's: a served CLI call skips importing typing

__all__ = ["main"]

if TYPE_CHECKING:
    import argparse


def _setup_logging(args: argparse.Namespace) -> None:
    import logging  # not at the top: a call served by the agent never needs it

    level = logging.WARNING
    if args.verbose == 1:
        level = logging.INFO
    if args.verbose >= 2 or args.debug:
        level = logging.DEBUG
    # With -v or --debug every library line is shown as it happens; otherwise a command
    # may hold a warning back and fold it into its own error line.
    install_handler(level, may_hold=level == logging.WARNING)


def _describe(exc: BaseException) -> str:
    """One line for an exception: dispatch's own messages as they are, others with the type."""
    from ..errors import DispatchError

    text = one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return f"timed out ({text})" if str(exc) else "timed out"
    if isinstance(exc, DispatchError | ValueError | OSError):
        return text
    return f"{type(exc).__name__}: {text} (run with --debug for a traceback)"


def _agent_run(argv: Sequence[str]) -> int | None:
    """``dispatch run HOST -- CMD...`` served by a running agent before argparse, the
    command table or the API are imported (tens of milliseconds instead of hundreds);
    None when the agent does not serve it and the normal path should."""
    if len(argv) < 4 or argv[0] != "run" or argv[2] != "--" or argv[1].startswith("-"):
        return None
    from ..agent import client

    host = argv[1]
    try:
        result = client.call("run", (" ".join(argv[3:]), host), {"timeout": None}, plain=True)
    except KeyboardInterrupt:
        return report_error("interrupted", EXIT_INTERRUPTED, as_json=False)
    if isinstance(result, client.Local):
        return None
    if isinstance(result, tuple):  # the plain form (a RunResult when the agent was lost)
        return show_run(*result, host=host, timeout=None)
    return show_run_result(result, host, None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dispatch`` console script; returns the exit status."""
    words = sys.argv[1:] if argv is None else list(argv)
    served = _agent_run(words)
    if served is not None:
        return served
    from .parser import parse_args  # after the agent fast path: argparse costs ~15 ms

    args = parse_args(words)
    _setup_logging(args)
    as_json: bool = args.json
    if args.ssh_config:
        if not os.path.isfile(args.ssh_config):
            message = f"--ssh-config: no such file: {args.ssh_config}"
            return report_error(message, EXIT_USAGE, as_json=as_json)
        os.environ["DISPATCH_SSH_CONFIG"] = os.path.abspath(args.ssh_config)
    try:
        from .commands import HANDLERS

        return HANDLERS[args.handler](args)
    except CliError as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        return report_error(str(exc), exc.code, as_json=as_json, fields=exc.fields)
    except KeyboardInterrupt:
        return report_error("interrupted", EXIT_INTERRUPTED, as_json=as_json)
    except BrokenPipeError:
        # The reader went away (e.g. `dispatch queue | head`): not an error worth a line.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        return report_error(_describe(exc), EXIT_ERROR, as_json=as_json)


if __name__ == "__main__":
    sys.exit(main())
