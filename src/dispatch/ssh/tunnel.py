"""forward_port / close_tunnel: local port forwards over the pool, in-process or detached.

An in-process tunnel listens on 127.0.0.1:local_port in this process, over the pooled
connection (its ``pid`` is ``os.getpid()``). A detached tunnel is held by a helper process
(``python -m dispatch.ssh.tunnel``, daemonized, with its own connection) that outlives the
caller; killing its pid closes the tunnel. Both are verified before returning: a direct
channel to remote_host:remote_port through the connection, and a TCP connect to the
local listener.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh

from .._validate import check_port, check_seconds
from ..errors import InvalidValueError
from ..results import TunnelResult
from .context import current_pool
from .errors import ConnectError
from .pool import Pool

__all__ = ["forward_port", "close_tunnel"]

log = logging.getLogger(__name__)

_VERIFY_TIMEOUT = 10.0
_SETTLE_TIMEOUT = 1.0  # how long the verification connection may take to close


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read and discard until EOF."""
    while await reader.read(65536):
        pass


@dataclass
class _Tunnel:
    """An in-process tunnel: the asyncssh listener and the pin on its connection."""

    listener: asyncssh.SSHListener
    unpin: Callable[[], None]

    def close(self) -> None:
        """Stop listening and unpin the connection."""
        self.listener.close()
        self.unpin()

    async def wait_closed(self) -> None:
        """Wait until the listener is closed."""
        await self.listener.wait_closed()


def _valid_port(value: object) -> bool:
    return _passes(check_port, value)


def _passes(check: Callable[[str, object], object], value: object) -> bool:
    """Whether a shared validator accepts ``value`` (forward_port reports, never raises)."""
    try:
        check("value", value)
    except InvalidValueError:
        return False
    return True


def ssh_equivalent(
    host: str, local_port: object, remote_host: str, remote_port: object
) -> list[str]:
    """The OpenSSH command line doing the same forward (what ``command`` shows in-process)."""
    return ["ssh", "-N", "-L", f"127.0.0.1:{local_port}:{remote_host}:{remote_port}", host]


async def _verify(
    conn: asyncssh.SSHClientConnection, host: str, local_port: int, remote_host: str,
    remote_port: int,
) -> str | None:
    """None if the forward works end to end, else a message saying which side failed."""
    try:
        _, writer = await asyncio.wait_for(
            conn.open_connection(remote_host, remote_port), _VERIFY_TIMEOUT
        )
        writer.close()
    except asyncssh.ChannelOpenError as exc:
        return (
            f"dispatch: forward_port: {host} cannot connect to {remote_host}:{remote_port} "
            f"({exc.reason}); is anything listening there?"
        )
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        return f"dispatch: forward_port: testing {remote_host}:{remote_port} via {host}: {exc}"
    try:
        lr, lw = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", local_port), _VERIFY_TIMEOUT
        )
        try:
            # Half-close and wait (briefly) for the far side to close too: the forwarded
            # test connection is then torn down, not left to leak if the loop ends now.
            lw.write_eof()
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(_drain(lr), _SETTLE_TIMEOUT)
        finally:
            lw.close()
            with contextlib.suppress(OSError):
                await lw.wait_closed()
    except (TimeoutError, OSError) as exc:
        return f"dispatch: forward_port: local listener 127.0.0.1:{local_port} not reachable: {exc}"
    return None


def _bad_args(
    host: object, local_port: object, remote_port: object, remote_host: object,
    timeout: object = 30.0,
) -> str | None:
    if not isinstance(host, str) or not host or host.startswith("-"):
        return f"dispatch: forward_port: invalid host {host!r}"
    if not _passes(check_seconds, timeout):
        return f"dispatch: forward_port: invalid timeout {timeout!r} (a positive number of seconds)"
    for name, port in (("local_port", local_port), ("remote_port", remote_port)):
        if not _valid_port(port):
            return f"dispatch: forward_port: invalid {name} {port!r} (an int in 1..65535)"
    if (
        not isinstance(remote_host, str)
        or not remote_host
        or remote_host.startswith("-")
        or any(c.isspace() for c in remote_host)
    ):
        return f"dispatch: forward_port: invalid remote_host {remote_host!r}"
    return None


