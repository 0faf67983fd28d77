"""Planning a Jupyter session: everything decided before anything remote happens.

The work dir, log and bootstrap paths, the launch command, the token and the notebook's
environment, plus the argument checks `dispatch_repl` runs before it touches a host.
"""

from __future__ import annotations

import posixpath
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InvalidValueError
from ..placement import (
    Cluster,
    DispatchConfig,
    GpuRef,
    JobSpec,
    JuiceFSMount,
    PlainHostConfig,
    RemoteInventory,
    SlurmHostConfig,
)

__all__ = [
    "DEFAULT_JUPYTER_COMMAND",
    "DEFAULT_TIME_LIMIT",
    "JUPYTER_COMMAND_ANNOTATION",
    "TIME_LIMIT_ANNOTATION",
    "Plan",
    "bootstrap_path",
    "claim_candidates",
    "juicefs_mount",
    "local_port_free",
    "make_plan",
    "work_dir_for",
]

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


@dataclass(frozen=True)
class Plan:
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
    #: Names this session among all others of the process (results may otherwise be equal).
    session_id: str = ""
    #: GPU UUIDs (the solver's free ones, in order) the bootstrap claims ``gpus`` of and
    #: pins the notebook to; empty: nothing is claimed or pinned (see `claim_candidates`).
    claim_from: tuple[str, ...] = ()


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


def bootstrap_path(log_path: str) -> str:
    """The bootstrap script of a plain-host session: next to its log, ``.bootstrap.sh``."""
    base = log_path[: -len(".log")] if log_path.endswith(".log") else log_path
    return base + ".bootstrap.sh"


def local_port_free(port: int) -> bool:
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


def juicefs_mount(config: DispatchConfig, cluster: Cluster) -> JuiceFSMount | None:
    """The JuiceFS mount a SLURM session's job sets up, if the config and cluster have one."""
    if not (config.mount and cluster.mount):
        return None
    return JuiceFSMount(redis_url=config.mount, mount_point=cluster.mount,
                        cache_dir=cluster.cache_dir, cache_size=cluster.cache_size,
                        name=cluster.name)


def claim_candidates(host_cfg: PlainHostConfig | SlurmHostConfig, gpus: int,
                     free_gpus: Sequence[GpuRef]) -> tuple[str, ...]:
    """The GPU UUIDs a session claims ``gpus`` of: a plain host's GPUs the solver found free.

    Nothing (no claim, no pinning) on SLURM (the scheduler pins), for CPU-only work, and
    when the solver named no free GPU (``check_availability=False``: which GPUs are free
    is unknown, and pinning blind could pick a busy one).
    """
    if isinstance(host_cfg, SlurmHostConfig) or gpus < 1:
        return ()
    return tuple(g.uuid for g in free_gpus)


def make_plan(spec: JobSpec, dispatch_config: DispatchConfig, solved_host: str,
              host_cfg: PlainHostConfig | SlurmHostConfig, partition: str | None, gpus: int,
              gres_type: str | None, extra_uv_groups: list[str] | None,
              jupyter_command: str | None, *, free_gpus: Sequence[GpuRef] = ()) -> Plan:
    """Decide paths, command, token and environment for a session on ``solved_host``;
    ``free_gpus`` (the solver's) are what a plain-host session claims ``gpus`` of.

    Raises:
        InvalidValueError: The launch command is empty or not a string.
    """
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
    return Plan(
        selected_host=solved_host, ssh_host=host_cfg.ssh, host_config=host_cfg, cluster=cluster,
        work_dir=work_dir_for(cluster, spec),
        log_path=posixpath.join(cluster.log, f"{spec.full_name}.log"),
        partition=partition, gpus=gpus, gres_type=gres_type,
        token=token, command=command, uv_groups=groups,
        env=_session_env(dispatch_config, token),
        session_id=secrets.token_hex(8),
        claim_from=claim_candidates(host_cfg, gpus, free_gpus),
    )
