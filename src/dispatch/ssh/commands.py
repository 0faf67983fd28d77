"""run, run_many, is_reachable: remote commands over the pool (login shell, quoting, timeouts).

Each command runs with a unique ``DISPATCH_RUN_ID`` in its environment. On timeout the
pool opens a second channel and kills every process carrying that marker (and their
sessions): the remote process and its children are gone when ``run`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shlex
import signal
from collections.abc import Iterable, Sequence

import asyncssh

from ..errors import InvalidValueError
from ..results import RunResult
from .pool import ConnectError, Lease, MayHaveRunError, Pool, _jitter, current_pool

__all__ = ["run", "run_many", "is_reachable"]

log = logging.getLogger(__name__)

_KILL_GRACE_ROUNDS = 5  # rounds of SIGTERM (0.1 s apart) before SIGKILL
_KILL_TIMEOUT = 10.0


def command_string(cmd: str | Sequence[str]) -> str:
    """The shell text for ``cmd``: a string as is, a list quoted argument by argument."""
    if isinstance(cmd, str):
        text = cmd
    elif isinstance(cmd, list | tuple):
        if not all(isinstance(a, str) for a in cmd):
            raise InvalidValueError(f"command arguments must be strings: {cmd!r}")
        text = shlex.join(cmd)
    else:
        raise InvalidValueError(f"command must be a str or list[str], not {type(cmd).__name__}")
    if "\x00" in text:
        raise InvalidValueError(f"command contains a NUL byte: {text!r}")
    if not text.strip():  # the remote shell would do nothing and report success
        raise InvalidValueError(f"command is empty: {cmd!r}")
    return text


def check_timeout(timeout: object, name: str = "timeout") -> None:
    """Raise InvalidValueError unless ``timeout`` is None or a positive number of seconds."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidValueError(f"{name} must be a positive number of seconds, not {timeout!r}")


def check_input(input: object) -> None:
    """Raise InvalidValueError unless ``input`` is None, bytes or str."""
    if input is not None and not isinstance(input, bytes | bytearray | memoryview | str):
        raise InvalidValueError(f"input must be bytes or str, not {type(input).__name__}")


def check_hosts(hosts: object) -> list[str]:
    """The hosts of ``run_many`` as a list; a bare string or non-str items are errors."""
    if isinstance(hosts, str | bytes) or not isinstance(hosts, Iterable):
        raise InvalidValueError(
            f"hosts must be a list of host strings, not {type(hosts).__name__}: {hosts!r}"
        )
    out = list(hosts)
    bad = [h for h in out if not isinstance(h, str)]
    if bad:
        raise InvalidValueError(f"hosts must be strings: {bad[0]!r} in {out!r}")
    return out


def wrap_command(text: str, run_id: str, *, login_shell: bool) -> str:
    """The exec request: the user's shell (login shell by default) running ``text``.

    sshd hands this string to the user's shell; ``exec env`` keeps one process (so exit
    status and signals are the command's own) and tags the tree with ``DISPATCH_RUN_ID``.
    """
    shell_args = '"$SHELL" -l -c' if login_shell else '"$SHELL" -c'
    return f"exec env DISPATCH_RUN_ID={run_id} {shell_args} {shlex.quote(text)}"


def kill_script(run_id: str) -> str:
    """Shell that kills every process tagged ``DISPATCH_RUN_ID=run_id`` and their sessions."""
    marker = shlex.quote(f"DISPATCH_RUN_ID={run_id}")
    return (
        f"m={marker}; i=0\n"
        "while :; do\n"
        '  pids=$(grep -lzxF -- "$m" /proc/[0-9]*/environ 2>/dev/null'
        " | sed -n 's#^/proc/\\([0-9][0-9]*\\)/environ$#\\1#p')\n"
        '  [ -n "$pids" ] || exit 0\n'
        f"  if [ $i -lt {_KILL_GRACE_ROUNDS} ]; then sig=TERM; else sig=KILL; fi\n"
        "  sids=$(ps -o sid= -p \"$(echo $pids | tr ' ' ,)\" 2>/dev/null | sort -u)\n"
        "  for s in $sids; do [ \"$s\" -gt 1 ] && pkill -$sig -s \"$s\" 2>/dev/null; done\n"
        "  kill -s $sig $pids 2>/dev/null\n"
        "  i=$((i+1)); [ $i -gt 40 ] && exit 1\n"
        "  sleep 0.1\n"
        "done\n"
    )


