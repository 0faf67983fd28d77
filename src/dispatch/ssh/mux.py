"""Riding the user's OpenSSH ControlMaster: ``run`` through ``ssh`` over the master's socket.

When the ssh config gives a host a ControlPath and a master listens there, the user has
already logged in (second factor included): ``run`` then goes through that master and
dispatch does not log in at all, so no code is asked and the site sees no new login.
This is what ``ssh`` itself does with the same config.

asyncssh cannot speak OpenSSH's multiplexing protocol (PROTOCOL.mux: a hello, then a
new-session request passing our stdin/stdout/stderr descriptors over the Unix socket).
Rather than re-implement it, each command runs OpenSSH's own client against the master
(``ssh -o ControlMaster=no -o BatchMode=yes ... -- command``): the reference
implementation of that protocol, correct across OpenSSH versions, for about one short
process per command. ``ProxyCommand=/bin/false`` makes sure that client never logs in by
itself when the master has gone: the call then falls back to dispatch's own login.
At most ``max_channels_per_connection`` commands run on a master at once (the master is
one connection: its sessions count against the server's MaxSessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

from ..results import RunResult
from .config import SSH_CONFIG_ENV, parse_host, read_host_option
from .kills import kill_script
from .output import Sink
from .pool import Pool
from .registry import PoolKey

__all__ = ["Master", "find_master", "master_gate", "run_via_master"]

log = logging.getLogger(__name__)

_PROBE_TIMEOUT = 10.0  # seconds for `ssh -G`
_KILL_TIMEOUT = 10.0
_SYSTEM_CONFIG = "/etc/ssh/ssh_config"
_NOT_REACHED = ("Control socket connect(", "mux_client_request_session")


@dataclass(frozen=True)
class Master:
    """How to reach one host through its master: the resolved ControlPath and ssh argv."""

    host: str
    control_path: str
    argv: tuple[str, ...]  # ssh ... host (the remote command goes after "--")

    def socket_id(self) -> tuple[int, int] | None:
        """Identity of the socket at the ControlPath (None: no socket there)."""
        try:
            st = os.stat(self.control_path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns) if stat.S_ISSOCK(st.st_mode) else None


# Per pool: host string -> its Master (None: the config gives it no ControlPath).
_MASTERS: PoolKey[dict[str, Master | None]] = PoolKey("ssh.mux_masters", dict)
_GATES: PoolKey[dict[str, asyncio.Semaphore]] = PoolKey("ssh.mux_gates", dict)
# Per pool: host string -> the socket that did not answer (a stale file left behind).
_STALE: PoolKey[dict[str, tuple[int, int]]] = PoolKey("ssh.mux_stale", dict)


def _ssh_argv(pool: Pool, host: str) -> list[str] | None:
    try:
        spec = parse_host(host)
    except ValueError:
        return None
    argv = ["ssh"]
    named = pool.ssh_config or (
        pool.effective_ssh_config() if os.environ.get(SSH_CONFIG_ENV) else None
    )
    if named is not None:
        argv += ["-F", str(named)]
    if spec.user:
        argv += ["-l", spec.user]
    if spec.port:
        argv += ["-p", str(spec.port)]
    return [*argv, spec.host]


def _mentions_control_path(pool: Pool, host: str) -> bool:
    """Cheap pre-check (Host blocks and Includes; Match blocks are not evaluated)."""
    try:
        alias = parse_host(host).host
    except ValueError:
        return False
    files = [pool.effective_ssh_config()]
    if pool.ssh_config is None and not os.environ.get(SSH_CONFIG_ENV):
        files.append(Path(_SYSTEM_CONFIG))  # ssh reads it too when no -F is given
    for f in files:
        value = read_host_option(f, alias, "ControlPath")
        if value and value.lower() != "none":
            return True
    return False


async def _resolve(pool: Pool, host: str) -> Master | None:
    """The host's expanded ControlPath, as ``ssh -G`` computes it (tokens, ~, Match)."""
    argv = _ssh_argv(pool, host)
    if argv is None or not _mentions_control_path(pool, host):
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            argv[0], "-G", *argv[1:],
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), _PROBE_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        log.debug("ssh -G for %s failed: %s", host, exc)
        return None
    if proc.returncode != 0:
        log.debug("ssh -G for %s: %s", host, err.decode(errors="replace").strip())
        return None
    path = None
    for line in out.decode(errors="replace").splitlines():
        name, _, value = line.partition(" ")
        if name == "controlpath":
            path = value.strip()
    if not path or path.lower() == "none":
        return None
    # Never start a master, never prompt, never log in without the master.
    ride = [
        argv[0], "-o", "ControlMaster=no", "-o", "BatchMode=yes",
        "-o", "ProxyCommand=/bin/false", "-o", f"ControlPath={path}", "-T", *argv[1:],
    ]
    return Master(host, path, tuple(ride))


async def find_master(pool: Pool, host: str) -> Master | None:
    """The master to run ``host``'s commands through, if the pool rides masters and one
    is listening at the host's ControlPath (resolved once per pool and host).

    Args:
        pool: the pool (``Pool(control_master=False)`` never rides a master).
        host: SSH host string.

    Returns:
        The ``Master``, or None to log in as usual.
    """
    if not pool.control_master:
        return None
    masters = pool.registry.get(_MASTERS)
    if host not in masters:
        masters[host] = await _resolve(pool, host)
    master = masters[host]
    if master is None:
        return None
    sock = master.socket_id()
    if sock is None or pool.registry.get(_STALE).get(host) == sock:
        return None
    return master


