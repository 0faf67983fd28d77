"""The ``dispatch`` argument parser: one subcommand per handler in `dispatch.cli.commands`.

It imports nothing from the library (only argparse), so `dispatch --help` and usage errors
cost no more than the package itself. Each subcommand records its handler's *name*
(``args.handler``); the entry point looks it up after parsing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import logs, when
from .argtypes import count, job_id, seconds
from .console import EXIT_USAGE, PROG, error_json

__all__ = ["build_parser", "parse_args", "wants_json"]


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with short usage and one ``dispatch: error: ...`` line (JSON too with --json)."""

    def __init__(self, *args: Any, json_errors: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.json_errors = json_errors

    def format_usage(self) -> str:
        """``usage: dispatch status [options] HOST JOB``: one short line, the options in --help."""
        words = [self.prog]
        if len(self._actions) > 1 or any(a.option_strings for a in self._actions):
            words.append("[options]")
        for action in self._actions:
            if action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._SubParsersAction):
                words.append("COMMAND ...")
                continue
            name = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
            if action.nargs in ("*", "?"):
                words.append(f"[{name} ...]")
            elif action.nargs == "+":
                words.append(f"{name} ...")
            else:
                words.append(name)
        return f"usage: {' '.join(words)}\n"

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument COMMAND: invalid choice:"):
            bad = message.split("invalid choice:", 1)[1].split("(choose from", 1)[0].strip()
            message = f"unknown command {bad} (see `{PROG} --help`)"
        if self.json_errors:
            sys.stdout.write(error_json(message, EXIT_USAGE) + "\n")
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}\n")


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options accepted both before and after the subcommand."""
    default: Any = argparse.SUPPRESS if suppress else None
    flag_default: Any = argparse.SUPPRESS if suppress else False
    parser.add_argument(
        "--json", action="store_true", default=flag_default,
        help="machine-readable output (JSON objects; errors too, on stdout)",
    )  # fmt: skip
    parser.add_argument(
        "--ssh-config", metavar="PATH", default=default,
        help="ssh config file to use (sets DISPATCH_SSH_CONFIG; default ~/.ssh/config)",
    )  # fmt: skip
    parser.add_argument(
        "--debug", action="store_true", default=flag_default,
        help="show tracebacks and DEBUG logging",
    )  # fmt: skip
    parser.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS if suppress else 0,
        help="more logging (-v: INFO, -vv: DEBUG)",
    )  # fmt: skip


class _VersionAction(argparse.Action):
    """``--version``: reads ``dispatch.__version__`` only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from .. import __version__

        parser.exit(0, f"{PROG} {__version__}\n")


