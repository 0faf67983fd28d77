"""The ``dispatch`` command: quick looks at hosts and SLURM clusters from a terminal.

Every subcommand is a thin layer over the blocking API (``dispatch.run``, ``dispatch.queue``,
...): it parses arguments, makes one or a few library calls and renders the result as an
aligned table (default) or as JSON (``--json``, ``dataclasses.asdict`` of the results).

Exit codes: ``run`` exits with the remote command's status (124 on timeout); ``wait`` and
``submit --wait`` exit 0 only when the job COMPLETED; errors print one line
``dispatch: error: ...`` and exit 1 (2 for usage errors, 130 on Ctrl-C). ``--debug`` shows
tracebacks and DEBUG logging.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import inspect
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .progress import ProgressBar, Spinner
from .render import (
    format_table,
    parse_env,
    parse_remote,
    prefix_lines,
    to_json,
)

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)

PROG = "dispatch"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure reported as one ``dispatch: error: ...`` line."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------
# output helpers
# ---------------------------------------------------------------------------------------


def _out(text: str) -> None:
    if text:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _emit(args: argparse.Namespace, value: Any, human: Callable[[], str]) -> None:
    """Print ``value`` as JSON under ``--json``, else the human rendering."""
    _out(to_json(value) if args.json else human())


def _api(name: str) -> Any:
    """The blocking library function ``dispatch.<name>``, or a clear error if absent."""
    import dispatch

    fn = getattr(dispatch, name, None)
    if fn is None:
        raise CliError(f"dispatch.{name} is not available in this version of dispatch")
    return fn


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _check_ssh(what: str, host: str, result: Any) -> None:
    """Raise a one-line error when an SSH/SLURM call's ``RunResult`` failed."""
    if result.returncode != 0:
        detail = _first_line(result.stderr) or _first_line(result.stdout)
        detail = detail or f"exit status {result.returncode}"
        raise CliError(f"{what} on {host} failed: {detail}")


# ---------------------------------------------------------------------------------------
# SSH commands
# ---------------------------------------------------------------------------------------


def cmd_hosts(args: argparse.Namespace) -> int:
    names: list[str] = list(_api("hosts")())
    _emit(args, names, lambda: "\n".join(names))
    return 0


def _command_text(args: argparse.Namespace) -> str:
    words: list[str] = args.command
    if not words:
        raise CliError(f"{args.subcommand}: no command given (put it after `--`)", EXIT_USAGE)
    # Like ssh: the words are joined with spaces and run by the remote login shell, so
    # `dispatch run host -- 'echo $HOME'` expands remotely and `exit 3` works as typed.
    return " ".join(words)


def _exit_status(returncode: int) -> int:
    if returncode == -1:
        return EXIT_TIMEOUT
    return returncode if 0 <= returncode <= 255 else EXIT_ERROR


def cmd_run(args: argparse.Namespace) -> int:
    result = _api("run")(_command_text(args), args.host, timeout=args.timeout)
    if args.json:
        _out(to_json(result))
    else:
        sys.stdout.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.write(result.stderr)
        if getattr(result, "may_have_run", False):
            sys.stderr.write(
                f"{PROG}: warning: the connection to {args.host} broke while the command ran; "
                "it may have run (it was not re-run)\n"
            )
        if result.returncode == -1 and not result.stderr:
            sys.stderr.write(f"{PROG}: error: timed out after {args.timeout} s\n")
    return _exit_status(result.returncode)


def _expand_hosts(patterns: Sequence[str]) -> list[str]:
    """Expand shell-style patterns (``fleet*``) against ``dispatch.hosts()``; keep order."""
    known: list[str] | None = None
    out: list[str] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            if known is None:
                known = list(_api("hosts")())
            matched = [h for h in known if fnmatch.fnmatchcase(h, pattern)]
            if not matched:
                raise CliError(f"no host in the ssh config matches {pattern!r}")
            out.extend(matched)
        else:
            out.append(pattern)
    return list(dict.fromkeys(out))


