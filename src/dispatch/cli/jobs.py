"""The SLURM subcommands: queue, status, cancel, wait, submit, partitions, nodes, gpus.

Handlers as in `dispatch.cli.commands` (which lists them all). In ``--json`` output every
``job_id`` is the job's number (sacct rows keep SLURM's own id, e.g. ``123.batch``, as
``step_id``); `status`, `wait` and `submit --wait` print one shape, the `job_report`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .console import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    PROG,
    CliError,
    check_ssh,
    emit,
    exit_status,
    held_log,
    one_line,
    out,
)
from .progress import Spinner
from .render import format_table, parse_env, to_json, to_jsonable

if TYPE_CHECKING:
    from .. import JobInfo, JobInfoResult, JobStatus, NodeInfo, RunResult, SlurmJob

__all__ = [
    "cmd_cancel",
    "cmd_gpus",
    "cmd_nodes",
    "cmd_partitions",
    "cmd_queue",
    "cmd_status",
    "cmd_submit",
    "cmd_wait",
    "job_report",
]

log = logging.getLogger(__name__)


def _held_reason(messages: list[str], fallback: str) -> str:
    """The library's own warning (e.g. "sinfo on h failed: ...") when it gave one."""
    return messages[-1] if messages else fallback


# --- SLURM: jobs -------------------------------------------------------------------------------

_JOB_NUMBER = re.compile(r"\d+")


def _step_json(step: JobInfo) -> dict[str, Any]:
    """A sacct row as JSON: ``job_id`` the job's number, ``step_id`` SLURM's id (``123.batch``)."""
    row: dict[str, Any] = to_jsonable(step)
    raw = str(row.pop("job_id"))
    match = _JOB_NUMBER.match(raw)
    return {"job_id": int(match.group()) if match else None, "step_id": raw, **row}


def _number(job_id: int | str) -> int:
    """The job's number: ``123`` for ``123`` and for the array element ``123_4``."""
    return int(str(job_id).partition("_")[0])


def job_report(
    job_id: int | str,
    host: str,
    *,
    job: JobStatus | None = None,
    info: JobInfoResult | None = None,
    ssh_result: RunResult | None = None,
) -> dict[str, Any]:
    """The JSON object of `status`, `wait` and `submit --wait` (one shape for all three).

    ``{"job_id": int, "raw_id": str, "host", "state", "job": squeue row or null,
    "steps": [sacct rows], "ssh_result"}``; ``job_id`` is always the (array) job's number,
    ``raw_id`` the id as asked (``123`` or the element ``123_4``); ``state`` is the squeue
    state, else the main sacct row's, else null.
    """
    main = info.main if info is not None else None
    state = job.state if job is not None else main.state if main is not None else None
    if ssh_result is None and info is not None:
        ssh_result = info.ssh_result
    return {
        "job_id": _number(job_id),
        "raw_id": str(job_id),
        "host": host,
        "state": state,
        "job": to_jsonable(job),
        "steps": [_step_json(s) for s in info.steps] if info is not None else [],
        "ssh_result": to_jsonable(ssh_result),
    }