def build_parser(*, json_errors: bool = False) -> argparse.ArgumentParser:
    """The ``dispatch`` argument parser (one subparser per command)."""
    parser = _Parser(
        prog=PROG,
        description="Run commands on SSH hosts and SLURM clusters (a front end to the "
        "dispatch library).",
        epilog="Use `dispatch COMMAND --help` for a command's options.",
        json_errors=json_errors,
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    _global_options(parser, suppress=False)
    common = _Parser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, help: str) -> _Parser:
        p: _Parser = sub.add_parser(
            name, help=help, description=help, parents=[common], json_errors=json_errors
        )
        p.set_defaults(handler=name)
        return p

    def timeout_opt(p: argparse.ArgumentParser, what: str = "SSH timeout") -> None:
        p.add_argument("--timeout", type=seconds, metavar="S", help=f"{what} in seconds")

    add("hosts", "list the host aliases of the ssh config")

    p = add("run", "run a command on a host; exits with its exit status")
    p.add_argument("host", metavar="HOST")
    p.add_argument(
        "command", nargs="*", default=[], metavar="CMD", help="the command (after `--`)"
    )  # a default keeps argparse from calling CMD required when HOST is missing
    timeout_opt(p, "command timeout (the remote process is killed; exit 124)")

    p = add("run-many", "run a command on many hosts concurrently")
    p.add_argument("hosts", nargs="+", metavar="HOST", help="aliases or patterns like 'fleet*'")
    timeout_opt(p, "per-host command timeout")

    p = add("copy", "copy a file or directory to or from a host (HOST:path)")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    timeout_opt(p, "transfer timeout")

    p = add("queue", "list jobs in the SLURM queue")
    p.add_argument("host", metavar="HOST")
    p.add_argument("--user", "-u", metavar="U", help="only this user's jobs")
    timeout_opt(p)

    for name, text in (
        ("status", "show the state of a SLURM job (squeue, then sacct)"),
        ("cancel", "cancel a SLURM job"),
    ):
        p = add(name, text)
        p.add_argument("host", metavar="HOST")
        p.add_argument("job", type=job_id, metavar="JOB")
        timeout_opt(p)

    p = add("wait", "wait for a SLURM job to finish; exit 0 if it COMPLETED")
    p.add_argument("host", metavar="HOST")
    p.add_argument("job", type=job_id, metavar="JOB")
    _wait_options(p)

    p = add("partitions", "list SLURM partitions: state, nodes and CPUs")
    p.add_argument("host", metavar="HOST")
    timeout_opt(p)

    p = add("nodes", "show SLURM nodes: state, CPUs, memory and GRES in use")
    p.add_argument("host", metavar="HOST")
    p.add_argument("--partition", "-p", metavar="P", help="only nodes of this partition")
    timeout_opt(p)

    p = add("gpus", "list nodes of a partition with free GPUs")
    p.add_argument("host", metavar="HOST")
    p.add_argument("partition", metavar="PARTITION")
    p.add_argument("--type", metavar="T", help="GPU type (GRES type, e.g. h100)")
    timeout_opt(p)

    when.add_arguments(add("when", "where and when would a SLURM job start (or a queued one)"))
    logs.add_arguments(add("logs", "print a SLURM job's output file (-f: follow it to the end)"))

    p = add("submit", "submit a SLURM job (optionally with this repo's code packed)")
    _submit_options(p)

    p = add("agent", "start, stop or show the per-user agent that shares connections")
    p.add_argument("action", choices=("start", "stop", "status"), metavar="ACTION",
                   help="start, stop or status")
    p.add_argument("--idle-timeout", type=seconds, metavar="S",
                   help="start: exit after S seconds without clients (default 1800)")
    p.add_argument("--keepalive", type=seconds, metavar="S",
                   help="start: seconds between SSH keepalives (default 30)")

    p = add("solve", "pick a host for a hardware request from a dispatch config")
    p.add_argument("config", metavar="CONFIG", help="dispatch config YAML")
    _hardware_options(p)
    p.add_argument(
        "--check-availability", action="store_true", help="ask hosts which chips are free now"
    )
    timeout_opt(p, "availability-check timeout (default 30)")

    p = add("repl", "start a remote Jupyter session and tunnel it to a local port")
    p.add_argument("config", metavar="CONFIG", help="dispatch config YAML")
    _hardware_options(p)
    p.add_argument("--name", default="repl", help="session name (default: repl)")
    p.add_argument("--project", default="dispatch", help="project name (work dir component)")
    p.add_argument("--group", default="default", help="group name (work dir component)")
    p.add_argument("--port", type=_port, default=8888, help="local port (default: 8888)")
    p.add_argument("--mem", help="memory for a SLURM session (e.g. 32G)")
    p.add_argument("--dirty", action="store_true", help="ship uncommitted changes too")
    p.add_argument("--repo", metavar="PATH", help="repo to ship (default: cwd)")
    p.add_argument("--sync", action="store_true", help="upload local edits while it runs")
    p.add_argument("--time", "-t", help="SLURM time limit of the session job")
    p.add_argument("--jupyter-command", metavar="CMD", help="command that starts Jupyter")
    p.add_argument(
        "--detach", action="store_true",
        help="leave the session and its tunnel running and exit (default: hold until Ctrl-C)",
    )  # fmt: skip
    p.add_argument(
        "--no-check-availability", dest="check_availability", action="store_false",
        help="do not ask hosts which chips are free",
    )  # fmt: skip
    return parser


