"""One handler per ``dispatch`` subcommand: parsed arguments in, library calls, rendered output.

Each handler imports the blocking API names it calls (``from .. import run``) when it runs,
so a command loads only what it needs and `dispatch --help` loads none of it. Handlers
return the exit status or raise `CliError`; the entry point (`dispatch.cli.main`) turns
errors, Ctrl-C and ``--json`` into output. The SSH, config, solver and REPL commands are
here, the SLURM ones in `dispatch.cli.jobs`; `HANDLERS` maps every command to its handler.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import agent, jobs, logs, when
from .console import (
    EXIT_ERROR,
    EXIT_USAGE,
    PROG,
    CliError,
    check_ssh,
    emit,
    exit_status,
    one_line,
    out,
    show_run_result,
)
from .progress import ProgressBar, Spinner
from .render import format_table, parse_remote, prefix_lines, to_json

if TYPE_CHECKING:
    from .. import HardwareRequest, ReplResult

__all__ = ["HANDLERS"]


# --- SSH -------------------------------------------------------------------------------------


def _ssh_config_path() -> Path:
    """The file `dispatch.hosts` reads: ``$DISPATCH_SSH_CONFIG`` (set by --ssh-config), else
    ``~/.ssh/config`` (the library's rule, restated for the "no config" message)."""
    return Path(os.environ.get("DISPATCH_SSH_CONFIG") or "~/.ssh/config").expanduser()


def cmd_hosts(args: argparse.Namespace) -> int:
    from .. import hosts

    names = hosts()
    if not names:
        path = _ssh_config_path()
        if not path.is_file():
            raise CliError(
                f"no ssh config at {path}: no hosts to list "
                "(create it, set DISPATCH_SSH_CONFIG or pass --ssh-config PATH)"
            )
        sys.stderr.write(f"{PROG}: {path} defines no host aliases (only patterns, or none)\n")
    emit(args.json, names, lambda: "\n".join(names))
    return 0


def _command_text(args: argparse.Namespace) -> str:
    words: list[str] = args.command
    if not words:
        raise CliError(f"{args.subcommand}: no command given (put it after `--`)", EXIT_USAGE)
    # Like ssh: the words are joined with spaces and run by the remote login shell, so
    # `dispatch run host -- 'echo $HOME'` expands remotely and `exit 3` works as typed.
    return " ".join(words)


def cmd_run(args: argparse.Namespace) -> int:
    from ..agent import client as agent_client

    # A running agent serves it before the API is imported (no asyncssh: a fast CLI).
    text = _command_text(args)
    result = agent_client.call("run", (text, args.host), {"timeout": args.timeout})
    if isinstance(result, agent_client.Local):
        from .. import run

        result = run(text, args.host, timeout=args.timeout)
    if args.json:
        out(to_json(result))
        return exit_status(result.returncode)
    return show_run_result(result, args.host, args.timeout)


def _expand_hosts(patterns: Sequence[str]) -> list[str]:
    """Expand shell-style patterns (``fleet*``) against the ssh config's aliases; keep order."""
    known: list[str] | None = None
    found: list[str] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            if known is None:
                from .. import hosts

                known = hosts()
            matched = [h for h in known if fnmatch.fnmatchcase(h, pattern)]
            if not matched:
                raise CliError(f"no host in the ssh config matches {pattern!r}")
            found.extend(matched)
        else:
            found.append(pattern)
    return list(dict.fromkeys(found))


def cmd_run_many(args: argparse.Namespace) -> int:
    from .. import run_many

    hosts = _expand_hosts(args.hosts)
    results = run_many(_command_text(args), hosts, timeout=args.timeout)
    if args.json:
        out(to_json(results))
    else:
        width = max(len(h) for h in hosts)
        for host in hosts:
            prefix = f"{host.ljust(width)}: "
            sys.stdout.write(prefix_lines(prefix, results[host].stdout))
            sys.stderr.write(prefix_lines(prefix, results[host].stderr))
        sys.stdout.flush()
    failed = [h for h in hosts if results[h].returncode != 0]
    if failed:
        detail = ", ".join(f"{h} (exit {results[h].returncode})" for h in failed[:10])
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        sys.stderr.write(f"{PROG}: {len(failed)} of {len(hosts)} hosts failed: {detail}{more}\n")
        return EXIT_ERROR
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    from .. import copy_from, copy_to

    src, dst = parse_remote(args.src), parse_remote(args.dst)
    if src.host and dst.host:
        raise CliError("copy: both SRC and DST are remote; one side must be a local path")
    if src.host is None and dst.host is None:
        raise CliError("copy: neither SRC nor DST is remote (write the remote one as HOST:path)")
    host = src.host or dst.host or ""
    label = f"{args.src} -> {args.dst}"
    bar = ProgressBar(sys.stderr, label)
    progress = bar if bar.enabled and not args.json else None
    try:
        if src.host is not None:
            result = copy_from(src.host, src.path, dst.path, args.timeout, progress=progress)
        else:
            result = copy_to(src.path, host, dst.path, args.timeout, progress=progress)
    finally:
        bar.close()
    if args.json:
        out(to_json(result))
        return exit_status(result.returncode)
    check_ssh("copy", host, result)
    return 0


# --- config, solver, REPL ----------------------------------------------------------------------


def _hardware_request(args: argparse.Namespace) -> HardwareRequest:
    from .. import HardwareRequest

    return HardwareRequest(
        chip=args.chip, min_chips=args.chips, preferred_clusters=list(args.prefer or []),
        forbidden_clusters=list(args.forbid or []),
    )  # fmt: skip


def _config_path(path: str) -> str:
    if not os.path.exists(path):
        raise CliError(f"config file {path!r} does not exist")
    return path


def cmd_solve(args: argparse.Namespace) -> int:
    from .. import load_dispatch_config, solve_or_raise

    config = load_dispatch_config(_config_path(args.config))
    solved = solve_or_raise(
        _hardware_request(args), config, check_availability=args.check_availability,
        timeout=args.timeout or 30.0,
    )  # fmt: skip
    if args.json:
        out(to_json(solved))
        return 0
    rows: list[tuple[str, object]] = [
        ("host", solved.host_name),
        ("type", "slurm" if solved.is_slurm else "plain"),
    ]
    if solved.host_config is not None:
        rows += [("ssh", solved.host_config.ssh), ("cluster", solved.host_config.cluster)]
    if solved.partition:
        rows.append(("partition", solved.partition))
    hw = solved.result
    if hw is not None:
        rows.append(("chip", f"{hw.count} x {hw.chip.name}"))
        if hw.gres_type:
            rows.append(("gres", hw.gres_type))
        if hw.available is not None:
            rows.append(("available", hw.available))
    out(format_table(("FIELD", "VALUE"), rows))
    return 0


def _repl_rows(result: ReplResult) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = [
        ("host", result.selected_host), ("job", result.job_id),
        ("node", result.allocated_hostname or None), ("remote_pid", result.remote_pid),
        ("work_dir", result.work_dir), ("log", result.log_path),
        ("remote_url", result.remote_url), ("local_url", result.local_url),
    ]  # fmt: skip
    return [(k, v) for k, v in rows if v is not None]


def _end_hint(result: ReplResult) -> str:
    parts = []
    if result.tunnel_pid is not None:
        parts.append(f"kill {result.tunnel_pid}  (the tunnel)")
    if result.is_slurm and result.job_id is not None:
        parts.append(f"{PROG} cancel {result.ssh_host} {result.job_id}")
    elif result.remote_pid is not None:
        parts.append(f"{PROG} run {result.ssh_host} -- kill {result.remote_pid}")
    return "; ".join(parts)


def cmd_repl(args: argparse.Namespace) -> int:
    from .. import JobSpec, dispatch_repl, load_dispatch_config

    config = load_dispatch_config(_config_path(args.config))
    spec = JobSpec(name=args.name, project=args.project, group=args.group)
    with Spinner(sys.stderr, f"starting Jupyter for {args.chips} x {args.chip}"):
        result = dispatch_repl(
            spec, _hardware_request(args), config, args.port, dirty=args.dirty,
            check_availability=args.check_availability, mem=args.mem,
            sync_enabled=args.sync, detached_tunnel=args.detach, repo_path=args.repo,
            jupyter_command=args.jupyter_command, time_limit=args.time,
        )  # fmt: skip
    if args.json:
        out(to_json(result))
    if not result.ok:
        raise CliError(f"repl failed: {one_line(result.stderr) or 'see ' + result.log_path}")
    if not args.json:
        out(format_table(("FIELD", "VALUE"), _repl_rows(result)))
    if args.detach:
        sys.stderr.write(f"{PROG}: the session keeps running; to end it: {_end_hint(result)}\n")
        return 0
    return _hold_repl(result)


def _hold_repl(result: ReplResult) -> int:
    """Keep the in-process tunnel open until Ctrl-C, then end the session."""
    from .. import end_repl

    sys.stdout.flush()
    sys.stderr.write(f"{PROG}: Jupyter is at {result.local_url}; Ctrl-C ends the session\n")
    sys.stderr.flush()
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    sys.stderr.write(f"{PROG}: ending the session ...\n")
    done = end_repl(result)
    if not done.ok:
        raise CliError(f"repl: could not end the session cleanly: {one_line(done.stderr)}")
    sys.stderr.write(f"{PROG}: session ended\n")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "hosts": cmd_hosts,
    "run": cmd_run,
    "run-many": cmd_run_many,
    "copy": cmd_copy,
    "queue": jobs.cmd_queue,
    "status": jobs.cmd_status,
    "cancel": jobs.cmd_cancel,
    "wait": jobs.cmd_wait,
    "partitions": jobs.cmd_partitions,
    "nodes": jobs.cmd_nodes,
    "gpus": jobs.cmd_gpus,
    "submit": jobs.cmd_submit,
    "when": when.cmd_when,
    "logs": logs.cmd_logs,
    "solve": cmd_solve,
    "repl": cmd_repl,
    "agent": agent.cmd_agent,
}