class _Collector(asyncssh.SSHClientSession[bytes]):
    """Collects a command's output and exit status; ``done`` resolves when the channel closed."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.lost: Exception | None = None
        self.closed = False
        self.done = done

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        (self.err if datatype == asyncssh.EXTENDED_DATA_STDERR else self.out).append(data)

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(
        self, signal: str, core_dumped: bool, msg: str, lang: str
    ) -> None:
        self.exit_signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        self.closed = True
        if not self.done.done():
            self.done.set_result(None)


def _decode(chunks: list[bytes]) -> str:
    return b"".join(chunks).decode("utf-8", errors="replace")


def _signal_code(name: str) -> int:
    try:
        return 128 + int(signal.Signals["SIG" + name.upper().removeprefix("SIG")])
    except KeyError:
        return 255


async def _kill_remote(host: str, run_id: str, pool: Pool | None = None) -> None:
    """Kill the process tree tagged ``run_id`` over a second channel (bounded in time)."""
    try:
        res = await asyncio.wait_for(
            _run_once(
                f"exec /bin/sh -c {shlex.quote(kill_script(run_id))}",
                host,
                None,
                login_shell=False,
                input=None,
                tag=False,
                pool=pool,
            ),
            _KILL_TIMEOUT,
        )
        if not res[0].ok:
            log.debug("remote kill on %s returned %s: %s", host, res[0].returncode, res[0].stderr)
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        log.debug("remote kill on %s failed: %s", host, exc)


async def _run_once(
    text: str,
    host: str,
    timeout: float | None,
    *,
    login_shell: bool,
    input: bytes | str | None,
    tag: bool = True,
    pool: Pool | None = None,
) -> tuple[RunResult, bool]:
    """One attempt. Returns the result and whether a retry could help (connection failure)."""
    pool = pool if pool is not None else current_pool()
    run_id = secrets.token_hex(8)
    command = wrap_command(text, run_id, login_shell=login_shell) if tag else text
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    session: _Collector | None = None
    lease: Lease | None = None
    chan: asyncssh.SSHClientChannel[bytes] | None = None

    def factory() -> _Collector:
        nonlocal session
        session = _Collector(done)
        return session

    async def opener(
        conn: asyncssh.SSHClientConnection,
    ) -> tuple[asyncssh.SSHClientChannel[bytes], asyncssh.SSHClientSession[bytes]]:
        return await conn.create_session(factory, command, encoding=None)

    data = input.encode("utf-8") if isinstance(input, str) else input and bytes(input)
    if tag:
        pool.running[run_id] = (host, asyncio.current_task())
    try:
        async with asyncio.timeout(timeout):
            lease, (chan, _) = await pool.open_channel(
                host, opener, started=lambda: session is not None
            )
            assert chan is not None
            if data:
                chan.write(data)
            chan.write_eof()
            await done
    except TimeoutError:
        partial_out = _decode(session.out) if session else ""
        partial_err = _decode(session.err) if session else ""
        started = session is not None
        if started:
            await _kill_remote(host, run_id, pool)
            if chan is not None:
                chan.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(chan.wait_closed(), 2.0)
        if lease is not None:
            lease.release()
        what = "command" if started else "connecting"
        msg = f"dispatch: timed out after {timeout}s ({what}) on {host}"
        if started:
            msg += "; the remote process was killed"
        return RunResult(-1, partial_out, partial_err + msg + "\n"), False
    except ConnectError as exc:
        return RunResult(255, "", f"{exc}\n"), exc.transient
    except MayHaveRunError as exc:
        msg = (
            f"dispatch: connection to {host} broke while starting the command ({exc}); "
            "it may have run and was not re-run\n"
        )
        return RunResult(255, "", msg, may_have_run=True), True
    except BaseException:
        # Cancelled by the caller (Ctrl-C in a blocking call, a task group failing): do
        # not leave the remote command running behind our back.
        kill = None
        mine = pool.running.pop(run_id, None) is not None  # else close() already killed it
        if session is not None and tag and not session.closed and mine:
            kill = pool._spawn_cleanup(_kill_remote(host, run_id, pool))
        if chan is not None:
            chan.close()
        if lease is not None:
            lease.release()
        if kill is not None:  # gone before the caller sees the cancellation (bounded)
            with contextlib.suppress(BaseException):
                await asyncio.shield(kill)
        raise
    finally:
        pool.running.pop(run_id, None)
    assert session is not None and lease is not None
    lease.release()
    out, err = _decode(session.out), _decode(session.err)
    if session.exit_status is not None:
        return RunResult(session.exit_status, out, err), False
    if session.exit_signal is not None:
        note = f"dispatch: remote command on {host} was killed by signal {session.exit_signal}\n"
        return RunResult(_signal_code(session.exit_signal), out, err + note), False
    lease.mark_dead() if not lease.alive else None
    why = f" ({session.lost})" if session.lost else ""
    note = (
        f"dispatch: connection to {host} was lost while the command was running{why}; "
        "it may have run (it was not re-run)\n"
    )
    return RunResult(255, out, err + note, may_have_run=True), True


async def run(
    cmd: str | list[str],
    host: str,
    timeout: float | None = None,
    *,
    login_shell: bool = True,
    input: bytes | str | None = None,
    retries: int = 0,
) -> RunResult:
    """Execute a command remotely on a host via SSH.

    Runs in the user's login shell (``$SHELL -l -c``) so profiles (module, PATH) are loaded;
    ``login_shell=False`` runs it in the plain (non-login) shell. A list command is quoted
    argument by argument. Output is decoded as UTF-8 with replacement characters.
    Connection failures (unknown host, refused, auth, host key) give returncode 255 and an
    ssh-like stderr; connects are retried with exponential backoff when the failure was in
    transport. ``timeout`` (seconds, whole call) gives returncode -1 and the remote process
    tree is killed. If the connection breaks after the command started, the result has
    returncode 255 and ``may_have_run=True``; it is re-run only if ``retries`` > 0.
    Cancelling the awaiting task kills the remote command as well.

    Secrets belong on stdin (``input=``) or in an uploaded file (``write_file``), never
    in the command line: asyncssh logs every exec'd command line at INFO on its
    ``asyncssh`` logger, and the command is visible in the remote ``ps``. dispatch's own
    loggers never log command text or environment values, at any level.

    Args:
        cmd: command to execute (string or list of args).
        host: SSH host (name, alias, ``user@host`` or ``host:port``).
        timeout: optional timeout in seconds.
        login_shell: run through ``$SHELL -l -c`` (default) or ``$SHELL -c``.
        input: bytes or text sent to the command's stdin (stdin is closed after it).
        retries: extra attempts when the connection failed or broke (255); a command
            that may already have run is re-run only when this is > 0.

    Returns:
        RunResult with returncode, stdout and stderr.
    """
    text = command_string(cmd)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise InvalidValueError(f"retries must be an int >= 0, not {retries!r}")
    check_timeout(timeout)
    check_input(input)
    attempt = 0
    while True:
        result, retryable = await _run_once(
            text, host, timeout, login_shell=login_shell, input=input
        )
        if not retryable or attempt >= retries:
            return result
        log.debug("run on %s failed (%s); retry %d of %d", host, result.returncode, attempt + 1,
                  retries)
        await asyncio.sleep(_jitter(0.2, attempt))
        attempt += 1


async def run_many(
    cmd: str | list[str],
    hosts: list[str],
    timeout: float | None = None,
) -> dict[str, RunResult]:
    """Execute a command on multiple hosts in parallel.

    All hosts run concurrently over the pool; a failing host never spoils the others.

    Args:
        cmd: command to execute.
        hosts: list of SSH hosts.
        timeout: optional timeout in seconds per host.

    Returns:
        Dict mapping host -> RunResult.
    """
    command_string(cmd)  # invalid arguments raise once, before anything runs
    check_timeout(timeout)
    unique = list(dict.fromkeys(check_hosts(hosts)))

    async def one(h: str) -> RunResult:
        try:
            return await run(cmd, h, timeout)
        except (InvalidValueError, asyncio.CancelledError):
            raise
        except Exception as exc:  # one host's surprise must not spoil the others
            log.debug("run on %s raised", h, exc_info=True)
            return RunResult(255, "", f"dispatch: {h}: {type(exc).__name__}: {exc}\n")

    results = await asyncio.gather(*(one(h) for h in unique))
    return dict(zip(unique, results, strict=True))


async def is_reachable(host: str, timeout: float = 5.0) -> bool:
    """Check if a host is reachable via SSH.

    True only when a command really round-trips (``true`` runs and exits 0 within
    ``timeout`` seconds, connecting included).

    Args:
        host: SSH host to check.
        timeout: connection timeout in seconds.

    Returns:
        True if host is reachable.
    """
    result = await run("true", host, timeout, login_shell=False)
    return result.ok
