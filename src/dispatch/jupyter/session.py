"""Steps both kinds of session share: reading the log until Jupyter is up, forwarding the
port, and how a failed step and a started session are reported to `dispatch_repl`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from ..results import TunnelResult
from ..ssh import forward_port, run
from . import parse as rp
from .plan import Plan
from .scripts import LOG_MARKER, log_poll_command

__all__ = ["LogReader", "Started", "StepFailed", "fail_text", "forward", "wait_for_server"]


class StepFailed(Exception):
    """A remote step failed: becomes ``ok=False`` with this message (and ``fields``)."""

    def __init__(self, message: str, **fields: object) -> None:
        super().__init__(message)
        self.fields = fields


@dataclass(frozen=True)
class Started:
    """What a session start found out, for `dispatch_repl` to put in its `ReplResult`."""

    tunnel: TunnelResult
    remote_port: int
    token: str
    remote_url: str
    local_url: str
    remote_pid: int | None = None
    job_id: int | None = None
    allocated_hostname: str | None = None
    #: The GPU UUIDs the session claimed and pinned the notebook to (plain hosts).
    gpus: tuple[str, ...] = ()


def fail_text(step: str, detail: str, log_path: str, tail: str = "") -> str:
    """The ``stderr`` of a failed session: the step, why, the log path and its last lines."""
    msg = f"dispatch_repl: {step} failed: {detail.strip()}\nlog: {log_path}\n"
    if tail.strip():
        msg += f"--- last lines of the log ---\n{tail.rstrip()}\n"
    return msg


@dataclass
class LogReader:
    """Reads a remote log incrementally (by byte offset) and reports whether a process or
    job is still alive, in one SSH round trip per poll."""

    host: str
    path: str
    login_shell: bool = False  # True where squeue & co. come from the login profile
    offset: int = 0
    text: str = ""

    async def poll(self, alive_check: str, io_timeout: float) -> str:
        """Append new log text; return the alive-check's output (``alive``/``dead``/...)."""
        res = await run(log_poll_command(self.path, self.offset, alive_check), self.host,
                        timeout=io_timeout, login_shell=self.login_shell)
        if not res.ok:
            raise StepFailed(f"reading {self.path} on {self.host}: rc={res.returncode} "
                             f"{res.stderr.strip()}")
        chunk, sep, trailer = res.stdout.rpartition(f"\n{LOG_MARKER} ")
        if not sep:
            raise StepFailed(f"unexpected output reading {self.path}: {res.stdout[-200:]!r}")
        fields = trailer.split()
        if fields and fields[0].isdigit() and int(fields[0]) >= self.offset:
            self.text += chunk
            self.offset = int(fields[0])
        return " ".join(fields[1:])


async def wait_for_server(
    reader: LogReader, alive_check: str, deadline: float, step: str, *,
    poll_every: float, io_timeout: float, on_state: str = "alive",
) -> rp.JupyterStartup:
    """Poll the log until Jupyter prints its URL; fail fast when the process/job is gone."""
    while True:
        remaining = deadline - time.monotonic()
        try:
            state = await reader.poll(alive_check,
                                      io_timeout=max(5.0, min(io_timeout, remaining + 5.0)))
        except StepFailed as exc:
            raise StepFailed(fail_text(step, str(exc), reader.path,
                                       rp.log_tail(reader.text))) from exc
        started = rp.parse_jupyter_log(reader.text)
        if started is not None:
            return started
        if state and state != on_state and state != "":
            # Died: read what it wrote last (the process may have written after the poll).
            with contextlib.suppress(StepFailed):
                await reader.poll("echo dead", io_timeout=io_timeout)
            why = rp.jupyter_failure(reader.text)
            detail = f"Jupyter exited before printing its URL ({state})"
            if why:
                detail += f": {why}"
            raise StepFailed(fail_text(step, detail, reader.path, rp.log_tail(reader.text)))
        if time.monotonic() >= deadline:
            raise StepFailed(fail_text(
                step, "Jupyter did not print its URL within startup_timeout", reader.path,
                rp.log_tail(reader.text)))
        await asyncio.sleep(min(poll_every, max(0.0, deadline - time.monotonic())))


async def forward(plan: Plan, local_port: int, target: str, port: int, *,
                  detached: bool, io_timeout: float) -> TunnelResult:
    """Forward 127.0.0.1:``local_port`` to ``target:port`` via the plan's SSH host."""
    tunnel = await forward_port(plan.ssh_host, local_port, port, remote_host=target,
                                detached=detached, timeout=io_timeout)
    if not tunnel.ok:
        raise StepFailed(fail_text(
            "forwarding the port",
            f"127.0.0.1:{local_port} -> {target}:{port} via {plan.ssh_host}: "
            f"{tunnel.stderr.strip()}", plan.log_path))
    return tunnel