def cmd_run_many(args: argparse.Namespace) -> int:
    hosts = _expand_hosts(args.hosts)
    results: dict[str, Any] = _api("run_many")(_command_text(args), hosts, timeout=args.timeout)
    if args.json:
        _out(to_json(results))
    else:
        width = max(len(h) for h in hosts)
        for host in hosts:
            result = results[host]
            prefix = f"{host.ljust(width)}: "
            sys.stdout.write(prefix_lines(prefix, result.stdout))
            sys.stderr.write(prefix_lines(prefix, result.stderr))
        sys.stdout.flush()
    failed = [h for h in hosts if results[h].returncode != 0]
    if failed:
        detail = ", ".join(f"{h} (exit {results[h].returncode})" for h in failed[:10])
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        sys.stderr.write(f"{PROG}: {len(failed)} of {len(hosts)} hosts failed: {detail}{more}\n")
        return EXIT_ERROR
    return 0


def _progress_kwarg(fn: Any) -> str | None:
    """Name of the transfer function's progress-callback keyword, if it has one."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    for name in ("progress", "progress_callback", "on_progress"):
        if name in params:
            return name
    return None


def cmd_copy(args: argparse.Namespace) -> int:
    src, dst = parse_remote(args.src), parse_remote(args.dst)
    if src.host and dst.host:
        raise CliError("copy: both SRC and DST are remote; one side must be a local path")
    if not src.host and not dst.host:
        raise CliError("copy: neither SRC nor DST is remote (write the remote one as HOST:path)")
    if src.host is not None:
        fn = _api("copy_from")
        call_args: tuple[Any, ...] = (src.host, src.path, dst.path)
        label = f"{src.host}:{src.path} -> {dst.path}"
    else:
        fn = _api("copy_to")
        assert dst.host is not None
        call_args = (src.path, dst.host, dst.path)
        label = f"{src.path} -> {dst.host}:{dst.path}"
    kwargs: dict[str, Any] = {"timeout": args.timeout}
    bar = ProgressBar(sys.stderr, label)
    progress_name = _progress_kwarg(fn)
    if progress_name and bar.enabled and not args.json:
        kwargs[progress_name] = bar
    try:
        result = fn(*call_args, **kwargs)
    finally:
        bar.close()
    if args.json:
        _out(to_json(result))
        return _exit_status(result.returncode)
    _check_ssh("copy", src.host or dst.host or "?", result)
    return 0


# ---------------------------------------------------------------------------------------
# SLURM commands
# ---------------------------------------------------------------------------------------


def cmd_queue(args: argparse.Namespace) -> int:
    result = _api("queue")(args.host, user=args.user, timeout=args.timeout)
    _check_ssh("squeue", args.host, result.ssh_result)
    rows = [
        (j.job_id, j.partition, j.name, j.user, j.state, j.time_elapsed, j.nodes, j.nodelist)
        for j in result.jobs
    ]
    headers = ("JOBID", "PARTITION", "NAME", "USER", "STATE", "TIME", "NODES", "NODELIST")
    _emit(args, result.jobs, lambda: format_table(headers, rows))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    result = _api("status")(args.job, args.host, timeout=args.timeout)
    _check_ssh("squeue", args.host, result.ssh_result)
    if result.job is not None:
        job = result.job
        fields = [
            ("job", job.job_id), ("name", job.name), ("state", job.state),
            ("partition", job.partition), ("user", job.user), ("time", job.time_elapsed),
            ("nodes", job.nodes), ("nodelist", job.nodelist),
        ]  # fmt: skip
        _emit(args, result, lambda: format_table(("FIELD", "VALUE"), fields))
        return 0
    # Not in the queue any more: ask accounting (sacct) for the final state.
    info = _api("job_info")(args.job, args.host, timeout=args.timeout)
    main = info.main
    if main is None:
        raise CliError(f"job {args.job} is not known on {args.host} (not in squeue or sacct)")
    fields = [
        ("job", main.job_id), ("name", main.name), ("state", main.state),
        ("partition", main.partition), ("exit_code", main.exit_code),
        ("elapsed", main.elapsed), ("nodelist", main.nodelist),
    ]  # fmt: skip
    _emit(args, info, lambda: format_table(("FIELD", "VALUE"), fields))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    result = _api("cancel")(args.job, args.host, timeout=args.timeout)
    if args.json:
        _out(to_json(result))
        return _exit_status(result.returncode)
    _check_ssh("scancel", args.host, result)
    _out(f"cancelled job {args.job} on {args.host}")
    return 0


def _job_exit(args: argparse.Namespace, job_id: int, info: Any) -> int:
    """Render a finished job (``JobInfoResult``); exit 0 only when it COMPLETED."""
    main = info.main
    state = main.state if main is not None else "UNKNOWN"
    if args.json:
        _out(to_json(info))
    else:
        rows = [(s.job_id, s.name, s.state, s.exit_code, s.elapsed, s.nodelist) for s in info.steps]
        if rows:
            _out(format_table(("JOBID", "NAME", "STATE", "EXITCODE", "ELAPSED", "NODELIST"), rows))
        else:
            _out(f"job {job_id}: {state}")
    return 0 if state.split()[0:1] == ["COMPLETED"] else EXIT_ERROR


def _watch_state(spinner: Spinner, job_id: int, host: str, every: float) -> threading.Event:
    """On a terminal, keep the spinner's text at the job's squeue state; set the event to stop."""
    stop = threading.Event()
    if not spinner.enabled:
        return stop
    status = _api("status")

    def loop() -> None:
        while not stop.is_set():
            try:
                job = status(job_id, host, timeout=30).job
            except Exception:  # display only: never let it disturb the wait
                log.debug("status for the spinner failed", exc_info=True)
                job = None
            if job is not None and not stop.is_set():
                where = f" on {job.nodelist}" if job.nodelist and job.state == "RUNNING" else ""
                spinner.update(
                    f"waiting for job {job_id} on {host}: {job.state}{where} {job.time_elapsed}"
                )
            stop.wait(every)

    threading.Thread(target=loop, name="dispatch-cli-state", daemon=True).start()
    return stop


def _wait_for(args: argparse.Namespace, job_id: int) -> Any:
    wait = _api("wait")
    message = f"waiting for job {job_id} on {args.host}"
    try:
        with Spinner(sys.stderr, message) as spinner:
            stop = _watch_state(spinner, job_id, args.host, max(args.poll, 2.0))
            try:
                info = wait(job_id, args.host, poll_interval=args.poll, timeout=args.wait_timeout)
            finally:
                stop.set()
    except TimeoutError as exc:
        info = None
        timeout_exc: BaseException | None = exc
    else:
        timeout_exc = None
    # dispatch.wait reports a timeout as a result: ssh_result.returncode -1, last state seen.
    if timeout_exc is not None or info.ssh_result.returncode == -1:
        last = info.main.state if info is not None and info.main is not None else "unknown"
        raise CliError(
            f"timed out after {args.wait_timeout} s waiting for job {job_id} on {args.host} "
            f"(last state: {last})",
            EXIT_TIMEOUT,
        )
    return info


def cmd_wait(args: argparse.Namespace) -> int:
    info = _wait_for(args, args.job)
    return _job_exit(args, args.job, info)


def _node_rows(infos: dict[str, Any], names: Sequence[str]) -> list[tuple[Any, ...]]:
    rows = []
    for name in names:
        node = infos.get(name)
        if node is None:
            rows.append((name, "?", "", "", "", ""))
            continue
        gres = ",".join(
            f"{g.name}{':' + g.type if g.type else ''}:{g.allocated}/{g.configured}"
            for g in node.gres
        )
        mem = f"{node.memory_allocated}/{node.memory_total}"
        cpus = f"{node.cpus_allocated}/{node.cpus_total}"
        rows.append((name, node.state, cpus, mem, gres or "-", ",".join(node.partitions)))
    return rows


def cmd_nodes(args: argparse.Namespace) -> int:
    if args.partition:
        names: list[str] = list(
            _api("partition_nodes")(args.partition, args.host, timeout=args.timeout)
        )
        if not names:
            raise CliError(f"partition {args.partition!r} on {args.host} has no nodes")
    else:
        parts = _api("partitions")(args.host, timeout=args.timeout)
        if not parts:
            raise CliError(f"no SLURM partitions found on {args.host}")
        names = list(dict.fromkeys(n for p in parts for n in p.nodes))
    infos: dict[str, Any] = _api("nodes_info")(names, args.host, timeout=args.timeout)
    headers = ("NODE", "STATE", "CPUS(A/T)", "MEM_MB(A/T)", "GRES(A/T)", "PARTITIONS")
    _emit(args, infos, lambda: format_table(headers, _node_rows(infos, names)))
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    free: list[tuple[str, int]] = list(
        _api("available_gpus")(args.partition, args.host, gpu_type=args.type, timeout=args.timeout)
    )
    if args.json:
        _out(to_json([{"node": n, "available": c} for n, c in free]))
    elif not free:
        what = f"{args.type} GPUs" if args.type else "GPUs"
        _out(f"no free {what} in partition {args.partition} on {args.host}")
    else:
        _out(format_table(("NODE", "FREE_GPUS"), free))
    return 0


def _build_job(args: argparse.Namespace) -> Any:
    import dispatch

    try:
        env = parse_env(args.env or [])
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    job_cls = getattr(dispatch, "SlurmJob", None)
    if job_cls is None:
        raise CliError("dispatch.SlurmJob is not available in this version of dispatch")
    fields: dict[str, Any] = {
        "partition": args.partition,
        "nodes": args.nodes,
        "ntasks": args.ntasks,
        "gpus": args.gpus,
        "gpu_type": args.gpu_type,
        "time": args.time,
        "mem": args.mem,
        "output": args.output,
        "workdir": args.workdir,
        "dependency": args.dependency,
        "account": args.account,
        "qos": args.qos,
    }
    kwargs = {k: v for k, v in fields.items() if v is not None}
    if env:
        kwargs["env"] = env
    return job_cls(name=args.name, command=args.command, **kwargs)


def cmd_submit(args: argparse.Namespace) -> int:
    if (args.repo or args.dirty) and not args.packed:
        raise CliError("submit: --repo and --dirty need --packed", EXIT_USAGE)
    job = _build_job(args)
    if args.packed:
        result = _api("submit_packed")(
            job, args.host, repo_path=args.repo, share_dir=args.share_dir, dirty=args.dirty,
            timeout=args.timeout, sbcast=args.sbcast,
        )  # fmt: skip
    else:
        result = _api("submit")(job, args.host, share_dir=args.share_dir, timeout=args.timeout,
                                sbcast=args.sbcast)
    if result.job_id is None:
        _check_ssh("sbatch", args.host, result.ssh_result)
        raise CliError(f"sbatch on {args.host} gave no job id: {result.ssh_result.stdout!r}")
    if not args.wait:
        _emit(args, result, lambda: f"submitted job {result.job_id} on {args.host}")
        return 0
    if not args.json:
        _out(f"submitted job {result.job_id} on {args.host}")
    info = _wait_for(args, result.job_id)
    return _job_exit(args, result.job_id, info)


# ---------------------------------------------------------------------------------------
# config, solver, REPL
# ---------------------------------------------------------------------------------------


def _load_config(path: str) -> Any:
    if not os.path.exists(path):
        raise CliError(f"config file {path!r} does not exist")
    return _api("load_dispatch_config")(path)


def _hardware_request(args: argparse.Namespace) -> Any:
    import dispatch

    cls = getattr(dispatch, "HardwareRequest", None)
    if cls is None:
        raise CliError("dispatch.HardwareRequest is not available in this version of dispatch")
    kwargs: dict[str, Any] = {"chip": args.chip, "min_chips": args.chips}
    if args.prefer:
        kwargs["preferred_clusters"] = list(args.prefer)
    if args.forbid:
        kwargs["forbidden_clusters"] = list(args.forbid)
    return cls(**kwargs)


def cmd_solve(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    request = _hardware_request(args)
    solved = _api("solve_or_raise")(
        request, config, check_availability=args.check_availability, timeout=args.timeout or 30.0
    )
    if args.json:
        _out(to_json(solved))
        return 0
    rows: list[tuple[str, Any]] = [
        ("host", solved.host_name),
        ("type", "slurm" if solved.is_slurm else "plain"),
    ]
    if solved.host_config is not None:
        rows.append(("ssh", getattr(solved.host_config, "ssh", "")))
        rows.append(("cluster", getattr(solved.host_config, "cluster", "")))
    if solved.partition:
        rows.append(("partition", solved.partition))
    hw = solved.result
    if hw is not None:
        rows.append(("chip", f"{hw.count} x {getattr(hw.chip, 'name', hw.chip)}"))
        if getattr(hw, "gres_type", None):
            rows.append(("gres", hw.gres_type))
        if getattr(hw, "available", None) is not None:
            rows.append(("available", hw.available))
    _out(format_table(("FIELD", "VALUE"), rows))
    return 0


def _supported_kwargs(fn: Any, wanted: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``wanted`` (values not None) that ``fn`` accepts as keywords."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in wanted.items() if v is not None and k in params}


def _repl_rows(result: Any) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("host", result.selected_host)]
    if result.job_id is not None:
        rows.append(("job", result.job_id))
    if result.allocated_hostname:
        rows.append(("node", result.allocated_hostname))
    if result.remote_pid is not None:
        rows.append(("remote_pid", result.remote_pid))
    rows += [
        ("work_dir", result.work_dir), ("log", result.log_path),
        ("remote_url", result.remote_url), ("local_url", result.local_url),
    ]  # fmt: skip
    return [(k, v) for k, v in rows if v is not None]


def _end_hint(result: Any) -> str:
    parts = []
    if result.tunnel_pid is not None:
        parts.append(f"kill {result.tunnel_pid}  (the tunnel)")
    if result.is_slurm and result.job_id is not None:
        parts.append(f"dispatch cancel {result.ssh_host} {result.job_id}")
    elif result.remote_pid is not None:
        parts.append(f"dispatch run {result.ssh_host} -- kill {result.remote_pid}")
    return "; ".join(parts)


def cmd_repl(args: argparse.Namespace) -> int:
    import dispatch

    repl = getattr(dispatch, "dispatch_repl", None)
    spec_cls = getattr(dispatch, "JobSpec", None)
    if repl is None or spec_cls is None:
        raise CliError(
            "repl: remote Jupyter sessions are not available in this version of dispatch "
            "(dispatch.dispatch_repl is not implemented yet)"
        )
    config = _load_config(args.config)
    spec = spec_cls(name=args.name, project=args.project, group=args.group)
    extra = _supported_kwargs(repl, {
        "detached_tunnel": True if args.detach else None,
        "repo_path": args.repo, "jupyter_command": args.jupyter_command,
        "time_limit": args.time,
    })  # fmt: skip
    with Spinner(sys.stderr, f"starting Jupyter for {args.chips} x {args.chip}"):
        result = repl(
            spec, _hardware_request(args), config, args.port, dirty=args.dirty,
            check_availability=args.check_availability, mem=args.mem,
            sync_enabled=args.sync, **extra,
        )  # fmt: skip
    if not result.ok:
        if args.json:
            _out(to_json(result))
        raise CliError(f"repl failed: {_one_line(result.stderr) or 'see ' + result.log_path}")
    if args.json:
        _out(to_json(result))
    else:
        _out(format_table(("FIELD", "VALUE"), _repl_rows(result)))
    if args.detach:
        sys.stderr.write(f"{PROG}: the session keeps running; to end it: {_end_hint(result)}\n")
        return 0
    return _hold_repl(result)


def _hold_repl(result: Any) -> int:
    """Keep the in-process tunnel open until Ctrl-C, then end the session."""
    end = _api("end_repl")
    sys.stdout.flush()
    sys.stderr.write(f"{PROG}: Jupyter is at {result.local_url}; Ctrl-C ends the session\n")
    sys.stderr.flush()
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    sys.stderr.write(f"{PROG}: ending the session ...\n")
    done = end(result)
    if not done.ok:
        raise CliError(f"repl: could not end the session cleanly: {_one_line(done.stderr)}")
    sys.stderr.write(f"{PROG}: session ended\n")
    return 0


# ---------------------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a numeric SLURM job id, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive SLURM job id, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors in our format."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}\n")


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options accepted both before and after the subcommand."""
    default: Any = argparse.SUPPRESS if suppress else None
    flag_default: Any = argparse.SUPPRESS if suppress else False
    parser.add_argument(
        "--json", action="store_true", default=flag_default,
        help="machine-readable output (JSON of the result dataclasses)",
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


def build_parser() -> argparse.ArgumentParser:
    """The ``dispatch`` argument parser (one subparser per command)."""
    parser = _Parser(
        prog=PROG,
        description="Run commands on SSH hosts and SLURM clusters (a front end to the "
        "dispatch library).",
        epilog="Use `dispatch COMMAND --help` for a command's options.",
    )
    import dispatch

    parser.add_argument("--version", action="version", version=f"%(prog)s {dispatch.__version__}")
    _global_options(parser, suppress=False)
    common = _Parser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> _Parser:
        p: _Parser = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=fn)
        return p

    def timeout_opt(p: argparse.ArgumentParser, what: str = "SSH timeout") -> None:
        p.add_argument("--timeout", type=_positive_float, metavar="S", help=f"{what} in seconds")

    add("hosts", cmd_hosts, "list the host aliases of the ssh config")

    p = add("run", cmd_run, "run a command on a host; exits with its exit status")
    p.add_argument("host", metavar="HOST")
    p.add_argument(
        "command", nargs="*", default=[], metavar="CMD", help="the command (after `--`)"
    )  # a default keeps argparse from calling CMD required when HOST is missing
    timeout_opt(p, "command timeout (the remote process is killed; exit 124)")

    p = add("run-many", cmd_run_many, "run a command on many hosts concurrently")
    p.add_argument("hosts", nargs="+", metavar="HOST", help="aliases or patterns like 'fleet*'")
    timeout_opt(p, "per-host command timeout")

    p = add("copy", cmd_copy, "copy a file or directory to or from a host (HOST:path)")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    timeout_opt(p, "transfer timeout")

    p = add("queue", cmd_queue, "list jobs in the SLURM queue")
    p.add_argument("host", metavar="HOST")
    p.add_argument("--user", "-u", metavar="U", help="only this user's jobs")
    timeout_opt(p)

    for name, fn, text in (
        ("status", cmd_status, "show the state of a SLURM job (squeue, then sacct)"),
        ("cancel", cmd_cancel, "cancel a SLURM job"),
    ):
        p = add(name, fn, text)
        p.add_argument("host", metavar="HOST")
        p.add_argument("job", type=_job_id, metavar="JOB")
        timeout_opt(p)

    p = add("wait", cmd_wait, "wait for a SLURM job to finish; exit 0 if it COMPLETED")
    p.add_argument("host", metavar="HOST")
    p.add_argument("job", type=_job_id, metavar="JOB")
    _wait_options(p)

    p = add("nodes", cmd_nodes, "show SLURM nodes: state, CPUs, memory and GRES in use")
    p.add_argument("host", metavar="HOST")
    p.add_argument("--partition", "-p", metavar="P", help="only nodes of this partition")
    timeout_opt(p)

    p = add("gpus", cmd_gpus, "list nodes of a partition with free GPUs")
    p.add_argument("host", metavar="HOST")
    p.add_argument("partition", metavar="PARTITION")
    p.add_argument("--type", metavar="T", help="GPU type (GRES type, e.g. h100)")
    timeout_opt(p)

    p = add("submit", cmd_submit, "submit a SLURM job (optionally with this repo's code packed)")
    _submit_options(p)

    p = add("solve", cmd_solve, "pick a host for a hardware request from a dispatch config")
    p.add_argument("config", metavar="CONFIG", help="dispatch config YAML")
    _hardware_options(p)
    p.add_argument(
        "--check-availability", action="store_true", help="ask hosts which chips are free now"
    )
    timeout_opt(p, "availability-check timeout (default 30)")

    p = add("repl", cmd_repl, "start a remote Jupyter session and tunnel it to a local port")
    p.add_argument("config", metavar="CONFIG", help="dispatch config YAML")
    _hardware_options(p)
    p.add_argument("--name", default="repl", help="session name (default: repl)")
    p.add_argument("--project", default="dispatch", help="project name (work dir component)")
    p.add_argument("--group", default="default", help="group name (work dir component)")
    p.add_argument("--port", type=int, default=8888, help="local port (default: 8888)")
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
        "--poll", type=_positive_float, default=10.0, metavar="S",
        help="seconds between queue checks (default: 10)",
    )  # fmt: skip
    p.add_argument(
        "--timeout", dest="wait_timeout", type=_positive_float, metavar="S",
        help="give up after S seconds (exit 124); default: wait forever",
    )  # fmt: skip