def cmd_queue(args: argparse.Namespace) -> int:
    from .. import queue

    result = queue(args.host, user=args.user, timeout=args.timeout)
    check_ssh("squeue", args.host, result.ssh_result)
    rows = [
        (j.raw_id or j.job_id, j.partition, j.name, j.user, j.state, j.time_elapsed, j.nodes,
         j.nodelist)
        for j in result.jobs
    ]
    headers = ("JOBID", "PARTITION", "NAME", "USER", "STATE", "TIME", "NODES", "NODELIST")
    emit(args.json, result.jobs, lambda: format_table(headers, rows))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .. import job_info, status

    result = status(args.job, args.host, timeout=args.timeout)
    check_ssh("squeue", args.host, result.ssh_result)
    job = result.job
    if job is not None:
        fields: list[tuple[str, object]] = [
            ("job", job.job_id), ("name", job.name), ("state", job.state),
            ("restarts", job.restarts),
            ("partition", job.partition), ("user", job.user), ("time", job.time_elapsed),
            ("nodes", job.nodes), ("nodelist", job.nodelist),
        ]  # fmt: skip
        report = job_report(args.job, args.host, job=job, ssh_result=result.ssh_result)
        emit(args.json, report, lambda: format_table(("FIELD", "VALUE"), fields))
        return 0
    # Not in the queue any more: ask accounting (sacct) for the final state.
    info = job_info(args.job, args.host, timeout=args.timeout)
    main = info.main
    if main is None:
        check_ssh("sacct", args.host, info.ssh_result)
        raise CliError(
            f"job {args.job} is not known on {args.host} (not in squeue or sacct)",
            fields={"job_id": _number(args.job), "raw_id": str(args.job)},
        )
    fields = [
        ("job", main.job_id), ("name", main.name), ("state", main.state),
        ("partition", main.partition), ("exit_code", main.exit_code),
        ("elapsed", main.elapsed), ("nodelist", main.nodelist),
    ]  # fmt: skip
    report = job_report(args.job, args.host, info=info)
    emit(args.json, report, lambda: format_table(("FIELD", "VALUE"), fields))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from .. import cancel

    result = cancel(args.job, args.host, timeout=args.timeout)
    if args.json:
        report = {
            "job_id": _number(args.job), "raw_id": str(args.job), "host": args.host,
            "cancelled": result.returncode == 0,
            "ssh_result": to_jsonable(result),
        }  # fmt: skip
        out(to_json(report))
        return exit_status(result.returncode)
    check_ssh("scancel", args.host, result)
    out(f"cancelled job {args.job} on {args.host}")
    return 0


def _job_exit(args: argparse.Namespace, job_id: int, info: JobInfoResult) -> int:
    """Render a finished job; exit 0 only when it COMPLETED."""
    main = info.main
    assert main is not None  # _wait_for raised otherwise
    if args.json:
        out(to_json(job_report(job_id, args.host, info=info)))
    else:
        rows = [(s.job_id, s.name, s.state, s.exit_code, s.elapsed, s.nodelist) for s in info.steps]
        out(format_table(("JOBID", "NAME", "STATE", "EXITCODE", "ELAPSED", "NODELIST"), rows))
    return 0 if main.state.split()[0:1] == ["COMPLETED"] else EXIT_ERROR


def _watch_state(spinner: Spinner, job_id: int, host: str, every: float) -> threading.Event:
    """On a terminal, keep the spinner's text at the job's squeue state; set the event to stop."""
    stop = threading.Event()
    if not spinner.enabled:
        return stop
    from .. import status

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


@contextlib.contextmanager
def _job_keeps_running(job_id: int, host: str) -> Iterator[None]:
    """Ctrl-C inside: say that the job keeps running and how to cancel it (exit 130)."""
    try:
        yield
    except KeyboardInterrupt:
        raise CliError(
            f"interrupted; job {job_id} keeps running on {host} "
            f"(cancel it with: {PROG} cancel {host} {job_id})",
            EXIT_INTERRUPTED, fields={"job_id": job_id, "host": host},
        ) from None  # fmt: skip


def _wait_for(args: argparse.Namespace, job_id: int) -> JobInfoResult:
    """`dispatch.wait` with a spinner; timeouts, unknown jobs and Ctrl-C become `CliError`."""
    with _job_keeps_running(job_id, args.host), held_log() as held:
        from .. import wait

        with Spinner(sys.stderr, f"waiting for job {job_id} on {args.host}") as spinner:
            stop = _watch_state(spinner, job_id, args.host, max(args.poll, 2.0))
            try:
                info = wait(job_id, args.host, poll_interval=args.poll, timeout=args.wait_timeout)
            finally:
                stop.set()
        if info.ssh_result.returncode == -1:
            last = info.main.state if info.main is not None else "unknown"
            raise CliError(
                f"timed out after {args.wait_timeout} s waiting for job {job_id} on "
                f"{args.host} (last state: {last}); the job keeps running",
                EXIT_TIMEOUT, fields={"job_id": job_id},
            )  # fmt: skip
        if info.main is None:
            # The library says why (e.g. "neither squeue nor sacct knows it").
            said = one_line(info.ssh_result.stderr).removeprefix(f"{PROG}: ")
            raise CliError(
                said or _held_reason(held.messages(), f"no final state for job {job_id}"),
                fields={"job_id": job_id},
            )
    return info