async def _open_in_pool(
    pool: Pool, host: str, local_port: int, remote_host: str, remote_port: int
) -> tuple[_Tunnel | None, int, str]:
    """Listen and verify on ``pool``'s connection to ``host``: (tunnel, returncode, stderr)."""
    if local_port in pool.tunnels:
        return None, 1, f"dispatch: forward_port: local port {local_port} is already forwarded\n"
    try:
        conn, unpin = await pool.pin(host)
    except ConnectError as exc:
        return None, 255, f"{exc}\n"
    try:
        listener = await conn.forward_local_port("127.0.0.1", local_port, remote_host, remote_port)
    except OSError as exc:
        unpin()
        why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound: {exc}"
        return None, 1, f"dispatch: forward_port: local port 127.0.0.1:{local_port} {why}\n"
    except asyncssh.Error as exc:
        unpin()
        return None, 255, f"dispatch: forward_port: {host}: {exc}\n"
    except BaseException:  # cancelled or timed out: nothing may stay pinned
        unpin()
        raise
    tunnel = _Tunnel(listener, unpin)
    try:
        err = await _verify(conn, host, local_port, remote_host, remote_port)
    except BaseException:  # timed out or cancelled while verifying: free the local port
        tunnel.close()
        raise
    if err is not None:
        tunnel.close()
        return None, 1, err + "\n"
    pool.tunnels[local_port] = tunnel
    log.debug("forwarding 127.0.0.1:%d -> %s:%s:%d", local_port, host, remote_host, remote_port)
    return tunnel, 0, ""


async def forward_port(
    host: str,
    local_port: int,
    remote_port: int,
    *,
    remote_host: str = "localhost",
    detached: bool = False,
    timeout: float = 30.0,
) -> TunnelResult:
    """Start a background SSH tunnel forwarding local_port -> remote localhost:remote_port.

    The forward listens on 127.0.0.1:local_port and is verified by a real connection
    through it before this returns. Occupied local port or bad ports: a failed
    TunnelResult (returncode != 0) with a clear stderr. Close it with
    ``close_tunnel``.

    Args:
        host: SSH host (name, alias, or user@host).
        local_port: local port to bind.
        remote_port: remote port on localhost to forward to.
        remote_host: where the host connects to (default ``localhost``; e.g. a compute
            node reachable from a login node).
        detached: hold the tunnel in a daemonized helper process that outlives this one;
            ``pid`` is that process (killing it closes the tunnel). Otherwise the tunnel
            lives in this process over the pooled connection and ``pid`` is ``os.getpid()``.
        timeout: seconds to wait for the tunnel to be up and verified.

    Returns:
        TunnelResult with PID on success; ``command`` is what was started (the helper's
        argv when detached, the equivalent ``ssh -L`` command line otherwise).
    """
    command = ssh_equivalent(str(host), local_port, str(remote_host), remote_port)
    bad = _bad_args(host, local_port, remote_port, remote_host, timeout)
    info: dict[str, Any] = {
        "host": host if isinstance(host, str) else None,
        "local_port": local_port if _valid_port(local_port) else None,
        "remote_port": remote_port if _valid_port(remote_port) else None,
        "remote_host": remote_host if isinstance(remote_host, str) else "localhost",
        "detached": detached,
    }
    if bad is not None:
        return TunnelResult(2, None, command, bad + "\n", **info)
    assert isinstance(local_port, int) and isinstance(remote_port, int)
    if detached:
        return await _start_detached(host, local_port, remote_host, remote_port, timeout, info)
    try:
        async with asyncio.timeout(timeout):
            _, rc, err = await _open_in_pool(
                current_pool(), host, local_port, remote_host, remote_port
            )
    except TimeoutError:
        rc, err = -1, f"dispatch: forward_port: timed out after {timeout}s\n"
    return TunnelResult(rc, os.getpid() if rc == 0 else None, command, err, **info)


