"""``dispatch when``: where and when would a job start (or will a queued one), and why it waits.

``dispatch when HOST --gpus 4 --gpu-type h100 [-p gpu] [-t 1:00:00]`` asks Slurm to plan
the job without queueing it (``sbatch --test-only``); ``dispatch when HOST --job 123``
shows a queued job's expected start and its pending reason in words.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .argtypes import count, job_id
from .console import EXIT_ERROR, EXIT_USAGE, CliError, check_ssh, out
from .render import to_json

if TYPE_CHECKING:
    from ..slurm import StartEstimate

__all__ = ["add_arguments", "cmd_when"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dispatch when``."""
    p.add_argument("host", metavar="HOST")
    p.add_argument("--job", "-j", type=job_id, metavar="JOB",
                   help="a queued job's id (123 or 123_4): its expected start and why it waits")
    p.add_argument("--gpus", "-G", type=count, help="GPUs per node (--gres=gpu[:type]:N)")
    p.add_argument("--gpu-type", help="GPU GRES type, e.g. h100")
    p.add_argument("--partition", "-p")
    p.add_argument("--nodes", "-N", type=count, default=1, help="nodes (default: 1)")
    p.add_argument("--cpus-per-task", "-c", type=count, help="CPUs per task")
    p.add_argument("--time", "-t", help="time limit, e.g. 10:00 or 1-00:00:00")
    p.add_argument("--mem", help="memory per node, e.g. 8G")
    p.add_argument("--account", "-A")
    p.add_argument("--qos", "-q")
    p.add_argument("--timeout", type=float, metavar="S", help="SSH timeout in seconds")


def _jsonable(est: StartEstimate) -> dict[str, Any]:
    reason = est.reason
    return {
        "ok": est.ok,
        "job_id": est.job_id,
        "raw_id": est.raw_id or None,
        "state": est.state or None,
        "start": est.start.isoformat() if est.start else None,
        "now": est.now.isoformat() if est.now else None,
        "delay_seconds": int(est.delay.total_seconds()) if est.delay is not None else None,
        "starts_now": est.starts_now,
        "nodes": list(est.nodes),
        "partition": est.partition,
        "processors": est.processors,
        "reason": None if reason is None else {
            "code": reason.code, "detail": reason.detail, "meaning": reason.meaning,
            "remedy": reason.remedy},
        "error": None if est.ok else (est.ssh_result.stderr.strip() or None),
    }


def cmd_when(args: argparse.Namespace) -> int:
    """Run ``dispatch when``: print the estimate (or JSON); exit 1 when Slurm refused."""
    from .. import SlurmJob, estimate_start

    if args.job is not None:
        if args.gpus is not None or args.gpu_type or args.partition:
            raise CliError("when: give either --job or a job description (--gpus, ...), "
                           "not both", EXIT_USAGE)
        est = estimate_start(args.job, args.host, timeout=args.timeout)
        what = f"job {args.job}"
    else:
        job = SlurmJob(
            name="dispatch-when", command="true", partition=args.partition,
            nodes=args.nodes, cpus_per_task=args.cpus_per_task, gpus=args.gpus or None,
            gpu_type=args.gpu_type, time=args.time, mem=args.mem, account=args.account,
            qos=args.qos)
        est = estimate_start(job, args.host, timeout=args.timeout)
        gpus = f"{args.gpus}x {args.gpu_type or 'gpu'}" if args.gpus else "a CPU job"
        what = gpus + (f" in {args.partition}" if args.partition else "")
    if args.json:
        out(to_json(_jsonable(est)))
        return 0 if est.ok else EXIT_ERROR
    check_ssh("estimate", args.host, est.ssh_result)
    out(f"{what} on {args.host}: {est.describe()}")
    return 0
