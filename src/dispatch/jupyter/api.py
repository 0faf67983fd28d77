"""Remote Jupyter sessions: `dispatch_repl` starts one, `end_repl` ends it.

``dispatch_repl`` solves the hardware request with interactive semantics, puts the code in
the work dir ``{cluster.work}/{project}/{group}/{name}``, starts Jupyter there and forwards
``local_port`` on this machine to it, so ``ReplResult.local_url`` opens in a browser here:

- plain host: the repo is shipped (``dirty=True``: with uncommitted and untracked files),
  a bootstrap script is written next to the log and started detached (``setsid nohup``);
- SLURM host: a packed job runs Jupyter on a compute node; the tunnel goes through the
  login node to the allocated node.

Jupyter's token is generated here and given to the notebook as ``JUPYTER_TOKEN`` (so it
never appears in the log); the log is still parsed for the URL to know the server is up
and on which port. Remote failures return ``ok=False`` with a stderr naming the failed step
and the log; invalid arguments and unsatisfiable requests raise (``InvalidValueError``,
``SolveError``, ``ShipError``, ``SubmitError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import posixpath
import secrets
import shlex
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidValueError
from ..placement.config import DispatchConfig, PlainHostConfig, RemoteInventory, SlurmHostConfig
from ..placement.hardware import Cluster, HardwareRequest, JobSpec, JuiceFSMount
from ..placement.solve import solve_or_raise
from ..results import RunResult, TunnelResult
from ..shipping import ship, ship_dirty
from ..slurm.job import SlurmJob, shell_path
from ..slurm.models import SlurmResult
from ..slurm.poller import wait_until_running
from ..slurm.query import cancel
from ..slurm.submission import submit_packed
from ..ssh.commands import run
from ..ssh.transfer import write_file
from ..ssh.tunnel import close_tunnel, forward_port
from . import parse as rp
from .sync import FileSync

__all__ = ["ReplResult", "dispatch_repl", "end_repl"]

log = logging.getLogger(__name__)

#: The original's launch command: Jupyter Lab from PyPI through uv, any interface, the
#: first free port from 8888 on.
DEFAULT_JUPYTER_COMMAND = (
    "uv run --with jupyter jupyter lab --ip 0.0.0.0 --no-browser --port 8888 "
    "--ServerApp.port_retries=50"
)
#: SLURM host annotations that override the launch command and the job's time limit.
JUPYTER_COMMAND_ANNOTATION = "jupyter_command"
TIME_LIMIT_ANNOTATION = "repl_time"
#: Time limit of a REPL job unless overridden (a session is long-lived).
DEFAULT_TIME_LIMIT = "1-00:00:00"

_STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class ReplResult:
    """Result of launching an interactive Jupyter REPL session.

    ``remote_pid`` is the notebook server's PID (plain hosts); ``remote_url`` the URL on the
    remote side (the compute node's name for SLURM); ``local_url`` the forwarded URL on this
    machine; ``tunnel_pid`` the process holding the tunnel (this one unless detached);
    ``mailbox_job_id`` the JobSpec id of the session. ``stderr`` says what failed.
    """

    ok: bool
    is_slurm: bool
    selected_host: str
    ssh_host: str
    log_path: str
    job_id: int | None = None
    allocated_hostname: str | None = None
    remote_pid: int | None = None
    remote_port: int | None = None
    token: str | None = None
    remote_url: str | None = None
    local_port: int | None = None
    local_url: str | None = None
    tunnel_pid: int | None = None
    cluster_name: str | None = None
    cluster_root: str | None = None
    cluster_mount: str | None = None
    work_dir: str | None = None
    mailbox_job_id: str | None = None
    stderr: str = ""


# Per-session state that does not fit the documented result: the file sync and the
# tunnel record. Keyed by the (hashable, frozen) result.
_syncs: dict[ReplResult, FileSync] = {}
_tunnels: dict[ReplResult, TunnelResult] = {}


class _StepFailed(Exception):
    """A remote step failed: becomes ``ok=False`` with this message (and ``fields``)."""

    def __init__(self, message: str, **fields: object) -> None:
        super().__init__(message)
        self.fields = fields


def work_dir_for(cluster: Cluster, spec: JobSpec) -> str:
    """Build the remote work directory `{cluster.work}/{project}/{group}/{name}`.

    Args:
        cluster: The cluster whose `work` directory is the root.
        spec: The job identity; a missing project or group is left out.

    Returns:
        The POSIX path of the work directory.
    """
    parts = [p for p in (spec.project, spec.group, spec.name) if p]
    return posixpath.join(cluster.work.rstrip("/") or "/", *parts)


def _check_port(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidValueError(f"{name} must be an int in 1..65535, got {value!r}")
    return value


def _check_seconds(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidValueError(f"{name} must be a positive number of seconds, got {value!r}")


def _local_port_free(port: int) -> bool:
    """True when the tunnel could listen on 127.0.0.1:port. SO_REUSEADDR as asyncio's
    listener uses it, so a port left in TIME_WAIT by an ended session counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _session_env(config: DispatchConfig, token: str) -> dict[str, str]:
    env = {"JUPYTER_TOKEN": token}
    if config.proxy:
        env.update(HTTP_PROXY=config.proxy, HTTPS_PROXY=config.proxy,
                   http_proxy=config.proxy, https_proxy=config.proxy)
    return env


def _juicefs(config: DispatchConfig, cluster: Cluster) -> JuiceFSMount | None:
    if not (config.mount and cluster.mount):
        return None
    return JuiceFSMount(redis_url=config.mount, mount_point=cluster.mount,
                        cache_dir=cluster.cache_dir, cache_size=cluster.cache_size,
                        name=cluster.name)


def _fail_text(step: str, detail: str, log_path: str, tail: str = "") -> str:
    msg = f"dispatch_repl: {step} failed: {detail.strip()}\nlog: {log_path}\n"
    if tail.strip():
        msg += f"--- last lines of the log ---\n{tail.rstrip()}\n"
    return msg


# --- reading the log ---------------------------------------------------------------------


@dataclass
class _LogReader:
    """Reads a remote log incrementally (by byte offset) and reports whether a process or
    job is still alive, in one SSH round trip per poll."""

    host: str
    path: str
    login_shell: bool = False  # True where squeue & co. come from the login profile
    offset: int = 0
    text: str = ""

    def _command(self, alive_check: str) -> str:
        marker = "@@dispatch-repl@@"
        return (
            f"f={shell_path(self.path)}; o={self.offset}; "
            'n=$(wc -c 2>/dev/null < "$f" || echo 0); n=$((n + 0)); '
            'if [ "$n" -gt "$o" ]; then tail -c +$((o + 1)) "$f" | head -c $((n - o)); fi; '
            f"printf '\\n{marker} %s %s\\n' \"$n\" \"$({alive_check})\""
        )

    async def poll(self, alive_check: str, io_timeout: float) -> str:
        """Append new log text; return the alive-check's output (``alive``/``dead``/...)."""
        res = await run(self._command(alive_check), self.host, timeout=io_timeout,
                        login_shell=self.login_shell)
        if not res.ok:
            raise _StepFailed(f"reading {self.path} on {self.host}: rc={res.returncode} "
                              f"{res.stderr.strip()}")
        chunk, sep, trailer = res.stdout.rpartition("\n@@dispatch-repl@@ ")
        if not sep:
            raise _StepFailed(f"unexpected output reading {self.path}: {res.stdout[-200:]!r}")
        fields = trailer.split()
        if fields and fields[0].isdigit() and int(fields[0]) >= self.offset:
            self.text += chunk
            self.offset = int(fields[0])
        return " ".join(fields[1:])


# --- plain host ----------------------------------------------------------------------------


def _launch_command(work_dir: str, bootstrap: str, log_path: str) -> str:
    """Start the bootstrap detached in its own session (survives the SSH channel); echo PID.

    ``DISPATCH_RUN_ID`` is dropped so the launching command's timeout handling never
    mistakes the session for part of the launch.
    """
    log_dir = posixpath.dirname(log_path)
    return (
        f"mkdir -p {shell_path(log_dir)} {shell_path(work_dir)} && "
        f"cd {shell_path(work_dir)} || exit 1; "
        f"env -u DISPATCH_RUN_ID setsid nohup bash -l {shell_path(bootstrap)} "
        f"> {shell_path(log_path)} 2>&1 < /dev/null & echo $!"
    )


def _pid_probe(session: int) -> str:
    """Shell listing TCP listeners (ss) and the processes of ``session`` (ps)."""
    return (
        "(ss -Hltnp 2>/dev/null || true) | sed 's/^/ss /'; "
        f"ps -o pid=,args= -s {session} 2>/dev/null | sed 's/^/ps /'"
    )


def _pick_server_pid(text: str, port: int, session: int) -> int:
    """The notebook server's PID: the session's process listening on ``port``, else its
    last process that looks like Jupyter, else the session leader."""
    ss = "\n".join(line[3:] for line in text.splitlines() if line.startswith("ss "))
    procs: list[tuple[int, str]] = []
    for line in text.splitlines():
        if line.startswith("ps "):
            pid_s, _, args = line[3:].strip().partition(" ")
            if pid_s.isdigit():
                procs.append((int(pid_s), args))
    mine = {pid for pid, _ in procs}
    for pid in rp.parse_listener_pids(ss, port):
        if pid in mine:
            return pid
    jupyter = [pid for pid, args in procs
               if "jupyter" in args and not args.startswith(("uv ", "bash ", "/bin/bash "))]
    return jupyter[-1] if jupyter else session


def _stop_script(pid: int, marker: str, grace: float) -> str:
    """Shell that stops the notebook ``pid`` and everything in its session.

    It only acts when the session leader's command line contains ``marker`` (the
    bootstrap's file name) or, with the leader gone, ``pid``'s contains ``jupyter``: a
    reused PID is never signalled. SIGTERM to the server first (it shuts its kernels
    down), then the session, then SIGKILL after ``grace`` seconds.
    """
    rounds = max(1, int(grace * 10))
    m = shlex.quote(marker)
    return f"""
p={pid}
sid=$(ps -o sid= -p "$p" 2>/dev/null | tr -d ' ')
[ -n "$sid" ] || {{ echo gone; exit 0; }}
leader=$(ps -o args= -p "$sid" 2>/dev/null || true)
case "$leader" in
  *{m}*) ;;
  '') case "$(ps -o args= -p "$p" 2>/dev/null)" in *jupyter*) ;; *) echo foreign; exit 3;; esac ;;
  *) echo foreign; exit 3 ;;
esac
[ "$sid" -gt 1 ] || exit 3
# live (non-zombie) members of the session
live() {{ ps -o stat= -s "$sid" 2>/dev/null | grep -qv '^Z'; }}
kill -TERM "$p" 2>/dev/null
i=0; while kill -0 "$p" 2>/dev/null && [ $i -lt {rounds} ]; do sleep 0.1; i=$((i+1)); done
pkill -TERM -s "$sid" 2>/dev/null
i=0; while live && [ $i -lt {rounds} ]; do sleep 0.1; i=$((i+1)); done
pkill -KILL -s "$sid" 2>/dev/null; kill -KILL "$p" 2>/dev/null
i=0; while live && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
live && {{ echo survivors; exit 4; }}
echo stopped
"""


def _bootstrap_path(log_path: str) -> str:
    base = log_path[: -len(".log")] if log_path.endswith(".log") else log_path
    return base + ".bootstrap.sh"


async def _wait_for_server(
    reader: _LogReader, alive_check: str, deadline: float, step: str, *,
    poll_every: float, io_timeout: float, on_state: str = "alive",
) -> rp.JupyterStartup:
    """Poll the log until Jupyter prints its URL; fail fast when the process/job is gone."""
    while True:
        remaining = deadline - time.monotonic()
        try:
            state = await reader.poll(alive_check,
                                      io_timeout=max(5.0, min(io_timeout, remaining + 5.0)))
        except _StepFailed as exc:
            raise _StepFailed(_fail_text(step, str(exc), reader.path,
                                         rp.log_tail(reader.text))) from exc
        started = rp.parse_jupyter_log(reader.text)
        if started is not None:
            return started
        if state and state != on_state and state != "":
            # Died: read what it wrote last (the process may have written after the poll).
            with contextlib.suppress(_StepFailed):
                await reader.poll("echo dead", io_timeout=io_timeout)
            why = rp.jupyter_failure(reader.text)
            detail = f"Jupyter exited before printing its URL ({state})"
            if why:
                detail += f": {why}"
            raise _StepFailed(_fail_text(step, detail, reader.path, rp.log_tail(reader.text)))
        if time.monotonic() >= deadline:
            raise _StepFailed(_fail_text(
                step, "Jupyter did not print its URL within startup_timeout", reader.path,
                rp.log_tail(reader.text)))
        await asyncio.sleep(min(poll_every, max(0.0, deadline - time.monotonic())))


async def _stop_plain(host: str, pid: int, bootstrap: str, io_timeout: float) -> RunResult:
    script = _stop_script(pid, posixpath.basename(bootstrap), _STOP_GRACE_SECONDS)
    return await run(script, host, timeout=io_timeout + 2 * _STOP_GRACE_SECONDS,
                     login_shell=False)


# --- the session ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Everything decided before anything remote happens."""

    selected_host: str
    ssh_host: str
    host_config: PlainHostConfig | SlurmHostConfig
    cluster: Cluster
    work_dir: str
    log_path: str
    partition: str | None
    gpus: int
    gres_type: str | None
    token: str
    command: str
    uv_groups: list[str]
    env: dict[str, str]


def _base_result(plan: _Plan, spec: JobSpec, local_port: int, **fields: object) -> ReplResult:
    values: dict[str, object] = {
        "ok": False,
        "is_slurm": isinstance(plan.host_config, SlurmHostConfig),
        "selected_host": plan.selected_host,
        "ssh_host": plan.ssh_host,
        "log_path": plan.log_path,
        "local_port": local_port,
        "cluster_name": plan.cluster.name,
        "cluster_root": plan.cluster.root,
        "cluster_mount": plan.cluster.mount,
        "work_dir": plan.work_dir,
        "mailbox_job_id": spec.id,
    }
    values.update(fields)
    return ReplResult(**values)  # type: ignore[arg-type]


def _server_host(started: rp.JupyterStartup) -> str:
    """Where the notebook host reaches the server: its bind address unless it is a wildcard."""
    first = started.urls[0]
    return "127.0.0.1" if first.is_wildcard else first.host


def _display_url(started: rp.JupyterStartup, token: str) -> str:
    """The remote URL to show: a named host when Jupyter printed one, else the first."""
    named = [u for u in started.urls if not u.is_wildcard and not u.is_loopback]
    host = (named[0] if named else started.urls[0]).host
    return started.url_for(host, token=token)


async def _forward(plan: _Plan, local_port: int, target: str, port: int, *,
                   detached: bool, io_timeout: float) -> TunnelResult:
    tunnel = await forward_port(plan.ssh_host, local_port, port, remote_host=target,
                                detached=detached, timeout=io_timeout)
    if not tunnel.ok:
        raise _StepFailed(_fail_text(
            "forwarding the port",
            f"127.0.0.1:{local_port} -> {target}:{port} via {plan.ssh_host}: "
            f"{tunnel.stderr.strip()}", plan.log_path))
    return tunnel


async def _plain_session(
    plan: _Plan, spec: JobSpec, local_port: int, *, dirty: bool, repo_path: str | Path | None,
    io_timeout: float, startup_timeout: float, poll_interval: float, detached_tunnel: bool,
) -> tuple[ReplResult, TunnelResult]:
    host = plan.ssh_host
    shipped = await (ship_dirty(host, plan.work_dir, repo_path, timeout=io_timeout) if dirty
                     else ship(host, plan.work_dir, repo_path, timeout=io_timeout))
    if not shipped.ok:
        raise _StepFailed(_fail_text(f"shipping the code to {host}:{plan.work_dir}",
                                     shipped.stderr or f"rc={shipped.returncode}",
                                     plan.log_path))
    job = SlurmJob(name=spec.full_name, command=plan.command, workdir=plan.work_dir,
                   env=dict(plan.env), uv_groups=plan.uv_groups, is_slurm=False)
    bootstrap = _bootstrap_path(plan.log_path)
    wrote = await write_file(host, bootstrap, job.to_bootstrap_script().encode(), mode=0o700,
                             timeout=io_timeout)
    if not wrote.ok:
        raise _StepFailed(_fail_text(f"writing the bootstrap {bootstrap}", wrote.stderr,
                                     plan.log_path))
    launched = await run(_launch_command(plan.work_dir, bootstrap, plan.log_path), host,
                         timeout=io_timeout)
    pid_text = launched.stdout.strip().splitlines()[-1:] if launched.ok else []
    if not pid_text or not pid_text[0].isdigit():
        raise _StepFailed(_fail_text("starting the bootstrap",
                                     launched.stderr or launched.stdout, plan.log_path))
    session = int(pid_text[0])
    log.info("repl %s: bootstrap pid %d on %s, log %s", spec.full_name, session, host,
             plan.log_path)
    try:
        reader = _LogReader(host, plan.log_path)
        started = await _wait_for_server(
            reader, f"kill -0 {session} 2>/dev/null && echo alive || echo exited",
            time.monotonic() + startup_timeout, "starting Jupyter",
            poll_every=poll_interval, io_timeout=io_timeout)
        probe = await run(_pid_probe(session), host, timeout=io_timeout, login_shell=False)
        server_pid = _pick_server_pid(probe.stdout, started.port, session)
        tunnel = await _forward(plan, local_port, _server_host(started), started.port,
                                detached=detached_tunnel, io_timeout=io_timeout)
    except BaseException:
        # Nothing may linger from a session that did not start (Ctrl-C included).
        await asyncio.shield(_stop_plain(host, session, bootstrap, io_timeout))
        raise
    token = started.token or plan.token
    result = _base_result(
        plan, spec, local_port, ok=True, remote_pid=server_pid, remote_port=started.port,
        token=token, remote_url=_display_url(started, token),
        local_url=started.url_for("localhost", local_port, token), tunnel_pid=tunnel.pid)
    return result, tunnel


async def _node_address(node: str, host: str, io_timeout: float) -> str:
    """How the login node reaches ``node``: its name if it resolves there, else the
    NodeAddr (then NodeHostName) slurmctld knows it by."""
    q = shlex.quote(node)
    res = await run(f"getent hosts {q} || true; echo @@scontrol@@; "
                    f"scontrol show node -o {q} 2>/dev/null || true", host, timeout=io_timeout)
    getent, _, scontrol = res.stdout.partition("@@scontrol@@")
    if rp.parse_getent_hosts(getent):
        return node
    addr = rp.parse_node_address(scontrol)
    return addr or node


async def _slurm_session(
    plan: _Plan, spec: JobSpec, local_port: int, config: DispatchConfig, *, dirty: bool,
    repo_path: str | Path | None, mem: str | None, io_timeout: float, startup_timeout: float,
    slurm_wait_timeout: float | None, poll_interval: float, slurm_poll_interval: float,
    detached_tunnel: bool, time_limit: str,
) -> tuple[ReplResult, TunnelResult]:
    host_cfg = plan.host_config
    assert isinstance(host_cfg, SlurmHostConfig)
    host = plan.ssh_host
    log_dir = posixpath.dirname(plan.log_path)
    made = await run(f"mkdir -p {shell_path(log_dir)}", host, timeout=io_timeout)
    if not made.ok:
        raise _StepFailed(_fail_text(f"creating the log dir {log_dir}", made.stderr,
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
        juicefs_mount=_juicefs(config, plan.cluster), is_slurm=True,
    )
    submitted = await _submit_or_cancel(
        submit_packed(job, host, repo_path=str(repo_path) if repo_path else None,
                      share_dir=plan.cluster.share, dirty=dirty, timeout=io_timeout),
        host, io_timeout)
    if submitted.job_id is None:
        raise _StepFailed(_fail_text(f"submitting the job to {host}",
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
            reader = _LogReader(host, plan.log_path)
            with contextlib.suppress(_StepFailed):
                await reader.poll("echo", io_timeout=io_timeout)
            raise _StepFailed(_fail_text("waiting for the allocation", detail, plan.log_path,
                                         rp.log_tail(reader.text)))
        allocated = node
        reader = _LogReader(host, plan.log_path, login_shell=True)
        # squeue failing (slurmctld busy) counts as alive; an empty answer as ended.
        alive = (f"if s=$(squeue -h -j {job_id} -o %T 2>/dev/null); then "
                 'case "$s" in RUNNING|COMPLETING|CONFIGURING) echo alive;; '
                 '"") echo ended;; *) echo "$s";; esac; else echo alive; fi')
        started = await _wait_for_server(
            reader, alive, time.monotonic() + startup_timeout,
            f"starting Jupyter in job {job_id} on {node}", poll_every=poll_interval,
            io_timeout=io_timeout)
        target = await _node_address(node, host, io_timeout)
        tunnel = await _forward(plan, local_port, target, started.port,
                                detached=detached_tunnel, io_timeout=io_timeout)
    except BaseException as exc:
        await asyncio.shield(_cancel_quietly(job_id, host, io_timeout))
        if isinstance(exc, _StepFailed):
            exc.fields.setdefault("job_id", job_id)
            exc.fields.setdefault("allocated_hostname", allocated)
        raise
    token = started.token or plan.token
    result = _base_result(
        plan, spec, local_port, ok=True, job_id=job_id, allocated_hostname=node,
        remote_port=started.port, token=token,
        remote_url=started.url_for(node, token=token),
        local_url=started.url_for("localhost", local_port, token), tunnel_pid=tunnel.pid)
    return result, tunnel


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


def _plan(spec: JobSpec, dispatch_config: DispatchConfig, solved_host: str,
          host_cfg: PlainHostConfig | SlurmHostConfig, partition: str | None, gpus: int,
          gres_type: str | None, extra_uv_groups: list[str] | None,
          jupyter_command: str | None) -> _Plan:
    cluster = RemoteInventory(dispatch_config).get_cluster(host_cfg.cluster)
    command = jupyter_command
    if command is None and isinstance(host_cfg, SlurmHostConfig):
        command = host_cfg.annotations.get(JUPYTER_COMMAND_ANNOTATION)
    if command is None:
        command = DEFAULT_JUPYTER_COMMAND
    if not isinstance(command, str) or not command.strip():
        raise InvalidValueError(f"jupyter_command must be a non-empty string, got {command!r}")
    groups = list(dict.fromkeys([*host_cfg.uv_groups, *(extra_uv_groups or [])]))
    token = secrets.token_hex(24)
    return _Plan(
        selected_host=solved_host, ssh_host=host_cfg.ssh, host_config=host_cfg, cluster=cluster,
        work_dir=work_dir_for(cluster, spec),
        log_path=posixpath.join(cluster.log, f"{spec.full_name}.log"),
        partition=partition, gpus=gpus, gres_type=gres_type,
        token=token, command=command, uv_groups=groups,
        env=_session_env(dispatch_config, token),
    )


async def dispatch_repl(
    spec: JobSpec,
    hardware: HardwareRequest,
    dispatch_config: DispatchConfig,
    local_port: int,
    dirty: bool = False,
    check_availability: bool = True,
    mem: str | None = None,
    timeout: float = 60.0,
    startup_timeout: float = 180.0,
    slurm_wait_timeout: float | None = None,
    sync_enabled: bool = False,
    extra_uv_groups: list[str] | None = None,
    *,
    jupyter_command: str | None = None,
    repo_path: str | Path | None = None,
    time_limit: str | None = None,
    poll_interval: float = 1.0,
    slurm_poll_interval: float = 5.0,
    sync_interval: float = 1.0,
    detached_tunnel: bool = False,
) -> ReplResult:
    """Dispatch an interactive Jupyter session on selected infrastructure.

    Solves `hardware` (interactive: plain hosts first), ships the repo, starts Jupyter in
    `{cluster.work}/{project}/{group}/{name}` and forwards `127.0.0.1:local_port` to it.
    On a SLURM host the code is packed into a job and the tunnel runs through the login
    node to the allocated node; cancelling while waiting cancels the job.

    Args:
        spec: Job identity (project, group, name); names the work directory.
        hardware: What the session needs; solved with `interactive=True`.
        dispatch_config: The hosts and clusters to choose from.
        local_port: Port on 127.0.0.1 to forward to the notebook (must be free).
        dirty: Ship uncommitted and untracked (not ignored) files too (see `ship_dirty`).
        check_availability: Ask the hosts what is free now before choosing one.
        mem: SLURM memory request (e.g. `"64G"`); default: the host's `mem`.
        timeout: Seconds allowed for each SSH step.
        startup_timeout: Seconds to wait for Jupyter to log its URL.
        slurm_wait_timeout: Seconds to wait for the SLURM allocation (None: no limit).
        sync_enabled: Upload local edits of tracked files to the work directory every
            `sync_interval` seconds until `end_repl` (see `dispatch.sync`).
        extra_uv_groups: uv dependency groups to install in addition to the host's
            `uv_groups`.
        jupyter_command: Replaces the launch command (default: `uv run --with jupyter
            jupyter lab --ip 0.0.0.0 --no-browser --port 8888
            --ServerApp.port_retries=50`; the SLURM host annotation `jupyter_command` also
            sets it); it must honour `JUPYTER_TOKEN` and log its URL.
        repo_path: The local repository to ship (default: the current directory).
        time_limit: SLURM time limit of the session's job (default: the host annotation
            `repl_time`, else one day).
        poll_interval: Seconds between reads of the Jupyter log while it starts.
        slurm_poll_interval: Seconds between job-state queries while waiting for the
            allocation.
        sync_interval: Seconds between sync rounds (with `sync_enabled`).
        detached_tunnel: Keep the tunnel in a helper process that outlives this one.

    Returns:
        The session: URLs, host, PID or job id, and the token in `local_url`. When a remote
        step failed, `ok` is False and `stderr` names the step and shows the log tail;
        nothing is left running then.

    Raises:
        InvalidValueError: An argument has the wrong type or range, or `local_port` is
            already in use.
        SolveError: No host can take `hardware`.
        ShipError: The repository cannot be snapshotted.
    """
    if not isinstance(spec, JobSpec):
        raise InvalidValueError(f"spec must be a JobSpec, got {spec!r}")
    if not isinstance(hardware, HardwareRequest):
        raise InvalidValueError(f"hardware must be a HardwareRequest, got {hardware!r}")
    if not isinstance(dispatch_config, DispatchConfig):
        raise InvalidValueError(f"dispatch_config must be a DispatchConfig, got "
                                f"{dispatch_config!r}")
    _check_port("local_port", local_port)
    _check_seconds("timeout", timeout)
    _check_seconds("startup_timeout", startup_timeout)
    _check_seconds("slurm_wait_timeout", slurm_wait_timeout, optional=True)
    _check_seconds("poll_interval", poll_interval)
    _check_seconds("slurm_poll_interval", slurm_poll_interval)
    _check_seconds("sync_interval", sync_interval)
    if extra_uv_groups is not None and (isinstance(extra_uv_groups, str) or not all(
            isinstance(g, str) for g in extra_uv_groups)):
        raise InvalidValueError(f"extra_uv_groups must be a list of names: {extra_uv_groups!r}")
    if not _local_port_free(local_port):
        raise InvalidValueError(f"local_port {local_port} is already in use on 127.0.0.1")

    request = dataclasses.replace(hardware, interactive=True)
    solved = await solve_or_raise(request, dispatch_config, check_availability, timeout)
    assert solved.result is not None and solved.host_name is not None
    assert solved.host_config is not None
    plan = _plan(spec, dispatch_config, solved.host_name, solved.host_config, solved.partition,
                 solved.result.count, solved.result.gres_type, extra_uv_groups, jupyter_command)
    log.info("repl %s: %s on %s (%s), work dir %s", spec.full_name,
             request.describe(), plan.selected_host,
             "slurm" if solved.is_slurm else "plain", plan.work_dir)

    syncer: FileSync | None = None
    if sync_enabled:
        # Record the local state before shipping: edits made while the session starts are
        # uploaded by the first poll.
        syncer = FileSync(plan.ssh_host, plan.work_dir, repo_path, interval=sync_interval,
                          timeout=timeout)
        await syncer.snapshot()
    try:
        if isinstance(plan.host_config, SlurmHostConfig):
            result, tunnel = await _slurm_session(
                plan, spec, local_port, dispatch_config, dirty=dirty, repo_path=repo_path,
                mem=mem, io_timeout=timeout, startup_timeout=startup_timeout,
                slurm_wait_timeout=slurm_wait_timeout, poll_interval=poll_interval,
                slurm_poll_interval=slurm_poll_interval, detached_tunnel=detached_tunnel,
                time_limit=time_limit or plan.host_config.annotations.get(
                    TIME_LIMIT_ANNOTATION, DEFAULT_TIME_LIMIT),
            )
        else:
            result, tunnel = await _plain_session(
                plan, spec, local_port, dirty=dirty, repo_path=repo_path, io_timeout=timeout,
                startup_timeout=startup_timeout, poll_interval=poll_interval,
                detached_tunnel=detached_tunnel,
            )
    except _StepFailed as exc:
        log.warning("repl %s failed: %s", spec.full_name, str(exc).splitlines()[0])
        return dataclasses.replace(
            _base_result(plan, spec, local_port, stderr=str(exc), **exc.fields), local_port=None)
    _tunnels[result] = tunnel
    if syncer is not None:
        await syncer.start()
        _syncs[result] = syncer
    log.info("repl %s: %s -> %s", spec.full_name, result.local_url and
             result.local_url.split("?")[0], result.remote_url and result.remote_url.split("?")[0])
    return result


async def end_repl(result: ReplResult, timeout: float = 60.0) -> RunResult:
    """End a session started by `dispatch_repl`.

    Stops its file sync, closes the tunnel, and stops the notebook (plain host: SIGTERM,
    then SIGKILL, to its process session) or cancels its SLURM job. Safe to call twice and
    on failed results.

    Args:
        result: The session to end, as returned by `dispatch_repl`.
        timeout: Seconds allowed for each SSH step.

    Returns:
        `ok` when everything was stopped; otherwise `stderr` says what could not be.

    Raises:
        InvalidValueError: `result` is not a `ReplResult`.
    """
    if not isinstance(result, ReplResult):
        raise InvalidValueError(f"end_repl needs a ReplResult, got {result!r}")
    errors: list[str] = []
    syncer = _syncs.pop(result, None)
    if syncer is not None:
        await syncer.stop()
    tunnel = _tunnels.pop(result, None)
    if tunnel is not None:
        await close_tunnel(tunnel)
    elif result.tunnel_pid is not None and result.local_port is not None:
        if result.tunnel_pid == os.getpid():
            await close_tunnel(result.local_port)
        else:
            await close_tunnel(TunnelResult(0, result.tunnel_pid, [], detached=True,
                                            local_port=result.local_port))
    if result.is_slurm:
        if result.job_id is not None:
            res = await cancel(result.job_id, result.ssh_host, timeout=timeout)
            gone = "already completing or completed" in res.stderr or (
                "Invalid job id" in res.stderr)  # ended before us: nothing left to stop
            if not res.ok and not gone:
                errors.append(f"scancel {result.job_id} on {result.ssh_host}: "
                              f"{res.stderr.strip() or res.returncode}")
    elif result.remote_pid is not None:
        res = await _stop_plain(result.ssh_host, result.remote_pid,
                                _bootstrap_path(result.log_path), timeout)
        if not res.ok:
            errors.append(f"stopping pid {result.remote_pid} on {result.ssh_host}: "
                          f"{(res.stdout + res.stderr).strip() or res.returncode}")
    if errors:
        return RunResult(1, "", "end_repl: " + "; ".join(errors) + "\n")
    return RunResult(0, "", "")