def _hardware_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chip", default="h100", help="chip name, e.g. h100, a100-sxm4-80gb, cpu")
    p.add_argument(
        "--chips", type=_positive_int, default=1, help="number of chips (0: CPU only; default 1)"
    )
    p.add_argument("--prefer", action="append", metavar="CLUSTER", help="preferred cluster")
    p.add_argument("--forbid", action="append", metavar="CLUSTER", help="forbidden cluster")


def _submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("host", metavar="HOST")
    p.add_argument("--command", "-c", required=True, help="the job's shell command")
    p.add_argument("--name", "-J", default="dispatch", help="job name (default: dispatch)")
    p.add_argument("--partition", "-p")
    p.add_argument("--nodes", "-N", type=_positive_int)
    p.add_argument("--ntasks", "-n", type=_positive_int)
    p.add_argument("--gpus", "-G", type=_positive_int, help="GPUs per node (--gres=gpu[:type]:N)")
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
    p.add_argument("--timeout", type=_positive_float, metavar="S", help="SSH timeout in seconds")
    p.add_argument(
        "--poll", type=_positive_float, default=10.0, metavar="S",
        help="with --wait: seconds between queue checks (default: 10)",
    )  # fmt: skip
    p.add_argument(
        "--wait-timeout", type=_positive_float, metavar="S",
        help="with --wait: give up after S seconds (exit 124)",
    )  # fmt: skip


