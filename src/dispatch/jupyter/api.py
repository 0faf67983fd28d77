"""Remote Jupyter sessions: `dispatch_repl` starts one, `end_repl` ends it.

``dispatch_repl`` solves the hardware request with interactive semantics, puts the code in
the work dir ``{cluster.work}/{project}/{group}/{name}``, starts Jupyter there and forwards
``local_port`` on this machine to it, so ``ReplResult.local_url`` opens in a browser here:

- plain host: the repo is shipped (``dirty=True``: with uncommitted and untracked files),
  a bootstrap script is written next to the log and started detached (``setsid nohup``);
  for GPU work it first claims GPUs the solver found free (a ``flock`` per GPU UUID under
  ``~/.dispatch/gpu-claims``, held by the session's processes) and pins Jupyter to them
  with ``CUDA_VISIBLE_DEVICES``, so two sessions never share a GPU;
- SLURM host: a packed job runs Jupyter on a compute node; the tunnel goes through the
  login node to the allocated node.

Jupyter's token is generated here and given to the notebook as ``JUPYTER_TOKEN`` (so it
never appears in the log); the log is still parsed for the URL to know the server is up
and on which port. Remote failures return ``ok=False`` with a stderr naming the failed step
and the log; invalid arguments and unsatisfiable requests raise (``InvalidValueError``,
``SolveError``, ``ShipError``, ``SubmitError``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .._validate import check_port, check_seconds
from ..errors import InvalidValueError
from ..placement import (
    AvailabilitySource,
    DispatchConfig,
    HardwareRequest,
    JobSpec,
    SlurmHostConfig,
    solve_or_raise,
)
from ..results import RunResult, TunnelResult
from ..slurm import cancel
from ..ssh import PoolKey, close_tunnel, current_pool
from .plain import plain_session, stop_plain
from .plan import (
    DEFAULT_TIME_LIMIT,
    TIME_LIMIT_ANNOTATION,
    Plan,
    bootstrap_path,
    local_port_free,
    make_plan,
)
from .session import Started, StepFailed
from .slurm import slurm_session
from .sync import FileSync

__all__ = ["ReplResult", "dispatch_repl", "end_repl"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplResult:
    """Result of launching an interactive Jupyter REPL session.

    ``remote_pid`` is the notebook server's PID (plain hosts); ``remote_url`` the URL on the
    remote side (the compute node's name for SLURM); ``local_url`` the forwarded URL on this
    machine; ``tunnel_pid`` the process holding the tunnel (this one unless detached);
    ``mailbox_job_id`` the JobSpec id of the session. ``stderr`` says what failed.
    ``session_id`` tells this session apart from any other (``end_repl`` finds its tunnel
    and file sync by it). ``gpus``: on a plain host, the UUIDs of the GPUs the session
    claimed and pinned the notebook to (its ``CUDA_VISIBLE_DEVICES``, in that order);
    empty on SLURM, for CPU-only work, and when availability was not checked (not pinned).
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
    session_id: str | None = None
    gpus: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A result rebuilt from JSON (a CLI, another process) brings a list.
        object.__setattr__(self, "gpus", tuple(self.gpus))


# --- live sessions: per pool, keyed by session id ----------------------------------------


@dataclass
class _Live:
    """What a started session holds in this process: its tunnel record and file sync."""

    tunnel: TunnelResult
    syncer: FileSync | None = None


async def _forget_sessions(sessions: dict[str, _Live]) -> None:
    """Close hook of `_SESSIONS`: the pool is closing, so its sessions' syncs stop.

    Their in-process tunnels are the pool's own and close with it right after this hook;
    detached tunnels outlive the pool by design (``end_repl`` can still end them).
    """
    live = list(sessions.values())
    sessions.clear()
    for session in live:
        if session.syncer is not None:
            await session.syncer.stop()


#: The live sessions started in a pool (session id -> what they hold); dies with the pool.
_SESSIONS: PoolKey[dict[str, _Live]] = PoolKey("jupyter sessions", dict, _forget_sessions)


def _remember(result: ReplResult, tunnel: TunnelResult) -> _Live:
    """Record a started session in the current pool under its (unique) session id."""
    assert result.session_id, "a started session has a session id"
    live = _Live(tunnel)
    current_pool().registry.get(_SESSIONS)[result.session_id] = live
    return live


def _take(result: ReplResult) -> _Live | None:
    """Remove and return what ``result``'s session holds in the current pool, if anything."""
    sessions = current_pool().registry.peek(_SESSIONS)
    if sessions is None or not result.session_id:
        return None
    return sessions.pop(result.session_id, None)


def _base_result(plan: Plan, spec: JobSpec, local_port: int, **fields: object) -> ReplResult:
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
        "session_id": plan.session_id,
    }
    values.update(fields)
    return ReplResult(**values)  # type: ignore[arg-type]


