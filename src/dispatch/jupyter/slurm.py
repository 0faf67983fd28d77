"""A Jupyter session on a SLURM node: a packed job runs Jupyter, the tunnel goes through
the login node to the allocated node. The job is cancelled whenever the start fails or is
interrupted, so an unfinished `dispatch_repl` never leaves a job queued."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from ..placement import DispatchConfig, JobSpec, SlurmHostConfig
from ..slurm import SlurmJob, SlurmResult, cancel, submit_packed, wait_until_running
from ..ssh import run
from . import parse as rp
from .plan import Plan, juicefs_mount
from .scripts import NODE_MARKER, make_dir_command, node_address_command, slurm_alive_check
from .session import LogReader, Started, StepFailed, fail_text, forward, wait_for_server

__all__ = ["slurm_session"]

log = logging.getLogger(__name__)


async def _node_address(node: str, host: str, io_timeout: float) -> str:
    """How the login node reaches ``node``: its name if it resolves there, else the
    NodeAddr (then NodeHostName) slurmctld knows it by."""
    res = await run(node_address_command(node), host, timeout=io_timeout)
    getent, _, scontrol = res.stdout.partition(NODE_MARKER)
    if rp.parse_getent_hosts(getent):
        return node
    addr = rp.parse_node_address(scontrol)
    return addr or node


async def slurm_session(
    plan: Plan, spec: JobSpec, local_port: int, config: DispatchConfig, *, dirty: bool,
    repo_path: str | Path | None, mem: str | None, io_timeout: float, startup_timeout: float,
    slurm_wait_timeout: float | None, poll_interval: float, slurm_poll_interval: float,
    detached_tunnel: bool, time_limit: str,
) -> Started:
    """Submit the session's job, wait for its node and Jupyter's URL, forward to it.

    Raises:
        StepFailed: A step failed (``fields`` carry the job id and node); the job is
            cancelled.
    """
    host_cfg = plan.host_config
    assert isinstance(host_cfg, SlurmHostConfig)
    host = plan.ssh_host
    log_dir = posixpath.dirname(plan.log_path)
    made = await run(make_dir_command(log_dir), host, timeout=io_timeout)
    if not made.ok:
        raise StepFailed(fail_text(f"creating the log dir {log_dir}", made.stderr,
                                   plan.log_path))
    constraint = next((p.constraint for p in host_cfg.partitions
                       if p.name == plan.partition and p.constraint), None)
    job = SlurmJob(
        name=spec.full_name, command=plan.command, partition=plan.partition,
        gpus_per_node=plan.gpus or None, gpu_type=plan.gres_type if plan.gpus else None,
        mem=mem or host_cfg.mem, time=time_limit, output=plan.log_path,
        workdir=plan.work_dir, env=dict(plan.env), uv_groups=plan.uv_groups,
        constraint=constraint, account=host_cfg.account, qos=host_cfg.qos,
        exclude=list(host_cfg.exclude), payload_extract_to=plan.work_dir,
        juicefs_mount=juicefs_mount(config, plan.cluster), is_slurm=True,
    )
    submitted = await _submit_or_cancel(
        submit_packed(job, host, repo_path=str(repo_path) if repo_path else None,
                      share_dir=plan.cluster.share, dirty=dirty, timeout=io_timeout),
        host, io_timeout)
    if submitted.job_id is None:
        raise StepFailed(fail_text(f"submitting the job to {host}",
                                   submitted.ssh_result.stderr or submitted.ssh_result.stdout,
                                   plan.log_path))
    job_id = submitted.job_id
    log.info("repl %s: job %d on %s, log %s", spec.full_name, job_id, host, plan.log_path)
    allocated: str | None = None
    try:
        node, st = await wait_until_running(job_id, host, poll_interval=slurm_poll_interval,
                                            timeout=slurm_wait_timeout)
        if node is None:
            state = st.job.state if st.job is not None else "gone"
            detail = (st.ssh_result.stderr.strip() if st.ssh_result.returncode == -1
                      else f"job {job_id} ended before it ran (state {state})")
            reader = LogReader(host, plan.log_path)
            with contextlib.suppress(StepFailed):
                await reader.poll("echo", io_timeout=io_timeout)
            raise StepFailed(fail_text("waiting for the allocation", detail, plan.log_path,
                                       rp.log_tail(reader.text)))
        allocated = node
        reader = LogReader(host, plan.log_path, login_shell=True)
        started = await wait_for_server(
            reader, slurm_alive_check(job_id), time.monotonic() + startup_timeout,
            f"starting Jupyter in job {job_id} on {node}", poll_every=poll_interval,
            io_timeout=io_timeout)
        target = await _node_address(node, host, io_timeout)
        tunnel = await forward(plan, local_port, target, started.port,
                               detached=detached_tunnel, io_timeout=io_timeout)
    except BaseException as exc:
        await asyncio.shield(_cancel_quietly(job_id, host, io_timeout))
        if isinstance(exc, StepFailed):
            exc.fields.setdefault("job_id", job_id)
            exc.fields.setdefault("allocated_hostname", allocated)
        raise
    token = started.token or plan.token
    return Started(
        tunnel=tunnel, job_id=job_id, allocated_hostname=node, remote_port=started.port,
        token=token, remote_url=started.url_for(node, token=token),
        local_url=started.url_for("localhost", local_port, token))


async def _submit_or_cancel(
    submission: Coroutine[Any, Any, SlurmResult], host: str, io_timeout: float
) -> SlurmResult:
    """Await a submission; if we are cancelled meanwhile (Ctrl-C), let it finish and cancel
    the job it made, so an interrupted dispatch_repl never leaves a job queued."""
    task = asyncio.ensure_future(submission)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            done = await asyncio.wait_for(task, io_timeout)
            if done.job_id is not None:
                await _cancel_quietly(done.job_id, host, io_timeout)
        raise


async def _cancel_quietly(job_id: int, host: str, io_timeout: float) -> None:
    try:
        res = await cancel(job_id, host, timeout=io_timeout)
        if not res.ok:
            log.warning("scancel %d on %s failed: %s", job_id, host, res.stderr.strip())
    except Exception:
        log.warning("scancel %d on %s raised", job_id, host, exc_info=True)