def _wait_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--poll", type=seconds, default=10.0, metavar="S",
        help="seconds between queue checks (default: 10)",
    )  # fmt: skip
    p.add_argument(
        "--timeout", dest="wait_timeout", type=seconds, metavar="S",
        help="give up after S seconds (exit 124); default: wait forever",
    )  # fmt: skip


def _hardware_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chip", default="h100", help="chip name, e.g. h100, a100-sxm4-80gb, cpu")
    p.add_argument(
        "--chips", type=count, default=1, help="number of chips (0: CPU only; default 1)"
    )
    p.add_argument("--prefer", action="append", metavar="CLUSTER", help="preferred cluster")
    p.add_argument("--forbid", action="append", metavar="CLUSTER", help="forbidden cluster")


def _submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("host", metavar="HOST")
    p.add_argument("--command", "-c", required=True, help="the job's shell command")
    p.add_argument("--name", "-J", default="dispatch", help="job name (default: dispatch)")
    p.add_argument("--partition", "-p")
    p.add_argument("--nodes", "-N", type=count, default=1, help="nodes (default: 1)")
    p.add_argument("--ntasks", "-n", type=count, default=1, help="tasks (default: 1)")
    p.add_argument("--gpus", "-G", type=count, help="GPUs per node (--gres=gpu[:type]:N)")
    p.add_argument("--gpu-type", help="GPU GRES type, e.g. h100")
    p.add_argument("--time", "-t", help="time limit, e.g. 10:00 or 1-00:00:00")
    p.add_argument("--mem", help="memory per node, e.g. 8G")
    p.add_argument("--output", "-o", help="stdout file (SLURM patterns like %%j allowed)")
    p.add_argument("--workdir", "-D", help="working directory of the job")
    p.add_argument(
        "--env", "-e", action="append", metavar="K=V", help="environment variable (repeatable)"
    )
    p.add_argument("--dependency", "-d", help="e.g. afterok:123")
    p.add_argument("--account", "-A")
    p.add_argument("--qos", "-q")
    p.add_argument("--share-dir", help="shared directory for the job's scripts")
    p.add_argument("--sbcast", action="store_true",
                   help="carry the bootstrap in the script and sbcast it to every node "
                        "(multi-node jobs without a shared directory)")
    p.add_argument("--packed", action="store_true", help="pack a git repo's code into the job")
    p.add_argument("--repo", metavar="PATH", help="repo to pack (default: cwd); needs --packed")
    p.add_argument(
        "--dirty", action="store_true", help="pack uncommitted changes too; needs --packed"
    )
    p.add_argument("--wait", action="store_true", help="wait for the job; exit 0 if it COMPLETED")
    p.add_argument("--timeout", type=seconds, metavar="S", help="SSH timeout in seconds")
    p.add_argument(
        "--poll", type=seconds, default=10.0, metavar="S",
        help="with --wait: seconds between queue checks (default: 10)",
    )  # fmt: skip
    p.add_argument(
        "--wait-timeout", type=seconds, metavar="S",
        help="with --wait: give up after S seconds (exit 124)",
    )  # fmt: skip


def _split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Split at the first ``--``: options and arguments before it, the command after it."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, None


def wants_json(argv: Sequence[str]) -> bool:
    """``--json`` among the options (before any ``--``): errors are then JSON too."""
    return "--json" in _split_command(list(argv))[0]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a ``dispatch`` command line (``argv`` without the program name)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    before, after = _split_command(raw)
    parser = build_parser(json_errors=wants_json(raw))
    args = parser.parse_args(before)
    if args.subcommand in ("run", "run-many"):
        if args.subcommand == "run-many":
            if after is None:
                parser.error("run-many: put the command after `--` (run-many H1 H2 -- CMD)")
            args.command = after
        elif after is not None:
            args.command = [*args.command, *after]
    elif after is not None:
        parser.error(f"{args.subcommand}: unexpected arguments after `--`: {' '.join(after)}")
    return args