async def _start_detached(
    host: str,
    local_port: int,
    remote_host: str,
    remote_port: int,
    timeout: float,
    info: dict[str, Any],
) -> TunnelResult:
    pool = current_pool()
    argv = [
        sys.executable, "-m", "dispatch.ssh.tunnel",
        "--host", host, "--local-port", str(local_port),
        "--remote-host", remote_host, "--remote-port", str(remote_port),
        "--ssh-config", str(pool.effective_ssh_config()),
    ]
    kh = pool.effective_known_hosts()
    if kh is not None:
        argv += ["--known-hosts", str(kh)]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        return TunnelResult(1, None, argv, f"dispatch: cannot start tunnel helper: {exc}\n", **info)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    except TimeoutError:
        line = b""
        err = f"dispatch: forward_port: tunnel helper not ready after {timeout}s\n"
    else:
        err = "dispatch: forward_port: tunnel helper exited without reporting\n"
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 5.0)
    text = line.decode("utf-8", "replace").strip()
    if text.startswith("READY "):
        pid = int(text.split()[1])
        return TunnelResult(0, pid, argv, "", **info)
    if text.startswith("ERROR "):
        rc_s, _, msg = text[len("ERROR "):].partition(" ")
        rc = int(rc_s) if rc_s.lstrip("-").isdigit() else 1
        return TunnelResult(rc, None, argv, msg.replace("\\n", "\n") + "\n", **info)
    return TunnelResult(1, None, argv, err, **info)


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie (its parent has not reaped it yet) no longer holds the tunnel
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


async def close_tunnel(tunnel: TunnelResult | int) -> bool:
    """Close a tunnel started by ``forward_port`` (a TunnelResult or its local port).

    In-process tunnels stop listening; a detached helper is sent SIGTERM and waited for.

    Args:
        tunnel: the ``TunnelResult`` from ``forward_port``, or the local port of an
            in-process tunnel of the current pool.

    Returns:
        True if a tunnel was closed, False if there was nothing (left) to close.
    """
    if isinstance(tunnel, TunnelResult) and tunnel.detached:
        if tunnel.pid is None:
            return False
        try:
            os.kill(tunnel.pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + 5.0
        while not _pid_gone(tunnel.pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(tunnel.pid, signal.SIGKILL)
                break
            await asyncio.sleep(0.02)
        return True
    port = tunnel.local_port if isinstance(tunnel, TunnelResult) else tunnel
    pool = current_pool()
    rec = pool.tunnels.pop(port, None) if isinstance(port, int) else None
    if rec is None:
        return False
    rec.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(rec.wait_closed(), 5.0)
    return True


# ---------------------------------------------------------------------------------------
# the detached helper: python -m dispatch.ssh.tunnel --host H --local-port L ...
# ---------------------------------------------------------------------------------------


def _report(line: str) -> None:
    os.write(1, (line.replace("\n", "\\n") + "\n").encode("utf-8", "replace"))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


async def _hold(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    async with Pool(
        ssh_config=args.ssh_config, known_hosts=args.known_hosts, idle_timeout=None
    ) as pool:
        tunnel, rc, err = await _open_in_pool(
            pool, args.host, args.local_port, args.remote_host, args.remote_port
        )
        if tunnel is None:
            _report(f"ERROR {rc} {err.strip()}")
            return 1
        _report(f"READY {os.getpid()}")
        conn = await pool.connect(args.host)
        closed = asyncio.ensure_future(conn.wait_closed())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([closed, stopped], return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        stopped.cancel()
        tunnel.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the detached helper: fork away from the caller, then hold the tunnel."""
    p = argparse.ArgumentParser(prog="python -m dispatch.ssh.tunnel")
    p.add_argument("--host", required=True)
    p.add_argument("--local-port", type=int, required=True)
    p.add_argument("--remote-port", type=int, required=True)
    p.add_argument("--remote-host", default="localhost")
    p.add_argument("--ssh-config")
    p.add_argument("--known-hosts")
    p.add_argument("--foreground", action="store_true", help="do not daemonize")
    args = p.parse_args(argv)
    if not args.foreground:
        if os.fork() > 0:  # the launcher exits; the caller reaps it
            os._exit(0)
        with contextlib.suppress(OSError):
            os.setsid()
        os.chdir("/")
    try:
        return asyncio.run(_hold(args))
    except Exception as exc:  # report instead of a traceback nobody sees
        with contextlib.suppress(OSError):
            _report(f"ERROR 1 dispatch: tunnel helper failed: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