def master_gate(pool: Pool, host: str) -> asyncio.Semaphore:
    """The slots of ``host``'s master in ``pool``: sessions on it (commands, SFTP) at once
    are capped at ``max_channels_per_connection`` (the master is one connection)."""
    return pool.registry.get(_GATES).setdefault(
        host, asyncio.Semaphore(pool.max_channels_per_connection)
    )


async def _ssh(
    master: Master, command: str, data: bytes | None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *master.argv, "--", command,
        stdin=asyncio.subprocess.PIPE if data else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # Ctrl-C of the caller is ours to handle, not ssh's
    )


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5.0)


async def _kill_remote(master: Master, run_id: str) -> str | None:
    """Kill the remote tree tagged ``run_id`` through the master; None once confirmed."""
    command = f"exec /bin/sh -c {shlex.quote(kill_script(run_id))}"
    try:
        proc = await _ssh(master, command, None)
    except OSError as exc:
        return str(exc)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), _KILL_TIMEOUT)
    except TimeoutError:
        return f"no answer within {_KILL_TIMEOUT:g}s"
    finally:
        await _stop(proc)
    if proc.returncode == 0:
        return None
    return f"the kill ended with status {proc.returncode}: {err.decode(errors='replace').strip()}"


async def _pump(stream: asyncio.StreamReader | None, sink: Sink) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        sink.write(chunk)


async def run_via_master(
    pool: Pool,
    master: Master,
    command: str,
    run_id: str,
    data: bytes | None,
    timeout: float | None,
    out: Sink,
    err: Sink,
    *,
    said: float | None = None,
) -> tuple[RunResult, bool] | None:
    """Run the exec string ``command`` (tagged ``run_id``) through ``master``.

    Same results as a pooled ``run``: output streams into ``out``/``err``; timeouts and
    cancellation kill the remote tree (through the master). The remote exit status
    comes back as ssh's own.

    Args:
        pool: the pool whose channel cap bounds commands in flight on the master.
        master: from `find_master`.
        command: the exec request (``wrap_command``'s text).
        run_id: the command's ``DISPATCH_RUN_ID`` (what a kill looks for).
        data: bytes for the command's stdin (then EOF), or None.
        timeout: seconds for the whole call, or None.
        out: where stdout goes.
        err: where stderr goes (ssh's own messages included, as with ``ssh``).
        said: the timeout the caller gave, when ``timeout`` is what is left of it (the
            timeout message shows the caller's).

    Returns:
        The result and whether a retry could help; None when the master could not be
        reached and the command did not start (log in instead).
    """
    host = master.host
    gate = master_gate(pool, host)
    proc: asyncio.subprocess.Process | None = None
    errs = _Tee(err)
    try:
        async with asyncio.timeout(timeout):
            async with gate:
                proc = await _ssh(master, command, data)
                if data and proc.stdin is not None:
                    proc.stdin.write(data)
                    with contextlib.suppress(ConnectionError):
                        await proc.stdin.drain()
                    proc.stdin.close()
                await asyncio.gather(_pump(proc.stdout, out), _pump(proc.stderr, errs))
                await proc.wait()
    except TimeoutError:
        errs.flush()
        why = await _kill_remote(master, run_id) if proc is not None else None
        if proc is not None:
            await _stop(proc)
        what = "command" if proc is not None else "connecting"
        shown = timeout if said is None else said
        msg = f"dispatch: timed out after {shown}s ({what}) on {host}"
        if proc is not None:
            msg += (
                "; the remote process was killed" if why is None
                else f"; killing the remote process could not be confirmed ({why})"
            )
        return RunResult(-1, out.text(), err.text() + msg + "\n"), False
    except OSError as exc:  # ssh itself could not start: nothing ran
        return RunResult(255, "", f"dispatch: {host}: cannot run ssh: {exc}\n"), False
    except BaseException:
        if proc is not None and proc.returncode is None:
            kill = pool.spawn_cleanup(_kill_remote(master, run_id))
            await _stop(proc)
            with contextlib.suppress(BaseException):
                await asyncio.shield(kill)
        raise
    if proc.returncode == 255 and any(m in errs.head for m in _NOT_REACHED):
        log.debug("ControlMaster %s for %s not reached: %s", master.control_path, host,
                  errs.head.strip())
        sock = master.socket_id()
        if sock is not None and "Control socket connect(" in errs.head:
            pool.registry.get(_STALE)[host] = sock  # a dead master's file: skip it
        return None
    errs.flush()
    rc = proc.returncode if proc.returncode is not None else 255
    return RunResult(rc, out.text(), err.text(), truncated=out.truncated or err.truncated), False


class _Tee:
    """Passes stderr on after holding its first bytes back, to recognise ssh's own
    "master not reached" errors (then nothing of it reaches the caller's sink)."""

    truncated = False
    _HOLD = 4096

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.held = bytearray()
        self.passing = False

    @property
    def head(self) -> str:
        return bytes(self.held).decode("utf-8", errors="replace")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.passing:
            self.sink.write(data)
            return
        self.held += data
        if len(self.held) > self._HOLD:
            self.flush()

    def flush(self) -> None:
        if not self.passing:
            self.passing = True
            if self.held:
                self.sink.write(bytes(self.held))

    def text(self) -> str:
        return self.sink.text()

    def close(self) -> None:
        self.sink.close()