def _split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Split at the first ``--``: options and arguments before it, the command after it."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a ``dispatch`` command line (``argv`` without the program name)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    before, after = _split_command(raw)
    parser = build_parser()
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


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING
    if args.verbose == 1:
        level = logging.INFO
    if args.verbose >= 2 or args.debug:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("dispatch")
    root.addHandler(handler)
    root.setLevel(level)


def _error(message: str, code: int) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dispatch`` console script; returns the exit status."""
    args = parse_args(argv)
    _setup_logging(args)
    if args.ssh_config:
        if not os.path.isfile(args.ssh_config):
            return _error(f"--ssh-config: no such file: {args.ssh_config}", EXIT_USAGE)
        os.environ["DISPATCH_SSH_CONFIG"] = os.path.abspath(args.ssh_config)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CliError as exc:
        if args.debug:
            traceback.print_exc()
        return _error(str(exc), exc.code)
    except KeyboardInterrupt:
        return _error("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (e.g. `dispatch queue | head`): not an error worth a line.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        return _error(_describe(exc), EXIT_ERROR)


def _one_line(text: str) -> str:
    """Join a multi-line message into one line: ``a:`` + ``b`` -> ``a: b``, else ``a; b``."""
    out = ""
    for line in (part.strip() for part in text.splitlines()):
        if not line:
            continue
        line = " ".join(line.split())
        out = line if not out else f"{out} {line}" if out.endswith(":") else f"{out}; {line}"
    return out


def _describe(exc: BaseException) -> str:
    """One line for an exception: dispatch's own messages as they are, others with the type."""
    from ..errors import DispatchError

    text = _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return f"timed out ({text})" if str(exc) else "timed out"
    if isinstance(exc, DispatchError | ValueError | OSError):
        return text
    return f"{type(exc).__name__}: {text} (run with --debug for a traceback)"


if __name__ == "__main__":
    sys.exit(main())
