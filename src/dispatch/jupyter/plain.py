"""A Jupyter session on a plain host: ship the repo, start a detached bootstrap, tunnel.

The bootstrap is written next to the log and started with ``setsid nohup`` so it outlives
the SSH channel; stopping it signals only its own process session (see `stop_script`).
With GPUs to claim (``Plan.claim_from``) it first takes their claim locks and pins
``CUDA_VISIBLE_DEVICES`` to them; the locks live as long as its process session.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import time
from pathlib import Path

from ..placement import JobSpec, parse_claimed
from ..results import RunResult
from ..shipping import ship, ship_dirty
from ..slurm import SlurmJob
from ..ssh import run, write_file
from . import parse as rp
from .plan import Plan, bootstrap_path
from .scripts import (
    claiming_bootstrap,
    launch_command,
    pick_server_pid,
    pid_probe,
    plain_alive_check,
    stop_script,
)
from .session import LogReader, Started, StepFailed, fail_text, forward, wait_for_server

__all__ = ["STOP_GRACE_SECONDS", "plain_session", "stop_plain"]

log = logging.getLogger(__name__)

#: Seconds the notebook, then its session, get between SIGTERM and SIGKILL.
STOP_GRACE_SECONDS = 10.0


def _server_host(started: rp.JupyterStartup) -> str:
    """Where the notebook host reaches the server: its bind address unless it is a wildcard."""
    first = started.urls[0]
    return "127.0.0.1" if first.is_wildcard else first.host


def _display_url(started: rp.JupyterStartup, token: str) -> str:
    """The remote URL to show: a named host when Jupyter printed one, else the first."""
    named = [u for u in started.urls if not u.is_wildcard and not u.is_loopback]
    host = (named[0] if named else started.urls[0]).host
    return started.url_for(host, token=token)


def _claim_failed(plan: Plan, why: str) -> StepFailed:
    """The one-line failure of a session that could not claim its GPUs."""
    return StepFailed(f"dispatch_repl: claiming {plan.gpus} GPU(s) on {plan.ssh_host} "
                      f"failed: {why}\n")


def _claimed(plan: Plan, log_text: str) -> tuple[str, ...]:
    """The GPU UUIDs the bootstrap claimed (from its log); () when it claimed none."""
    if not plan.claim_from:
        return ()
    claimed = parse_claimed(log_text)
    if not claimed:
        raise StepFailed(fail_text("claiming GPUs", "the log has no claim line",
                                   plan.log_path, rp.log_tail(log_text)))
    return tuple(claimed)


async def stop_plain(host: str, pid: int, bootstrap: str, io_timeout: float) -> RunResult:
    """Stop notebook ``pid`` and its process session on ``host`` (only if ``bootstrap``
    started it); ``stdout`` says ``stopped``, ``gone``, ``foreign`` or ``survivors``."""
    script = stop_script(pid, posixpath.basename(bootstrap), STOP_GRACE_SECONDS)
    return await run(script, host, timeout=io_timeout + 2 * STOP_GRACE_SECONDS,
                     login_shell=False)


async def plain_session(
    plan: Plan, spec: JobSpec, local_port: int, *, dirty: bool, repo_path: str | Path | None,
    io_timeout: float, startup_timeout: float, poll_interval: float, detached_tunnel: bool,
) -> Started:
    """Ship, launch, wait for Jupyter's URL and forward ``local_port`` to it.

    Raises:
        StepFailed: A remote step failed; nothing of the session is left running.
    """
    host = plan.ssh_host
    if plan.claim_from and len(plan.claim_from) < plan.gpus:
        raise _claim_failed(plan, f"only {len(plan.claim_from)} free GPU(s) known")
    shipped = await (ship_dirty(host, plan.work_dir, repo_path, timeout=io_timeout) if dirty
                     else ship(host, plan.work_dir, repo_path, timeout=io_timeout))
    if not shipped.ok:
        raise StepFailed(fail_text(f"shipping the code to {host}:{plan.work_dir}",
                                   shipped.stderr or f"rc={shipped.returncode}",
                                   plan.log_path))
    job = SlurmJob(name=spec.full_name, command=plan.command, workdir=plan.work_dir,
                   env=dict(plan.env), uv_groups=plan.uv_groups, is_slurm=False)
    bootstrap = bootstrap_path(plan.log_path)
    text = job.to_bootstrap_script()
    if plan.claim_from:
        text = claiming_bootstrap(text, plan.claim_from, plan.gpus)
    wrote = await write_file(host, bootstrap, text.encode(), mode=0o700, timeout=io_timeout)
    if not wrote.ok:
        raise StepFailed(fail_text(f"writing the bootstrap {bootstrap}", wrote.stderr,
                                   plan.log_path))
    launched = await run(launch_command(plan.work_dir, bootstrap, plan.log_path), host,
                         timeout=io_timeout)
    pid_text = launched.stdout.strip().splitlines()[-1:] if launched.ok else []
    if not pid_text or not pid_text[0].isdigit():
        raise StepFailed(fail_text("starting the bootstrap",
                                   launched.stderr or launched.stdout, plan.log_path))
    session = int(pid_text[0])
    log.info("repl %s: bootstrap pid %d on %s, log %s", spec.full_name, session, host,
             plan.log_path)
    try:
        reader = LogReader(host, plan.log_path)
        try:
            started = await wait_for_server(
                reader, plain_alive_check(session),
                time.monotonic() + startup_timeout, "starting Jupyter",
                poll_every=poll_interval, io_timeout=io_timeout)
        except StepFailed:
            why = rp.claim_failure(reader.text) if plan.claim_from else None
            if why is not None:  # exit 75: a concurrent session took the GPUs
                raise _claim_failed(plan, why) from None
            raise
        gpus = _claimed(plan, reader.text)
        probe = await run(pid_probe(session), host, timeout=io_timeout, login_shell=False)
        server_pid = pick_server_pid(probe.stdout, started.port, session)
        tunnel = await forward(plan, local_port, _server_host(started), started.port,
                               detached=detached_tunnel, io_timeout=io_timeout)
    except BaseException:
        # Nothing may linger from a session that did not start (Ctrl-C included).
        await asyncio.shield(stop_plain(host, session, bootstrap, io_timeout))
        raise
    token = started.token or plan.token
    return Started(
        tunnel=tunnel, remote_pid=server_pid, remote_port=started.port, token=token,
        remote_url=_display_url(started, token),
        local_url=started.url_for("localhost", local_port, token), gpus=gpus)
