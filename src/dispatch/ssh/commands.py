"""run, run_many, is_reachable: remote commands over the pool (login shell, quoting, timeouts).

Each command runs with a unique ``DISPATCH_RUN_ID`` in its environment. On timeout (or
cancellation) a second channel kills every process carrying that marker (and their
sessions), so the remote tree is gone when ``run`` returns; if that cannot be confirmed,
the result says so (kills.py). Short commands run in a kept-open login shell, a command
session (sessions.py), unless the call or the pool turns that off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shlex
import signal
import time
from collections.abc import Iterable, Sequence

import asyncssh

from .._validate import check_seconds
from ..errors import InvalidValueError
from ..results import RunResult
from .connect import jitter
from .context import current_pool
from .errors import ConnectError, MayHaveRunError
from .kills import kill
from .kills import kill_script as kill_script  # where the unit tests import it from
from .mux import find_master, run_via_master
from .output import OutputTarget, Sink, check_max_output, check_target, open_sink
from .pool import Pool
from .sessions import SESSIONS, CommandSession, SessionJob, eligible
from .slots import Lease

__all__ = ["run", "run_many", "is_reachable"]

log = logging.getLogger(__name__)


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


class _Collector(asyncssh.SSHClientSession[bytes]):
    """Sends a command's output to its sinks and keeps its exit status; ``done`` resolves
    when the channel closed."""

    def __init__(self, done: asyncio.Future[None], out: Sink, err: Sink) -> None:
        self.out = out
        self.err = err
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.lost: Exception | None = None
        self.closed = False
        self.done = done

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        (self.err if datatype == asyncssh.EXTENDED_DATA_STDERR else self.out).write(data)

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


def _signal_code(name: str) -> int:
    try:
        return 128 + int(signal.Signals["SIG" + name.upper().removeprefix("SIG")])
    except KeyError:
        return 255


def _timeout_result(
    host: str, timeout: float | None, started: bool, why: str | None, out: Sink, err: Sink
) -> RunResult:
    what = "command" if started else "connecting"
    msg = f"dispatch: timed out after {timeout}s ({what}) on {host}"
    if started and why is None:
        msg += "; the remote process was killed"
    elif started:
        msg += f"; killing the remote process could not be confirmed ({why})"
    return RunResult(-1, out.text(), err.text() + msg + "\n", truncated=_cut(out, err))


def _cut(out: Sink, err: Sink) -> bool:
    return out.truncated or err.truncated


def _lost_note(host: str, why: str) -> str:
    return (
        f"dispatch: connection to {host} was lost while the command was running{why}; "
        "it may have run (it was not re-run)\n"
    )


async def _run_once(
    text: str,
    host: str,
    timeout: float | None,
    *,
    login_shell: bool,
    input: bytes | str | None,
    out: Sink,
    err: Sink,
    pool: Pool,
    said: float | None = None,
) -> tuple[RunResult, bool]:
    """One attempt on an exec channel. Returns the result and whether a retry could help.

    ``said`` is the timeout the caller gave, when ``timeout`` is what is left of it.
    """
    run_id = secrets.token_hex(8)
    command = wrap_command(text, run_id, login_shell=login_shell)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    session: _Collector | None = None
    lease: Lease | None = None
    chan: asyncssh.SSHClientChannel[bytes] | None = None

    def factory() -> _Collector:
        nonlocal session
        session = _Collector(done, out, err)
        return session

    async def opener(
        conn: asyncssh.SSHClientConnection,
    ) -> tuple[asyncssh.SSHClientChannel[bytes], asyncssh.SSHClientSession[bytes]]:
        return await conn.create_session(factory, command, encoding=None)

    data = input.encode("utf-8") if isinstance(input, str) else input and bytes(input)
    master = await find_master(pool, host)  # the user's ControlMaster, if one listens
    if master is not None:
        via = await run_via_master(
            pool, master, command, run_id, data, timeout, out, err, said=said
        )
        if via is not None:
            return via
    pool.track_run(
        run_id, host, asyncio.current_task(), kill=lambda: kill(pool, host, run_id, lease)
    )
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
        started = session is not None
        why: str | None = None
        try:
            if started:
                why = await kill(pool, host, run_id, lease)
                if chan is not None:
                    chan.close()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(chan.wait_closed(), 2.0)
        finally:
            if lease is not None:
                lease.release()
        shown = timeout if said is None else said
        return _timeout_result(host, shown, started, why, out, err), False
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
        killing = None
        mine = pool.untrack_run(run_id)  # else close() already killed it
        if session is not None and not session.closed and mine:
            killing = pool.spawn_cleanup(kill(pool, host, run_id, lease))
        if chan is not None:
            chan.close()
        if lease is not None:
            lease.release()
        if killing is not None:  # gone before the caller sees the cancellation (bounded)
            with contextlib.suppress(BaseException):
                await asyncio.shield(killing)
        raise
    finally:
        pool.untrack_run(run_id)
    assert session is not None and lease is not None
    lease.release()
    cut = _cut(out, err)
    if session.exit_status is not None:
        return RunResult(session.exit_status, out.text(), err.text(), truncated=cut), False
    if session.exit_signal is not None:
        note = f"dispatch: remote command on {host} was killed by signal {session.exit_signal}\n"
        return RunResult(
            _signal_code(session.exit_signal), out.text(), err.text() + note, truncated=cut
        ), False
    why = f" ({session.lost})" if session.lost else ""
    return RunResult(
        255, out.text(), err.text() + _lost_note(host, why), may_have_run=True, truncated=cut
    ), True


async def _run_in_session(
    text: str,
    host: str,
    timeout: float | None,
    *,
    login_shell: bool,
    out: Sink,
    err: Sink,
    pool: Pool,
    wait: bool,
) -> tuple[RunResult, bool] | None:
    """One attempt in a command session (see sessions.py); None: use an exec channel.

    Same promises as an exec channel: on timeout or cancellation the command's tree is
    killed by its run id (the session is closed, not reused); if the session's shell or
    connection ended mid-command the result says it may have run. ``wait=False``: when
    the host has no session ready, None at once (one starts in the background).
    """
    sp = pool.registry.get(SESSIONS)
    sp.attach(pool)
    run_id = secrets.token_hex(8)
    sess: CommandSession | None = None
    job: SessionJob | None = None
    pool.track_run(
        run_id, host, asyncio.current_task(),
        kill=lambda: kill(pool, host, run_id, sess.lease if sess else None),
    )
    try:
        async with asyncio.timeout(timeout):
            sess = await sp.acquire(host, login_shell, wait=wait)
            if sess is None:
                return None
            job = sess.start(run_id, text, out, err)
            sp.commands += 1
            await asyncio.shield(job.done)
    except TimeoutError:
        started = job is not None
        why: str | None = None
        if job is not None:
            job.out.flush()
            job.err.flush()
        try:
            if started and sess is not None:
                why = await kill(pool, host, run_id, sess.lease)
        finally:
            if sess is not None:
                sp.discard(sess)
        return _timeout_result(host, timeout, started, why, out, err), False
    except ConnectError as exc:
        return RunResult(255, "", f"{exc}\n"), exc.transient
    except BaseException:
        killing = None
        mine = pool.untrack_run(run_id)
        if sess is not None:
            if job is not None and not job.done.done() and mine:
                killing = pool.spawn_cleanup(kill(pool, host, run_id, sess.lease))
            sp.discard(sess)
        if killing is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(killing)
        raise
    finally:
        pool.untrack_run(run_id)
    assert sess is not None and job is not None
    sess.finish()
    cut = _cut(out, err)
    if job.status is not None:
        sp.release(sess)
        return RunResult(job.status, out.text(), err.text(), truncated=cut), False
    # The shell or its connection ended before the command was framed: whatever the
    # command started must not outlive the call (the kill is bounded and idempotent).
    job.out.flush()
    job.err.flush()
    sp.discard(sess)
    if not pool.closed:  # over any channel of the host (a new connection if need be)
        await kill(pool, host, run_id, None)
    why = f" ({job.lost})" if job.lost else ""
    return RunResult(
        255, out.text(), err.text() + _lost_note(host, why), may_have_run=True, truncated=cut
    ), True


async def run(
    cmd: str | list[str],
    host: str,
    timeout: float | None = None,
    *,
    login_shell: bool = True,
    input: bytes | str | None = None,
    retries: int = 0,
    session: bool | None = None,
    max_output: int | None = None,
    stdout: OutputTarget | None = None,
    stderr: OutputTarget | None = None,
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

    Short commands run in a kept-open login shell (a *command session*: one round trip,
    no login per call) unless ``session=False`` or ``Pool(command_sessions=False)``;
    commands with ``input``, streamed output or ``$$`` use an exec channel, and so do
    calls to a host whose first session is still starting (a cold call does not wait for
    it). The result is the same either way (see the behaviour guide).

    Output is kept in memory whole by default; ``max_output=N`` keeps the first N bytes
    of each stream (``truncated=True`` in the result when more came), and
    ``stdout=``/``stderr=`` (a path, or a file opened in binary mode) stream that output
    to the file instead (the result's text for it is then "").

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
        session: True: use a command session (on a host with none yet, wait for one to
            start); False: an exec channel; None (default) follows the pool
            (``Pool(command_sessions=...)``, on by default), and a call to a host with no
            session ready yet runs on an exec channel while one starts in the background.
        max_output: keep at most this many bytes of stdout and of stderr (None: all).
        stdout: write stdout to this path or binary file instead of the result.
        stderr: write stderr to this path or binary file instead of the result.

    Returns:
        RunResult with returncode, stdout and stderr.

    Raises:
        InvalidValueError: a bad command, timeout, input, retries, max_output or
            output target (named in the message).
    """
    text = command_string(cmd)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise InvalidValueError(f"retries must be an int >= 0, not {retries!r}")
    if session is not None and not isinstance(session, bool):
        raise InvalidValueError(f"session must be True, False or None, not {session!r}")
    check_seconds("timeout", timeout, optional=True)
    check_input(input)
    check_max_output(max_output)
    check_target("stdout", stdout)
    check_target("stderr", stderr)
    pool = current_pool()
    use_session = (pool.command_sessions if session is None else session) and eligible(
        text, has_input=bool(input), streamed=stdout is not None or stderr is not None,
        timeout=timeout, max_timeout=pool.session_max_timeout,
    )
    attempt = 0
    while True:
        begun = time.monotonic()
        out = open_sink("stdout", stdout, max_output)
        err = open_sink("stderr", stderr, max_output)
        try:
            got = None
            if use_session and await find_master(pool, host) is None:
                got = await _run_in_session(
                    text, host, timeout, login_shell=login_shell, out=out, err=err, pool=pool,
                    wait=session is True,
                )
            if got is None:  # the session could not start: the rest of the time on exec
                left = None if timeout is None else max(
                    0.001, timeout - (time.monotonic() - begun)
                )
                got = await _run_once(
                    text, host, left, login_shell=login_shell, input=input, out=out,
                    err=err, pool=pool, said=timeout,
                )
        finally:
            out.close()
            err.close()
        result, retryable = got
        if not retryable or attempt >= retries:
            return result
        log.debug("run on %s failed (%s); retry %d of %d", host, result.returncode, attempt + 1,
                  retries)
        await asyncio.sleep(jitter(0.2, attempt))
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
    check_seconds("timeout", timeout, optional=True)
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