def cmd_wait(args: argparse.Namespace) -> int:
    info = _wait_for(args, args.job)
    return _job_exit(args, args.job, info)


def _build_job(args: argparse.Namespace) -> SlurmJob:
    from .. import SlurmJob

    try:
        env = parse_env(args.env or [])
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    return SlurmJob(
        name=args.name, command=args.command, partition=args.partition, nodes=args.nodes,
        ntasks=args.ntasks, gpus=args.gpus, gpu_type=args.gpu_type, time=args.time,
        mem=args.mem, output=args.output, workdir=args.workdir, env=env,
        dependency=args.dependency, account=args.account, qos=args.qos,
    )  # fmt: skip


def cmd_submit(args: argparse.Namespace) -> int:
    if (args.repo or args.dirty) and not args.packed:
        raise CliError("submit: --repo and --dirty need --packed", EXIT_USAGE)
    job = _build_job(args)
    if args.packed:
        from .. import submit_packed

        result = submit_packed(
            job, args.host, repo_path=args.repo, share_dir=args.share_dir, dirty=args.dirty,
            timeout=args.timeout, sbcast=args.sbcast,
        )  # fmt: skip
    else:
        from .. import submit

        result = submit(
            job, args.host, share_dir=args.share_dir, timeout=args.timeout, sbcast=args.sbcast
        )
    if result.job_id is None:
        check_ssh("sbatch", args.host, result.ssh_result)
        raise CliError(f"sbatch on {args.host} gave no job id: {result.ssh_result.stdout!r}")
    job_id = result.job_id
    with _job_keeps_running(job_id, args.host):
        if not args.wait:
            report = {"job_id": job_id, "host": args.host, "ssh_result": result.ssh_result}
            emit(args.json, report, lambda: f"submitted job {job_id} on {args.host}")
            return 0
        if not args.json:
            out(f"submitted job {job_id} on {args.host}")
            sys.stdout.flush()
        info = _wait_for(args, job_id)
    return _job_exit(args, job_id, info)


# --- SLURM: partitions and nodes ---------------------------------------------------------------


def cmd_partitions(args: argparse.Namespace) -> int:
    from .. import partitions

    with held_log() as held:
        parts = partitions(args.host, timeout=args.timeout)
        if not parts:
            # The library returns [] when sinfo failed and logs why: that is our one line.
            raise CliError(_held_reason(held.messages(), f"no SLURM partitions on {args.host}"))
    rows = [(p.name, p.state, p.total_nodes, p.total_cpus, ",".join(p.nodes)) for p in parts]
    headers = ("PARTITION", "STATE", "NODES", "CPUS", "NODELIST")
    emit(args.json, parts, lambda: format_table(headers, rows))
    return 0


def _node_rows(infos: dict[str, NodeInfo], names: Sequence[str]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
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
    from .. import nodes_info, partition_nodes, partitions

    with held_log() as held:
        if args.partition:
            names = partition_nodes(args.partition, args.host, timeout=args.timeout)
            if not names:
                raise CliError(_held_reason(
                    held.messages(), f"partition {args.partition!r} on {args.host} has no nodes"
                ))  # fmt: skip
        else:
            parts = partitions(args.host, timeout=args.timeout)
            if not parts:
                raise CliError(
                    _held_reason(held.messages(), f"no SLURM partitions on {args.host}")
                )
            names = list(dict.fromkeys(n for p in parts for n in p.nodes))
        infos = nodes_info(names, args.host, timeout=args.timeout)
    headers = ("NODE", "STATE", "CPUS(A/T)", "MEM_MB(A/T)", "GRES(A/T)", "PARTITIONS")
    emit(args.json, infos, lambda: format_table(headers, _node_rows(infos, names)))
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    from .. import available_gpus

    with held_log() as held:
        free = available_gpus(args.partition, args.host, gpu_type=args.type, timeout=args.timeout)
        if not free and held.messages():
            raise CliError(held.messages()[-1])  # sinfo failed: not "no free GPUs"
    if args.json:
        out(to_json([{"node": n, "available": c} for n, c in free]))
    elif not free:
        what = f"{args.type} GPUs" if args.type else "GPUs"
        out(f"no free {what} in partition {args.partition} on {args.host}")
    else:
        out(format_table(("NODE", "FREE_GPUS"), free))
    return 0