def _started_result(plan: Plan, spec: JobSpec, local_port: int, started: Started) -> ReplResult:
    return _base_result(
        plan, spec, local_port, ok=True, job_id=started.job_id,
        allocated_hostname=started.allocated_hostname, remote_pid=started.remote_pid,
        remote_port=started.remote_port, token=started.token, remote_url=started.remote_url,
        local_url=started.local_url, tunnel_pid=started.tunnel.pid, gpus=started.gpus)


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
    availability: AvailabilitySource | None = None,
) -> ReplResult:
    """Dispatch an interactive Jupyter session on selected infrastructure.

    Solves `hardware` (interactive: plain hosts first), ships the repo, starts Jupyter in
    `{cluster.work}/{project}/{group}/{name}` and forwards `127.0.0.1:local_port` to it.
    On a SLURM host the code is packed into a job and the tunnel runs through the login
    node to the allocated node; cancelling while waiting cancels the job. GPU work on a
    plain host claims `hardware.min_chips` of the GPUs the solver found free and pins
    Jupyter to them (`CUDA_VISIBLE_DEVICES`, by UUID; see `ReplResult.gpus`): a GPU another
    session holds counts as busy for the solver, and one taken in the meantime by a
    concurrent session is skipped for the next free one.

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
        availability: Replaces the SSH-backed source of live facts the solver asks (for
            example `SshAvailability(nvidia_smi=...)` for an nvidia-smi off the PATH).

    Returns:
        The session: URLs, host, PID or job id, and the token in `local_url`. When a remote
        step failed, `ok` is False and `stderr` names the step and shows the log tail
        (one line when fewer GPUs than asked could be claimed: concurrent sessions took
        them); nothing is left running then.

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
    check_port("local_port", local_port)
    check_seconds("timeout", timeout)
    check_seconds("startup_timeout", startup_timeout)
    check_seconds("slurm_wait_timeout", slurm_wait_timeout, optional=True)
    check_seconds("poll_interval", poll_interval)
    check_seconds("slurm_poll_interval", slurm_poll_interval)
    check_seconds("sync_interval", sync_interval)
    if extra_uv_groups is not None and (isinstance(extra_uv_groups, str) or not all(
            isinstance(g, str) for g in extra_uv_groups)):
        raise InvalidValueError(f"extra_uv_groups must be a list of names: {extra_uv_groups!r}")
    if not local_port_free(local_port):
        raise InvalidValueError(f"local_port {local_port} is already in use on 127.0.0.1")

    request = dataclasses.replace(hardware, interactive=True)
    solved = await solve_or_raise(request, dispatch_config, check_availability, timeout,
                                  availability=availability)
    assert solved.result is not None and solved.host_name is not None
    assert solved.host_config is not None
    plan = make_plan(spec, dispatch_config, solved.host_name, solved.host_config,
                     solved.partition, solved.result.count, solved.result.gres_type,
                     extra_uv_groups, jupyter_command, free_gpus=solved.result.free_gpus)
    if not solved.is_slurm and plan.gpus and not plan.claim_from:
        log.info("repl %s: %d GPU(s) on %s not pinned: no free GPUs known (availability "
                 "not checked)", spec.full_name, plan.gpus, plan.selected_host)
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
            started = await slurm_session(
                plan, spec, local_port, dispatch_config, dirty=dirty, repo_path=repo_path,
                mem=mem, io_timeout=timeout, startup_timeout=startup_timeout,
                slurm_wait_timeout=slurm_wait_timeout, poll_interval=poll_interval,
                slurm_poll_interval=slurm_poll_interval, detached_tunnel=detached_tunnel,
                time_limit=time_limit or plan.host_config.annotations.get(
                    TIME_LIMIT_ANNOTATION, DEFAULT_TIME_LIMIT),
            )
        else:
            started = await plain_session(
                plan, spec, local_port, dirty=dirty, repo_path=repo_path, io_timeout=timeout,
                startup_timeout=startup_timeout, poll_interval=poll_interval,
                detached_tunnel=detached_tunnel,
            )
    except StepFailed as exc:
        log.warning("repl %s failed: %s", spec.full_name, str(exc).splitlines()[0])
        return dataclasses.replace(
            _base_result(plan, spec, local_port, stderr=str(exc), **exc.fields), local_port=None)
    result = _started_result(plan, spec, local_port, started)
    live = _remember(result, started.tunnel)
    if syncer is not None:
        await syncer.start()
        live.syncer = syncer
    log.info("repl %s: %s -> %s%s", spec.full_name, result.local_url and
             result.local_url.split("?")[0], result.remote_url and result.remote_url.split("?")[0],
             f" (GPUs {','.join(result.gpus)})" if result.gpus else "")
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
    live = _take(result)
    if live is not None and live.syncer is not None:
        await live.syncer.stop()
    if live is not None:
        await close_tunnel(live.tunnel)
    elif result.tunnel_pid is not None and result.local_port is not None:
        if result.tunnel_pid == os.getpid():
            # A result made by hand: close what listens on its port. A session's own
            # in-process tunnel is gone once it is not live (ended, or its pool closed):
            # the port may belong to another session by now.
            if not result.session_id:
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
        res = await stop_plain(result.ssh_host, result.remote_pid,
                               bootstrap_path(result.log_path), timeout)
        if not res.ok:
            errors.append(f"stopping pid {result.remote_pid} on {result.ssh_host}: "
                          f"{(res.stdout + res.stderr).strip() or res.returncode}")
    if errors:
        return RunResult(1, "", "end_repl: " + "; ".join(errors) + "\n")
    return RunResult(0, "", "")

