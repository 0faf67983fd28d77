"""Result types of the SSH half of the API (frozen dataclasses, each with an ``ok`` property)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RunResult", "TunnelResult"]


@dataclass(frozen=True)
class RunResult:
    """Result of a remote command execution.

    ``returncode`` follows ``ssh``: the remote exit status (128 + N when the remote
    command was killed by signal N), 255 when the connection could not be made, -1 when
    ``timeout`` expired (the remote process tree was killed). Output is decoded as UTF-8
    with replacement characters. When the connection broke after the command started,
    ``may_have_run`` is True (returncode 255): the command was *not* re-run, because it
    may already have had its effect. ``truncated`` is True when ``run(max_output=N)``
    kept only the first N bytes of stdout or stderr.
    """

    returncode: int
    stdout: str
    stderr: str
    may_have_run: bool = field(default=False, kw_only=True)
    truncated: bool = field(default=False, kw_only=True)  # run(max_output=N) dropped output

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.returncode == 0


@dataclass(frozen=True)
class TunnelResult:
    """Result of starting an SSH local port forward.

    ``pid`` is the process that holds the tunnel: this process for an in-process tunnel,
    the helper process for a detached one (killing it closes the tunnel).
    """

    returncode: int
    pid: int | None
    command: list[str]
    stderr: str = ""
    local_port: int | None = field(default=None, kw_only=True)
    host: str | None = field(default=None, kw_only=True)
    remote_host: str = field(default="localhost", kw_only=True)
    remote_port: int | None = field(default=None, kw_only=True)
    detached: bool = field(default=False, kw_only=True)

    @property
    def ok(self) -> bool:
        """True when the tunnel is listening and a test connection went through it."""
        return self.returncode == 0
