"""Command sessions: short commands in one kept-open login shell per channel (issue 13).

``run`` over an exec channel pays a channel, a session request and a login shell (the
profile: modules, conda) per call. A command session is one ``$SHELL -l`` (the same
login environment) started once on a channel and kept; each command then costs one
write and the answer, framed like this:

* The shell keeps the channel's stderr as fd 9 and sends its own diagnostics to
  /dev/null; it runs with job control (``set -m``) so each command gets its own
  process group.
* A command runs as ``( set --; export DISPATCH_RUN_ID=<id>; eval "$c" ) </dev/null &``
  then ``wait``: a subshell, so ``cd``/``export``/``umask``/traps/functions/aliases never
  leak; stdin is /dev/null (commands with input use an exec channel); the run id tags
  its tree for the same kill-by-marker as exec channels.
* After it exits the shell prints ``<marker>:<status> <left>`` on stdout and
  ``<marker>:`` on stderr, ``marker`` being 128 random bits sent with the command (the
  printed form, with its colon, never appears in what was sent). Everything before the
  marker is the command's output, byte for byte (binary, NUL, no trailing newline).
  ``left`` says whether anything of the command's process group still runs
  (``sleep 100 &``): then, as ``ssh`` would, the call keeps reading until every copy of
  the channel's stdout/stderr is closed, and the session retires.
* What the login printed before the session was ready is prepended to every command's
  output, as an exec channel's login shell would print it each time.

A session whose framing is in doubt (bytes while idle, a malformed trailer) is closed,
never reused. Sessions hold a channel slot each, are closed when idle, restarted when
older than ``Pool(session_max_age=...)``, and handed back to the pool when an exec
channel needs their slot (`SessionPool.reclaim`). Starting one costs about two round trips
more than an exec channel (the shell, then the ready line): so by default a call to a host
with no session ready yet runs on an exec channel while one starts in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from .output import Sink
from .pool import Pool
from .registry import PoolKey
from .slots import Lease

__all__ = [
    "CommandSession", "SessionJob", "SessionPool", "SESSIONS", "eligible", "INIT_SCRIPT",
    "command_line",
]

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # seconds a new session may take to answer (the login profile)
UNSUPPORTED_FOR = 600.0  # seconds a host whose shell cannot run sessions uses exec only
MAX_TEXT = 16 * 1024  # longer commands go to an exec channel (the shell reads bytewise)

# One command: a subshell in its own process group, then the trailers. ``wait ... ||``
# keeps a profile's ``set -e`` from ending the session.
_RUN = (
    "( set --; DISPATCH_RUN_ID=$__dispatch_i; export DISPATCH_RUN_ID; eval \"$__dispatch_c\"\n"
    ") </dev/null 2>&9 9>&- & __dispatch_p=$!; "
    'wait "$__dispatch_p" && __dispatch_s=0 || __dispatch_s=$?; '
    'if kill -0 -- "-$__dispatch_p" 2>/dev/null; then __dispatch_a=1; else __dispatch_a=0; fi; '
    "printf '%s:%s %s\\n' \"$__dispatch_m\" \"$__dispatch_s\" \"$__dispatch_a\"; "
    "printf '%s:\\n' \"$__dispatch_m\" >&9"
)

# Run once after the login profile. Names start with __dispatch_ to stay out of the way.
# The wrapper is kept in a variable and eval'ed per command: the shell reads a pipe one
# byte at a time, so the line sent per command stays short; and not as a function, since
# bash names a function's errors "main:" where ``bash -c`` names them "bash:".
INIT_SCRIPT = (
    "exec 9>&2 2>/dev/null\n"
    "set -m\n"
    "case $- in *m*) __dispatch_j=1 ;; *) __dispatch_j=0 ;; esac\n"
    f"__dispatch_w={shlex.quote(_RUN)}\n"
    "__dispatch_m=@READY@\n"
    "printf '%s:%s\\n' \"$__dispatch_m\" \"$__dispatch_j\"\n"
    "printf '%s:\\n' \"$__dispatch_m\" >&9\n"
)


def command_line(run_id: str, marker: str, text: str) -> str:
    """What the session's shell reads for one command (``run_id``/``marker``: hex)."""
    return (
        f"__dispatch_i={run_id}; __dispatch_m={marker}; __dispatch_c={shlex.quote(text)}; "
        'eval "$__dispatch_w"\n'
    )


def eligible(text: str, *, has_input: bool, streamed: bool, timeout: float | None,
             max_timeout: float | None) -> bool:
    """Whether ``text`` may run in a command session rather than an exec channel.

    Not: commands with input or streamed output, long texts, commands that name the
    shell's own pid (``$$`` is the session's shell, not the command's) or start a new
    session (``setsid``: it could keep the channel's stdout past the framing), and
    calls whose ``timeout`` exceeds ``max_timeout`` (long work keeps its own channel).
    """
    if has_input or streamed or len(text) > MAX_TEXT:
        return False
    if "$$" in text or "${$}" in text or "setsid" in text:
        return False
    return max_timeout is None or timeout is None or timeout <= max_timeout


class _Framer:
    """Splits one stream into output (to ``sink``) and a one-line trailer after ``marker``."""

    __slots__ = ("done", "hold", "late", "marker", "sink", "trailer")

    def __init__(self, marker: bytes, sink: Sink) -> None:
        self.marker = marker
        self.sink = sink
        self.hold = b""  # tail that may be the start of the marker
        self.trailer: bytearray | None = None
        self.done = False
        self.late = False  # bytes arrived after the trailer

    def feed(self, data: bytes) -> None:
        if self.done:
            self.late = True
            self.sink.write(data)
            return
        if self.trailer is not None:
            self._trail(data)
            return
        buf = self.hold + data if self.hold else data
        i = buf.find(self.marker)
        if i < 0:
            cut = max(0, len(buf) - len(self.marker) + 1)
            if cut:
                self.sink.write(memoryview(buf)[:cut])
            self.hold = buf[cut:]
            return
        if i:
            self.sink.write(memoryview(buf)[:i])
        self.hold = b""
        self.trailer = bytearray()
        self._trail(buf[i + len(self.marker):])

    def flush(self) -> None:
        """The marker will not come (timeout, lost shell): what was held back is output."""
        if self.hold and self.trailer is None:
            self.sink.write(self.hold)
        self.hold = b""

    def _trail(self, data: bytes) -> None:
        assert self.trailer is not None
        nl = data.find(b"\n")
        if nl < 0:
            self.trailer += data
            if len(self.trailer) > 64:  # not our trailer: framing in doubt
                self.done = self.late = True
            return
        self.trailer += data[:nl]
        self.done = True
        if nl + 1 < len(data):
            self.feed(data[nl + 1:])


@dataclass
class SessionJob:
    """One command in a session: its framers and, when done, its status."""

    out: _Framer
    err: _Framer
    done: asyncio.Future[None]
    status: int | None = None
    left: bool = False  # processes of the command still ran after it exited
    lost: str | None = None  # why the session ended before the command's trailer
    retiring: bool = field(default=False)


class CommandSession(asyncssh.SSHClientSession[bytes]):
    """One kept-open shell on a channel, running one framed command at a time."""

    def __init__(self, host: str, login: bool) -> None:
        self.host = host
        self.login = login
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.lease: Lease | None = None
        self.born = self.last_used = time.monotonic()
        self.closed = False
        self.doubt = False
        self.ready = False  # the handshake succeeded
        self.noise_out = bytearray()
        self.noise_err = bytearray()
        self.end_reason: str | None = None  # exit status/signal of the shell, if it ended
        self._ready = secrets.token_hex(16)
        self._job: SessionJob | None = None
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._hs_out = _Framer(f"{self._ready}:".encode(), _Bytes(self.noise_out))
        self._hs_err = _Framer(f"{self._ready}:".encode(), _Bytes(self.noise_err))

    # -- asyncssh callbacks ------------------------------------------------------------------

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        stderr = datatype == asyncssh.EXTENDED_DATA_STDERR
        job = self._job
        if not self._started.done():
            (self._hs_err if stderr else self._hs_out).feed(data)
            if self._hs_out.done and self._hs_err.done:
                self._started.set_result(None)
        elif job is not None:
            (job.err if stderr else job.out).feed(data)
            self._check_job(job)
        else:  # output while idle: something the last command left behind
            self.doubt = True
            self.close()

    def exit_status_received(self, status: int) -> None:
        self.end_reason = f"the session's shell exited with status {status}"
        self._shell_gone()

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.end_reason = f"the session's shell was killed by signal {signal}"
        self._shell_gone()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.lease is not None:
            self.lease.release()
        if not self._started.done():
            self._started.set_result(None)
        job = self._job
        if job is not None and not job.done.done():
            if job.status is None:
                job.lost = self.end_reason or (str(exc) if exc else "the channel was closed")
            job.done.set_result(None)

    # -- use ---------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Open, framing trusted, connection alive."""
        return (
            not self.closed and not self.doubt and self.lease is not None and self.lease.alive
        )

    def _shell_gone(self) -> None:
        """The shell ended: a command in flight will never be framed (unless it already was)."""
        self.doubt = True
        job = self._job
        if job is not None and job.status is None and not job.done.done():
            job.lost = self.end_reason
            job.done.set_result(None)

    async def handshake(self) -> bool:
        """Send the init script and wait for the ready line; True when sessions work here."""
        assert self.chan is not None
        self.chan.write(INIT_SCRIPT.replace("@READY@", self._ready).encode())
        await asyncio.shield(self._started)
        trailer = self._hs_out.trailer
        ok = (
            not self.closed and self._hs_out.done and self._hs_err.done
            and not self._hs_out.late and not self._hs_err.late
            and trailer is not None and bytes(trailer) == b"1"
            and self._hs_err.trailer is not None and not self._hs_err.trailer
        )
        if not ok:
            log.debug("command session on %s unusable (ready line %r)", self.host, trailer)
        self.ready = ok
        return ok

    def start(self, run_id: str, text: str, out: Sink, err: Sink) -> SessionJob:
        """Write one command; its ``done`` resolves when framed (or the session ended)."""
        assert self.chan is not None and self._job is None
        marker = secrets.token_hex(16)
        out.write(self.noise_out)
        err.write(self.noise_err)
        loop = asyncio.get_running_loop()
        job = SessionJob(
            _Framer(f"{marker}:".encode(), out), _Framer(f"{marker}:".encode(), err),
            loop.create_future(),
        )
        self._job = job
        self.last_used = time.monotonic()
        line = command_line(run_id, marker, text)
        self.chan.write(line.encode("utf-8", errors="surrogateescape"))
        return job

    def _check_job(self, job: SessionJob) -> None:
        if job.done.done() or not (job.out.done and job.err.done) or job.status is not None:
            return
        parts = bytes(job.out.trailer or b"").split()
        if (
            len(parts) != 2 or not parts[0].isdigit() or parts[1] not in (b"0", b"1")
            or job.err.trailer
        ):
            self.doubt = True
            job.lost = f"the session's framing broke (trailer {bytes(job.out.trailer or b'')!r})"
            job.done.set_result(None)
            return
        job.status = int(parts[0])
        job.left = parts[1] == b"1"
        if job.left:
            # Like ssh: the call ends when every copy of stdout/stderr is closed. The shell
            # exits on EOF; the channel closes once the command's leftovers let go.
            job.retiring = True
            self.doubt = True
            if self.chan is not None:
                self.chan.write_eof()
            return
        job.done.set_result(None)

    def finish(self) -> SessionJob:
        """Forget the finished job; the session is idle again (or in doubt)."""
        job = self._job
        assert job is not None
        self._job = None
        self.last_used = time.monotonic()
        if job.out.late or job.err.late:
            self.doubt = True
        return job

    def close(self) -> None:
        """Close the channel and give its slot back (idempotent)."""
        self.doubt = True
        if self.lease is not None:
            self.lease.release()
        if self.chan is not None and not self.closed:
            self.chan.close()


class _Bytes:
    """A sink into a bytearray (the login's noise)."""

    truncated = False

    def __init__(self, buf: bytearray) -> None:
        self.buf = buf

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.buf += data

    def text(self) -> str:
        return self.buf.decode("utf-8", errors="replace")

    def close(self) -> None:
        pass


class SessionPool:
    """A pool's command sessions: idle ones per (host, login shell), started on demand."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, bool], list[CommandSession]] = {}
        self.live: set[CommandSession] = set()
        self.unsupported: dict[str, float] = {}
        # Callers waiting for a session of (host, login): a finished one is handed over.
        self.waiters: dict[tuple[str, bool], list[asyncio.Future[CommandSession]]] = {}
        self._starting: set[asyncio.Task[CommandSession | None]] = set()
        self._opening: set[asyncio.Task[CommandSession | None]] = set()  # not yet on a channel
        # Starts nobody waits for (see acquire's ``wait``): at most one per (host, login).
        self._background: dict[tuple[str, bool], asyncio.Task[CommandSession | None]] = {}
        self.started = 0  # sessions started (login shells), for stats and benchmarks
        self.commands = 0  # commands run in sessions
        self._pool: Pool | None = None
        self._reaper: asyncio.Task[None] | None = None

    def attach(self, pool: Pool) -> None:
        """Hook into ``pool`` once: reclaim idle sessions for exec channels, reap idle ones."""
        if self._pool is not None:
            return
        self._pool = pool
        pool.reclaimers.append(self.reclaim)
        self._reaper = asyncio.ensure_future(self._reap())

    def _idle_timeout(self) -> float:
        assert self._pool is not None
        t = self._pool.session_idle_timeout
        if self._pool.idle_timeout is not None:
            t = min(t, self._pool.idle_timeout)
        return t

    async def acquire(
        self, host: str, login: bool, *, wait: bool = True
    ) -> CommandSession | None:
        """An idle session for ``host`` or a new one; None: use an exec channel.

        None when sessions do not work there, or, with ``wait=False``, when the host has
        no session ready yet: then one starts in the background for the calls after this
        one (at most one such start per host and shell at a time), and this call does
        not pay for it.

        Raises:
            ConnectError: the host cannot be reached (as for an exec channel).
        """
        pool = self._pool
        assert pool is not None
        # Let pending socket events land: a connection closed while idle must be seen
        # as closed before a command is written into it (then it would "may have run").
        for _ in range(3):
            await asyncio.sleep(0)
        now = time.monotonic()
        idle = self.idle.get((host, login), [])
        while idle:
            s = idle.pop()
            if s.usable and now - s.born < pool.session_max_age:
                self._park(s, False)
                return s
            self.discard(s)
        if self.unsupported.get(host, 0.0) > now:
            return None
        if not wait and not self._ready_on(host, login):
            self._start_in_background(pool, host, login)
            return None
        # Start a session, but take one that finishes its command first (when the
        # pool is at its channel cap, that is the only way to get one).
        waiter: asyncio.Future[CommandSession] = asyncio.get_running_loop().create_future()
        waiting = self.waiters.setdefault((host, login), [])
        waiting.append(waiter)
        starter = asyncio.ensure_future(self._start(pool, host, login))
        self._starting.add(starter)
        starter.add_done_callback(self._starting.discard)
        try:
            pending: list[asyncio.Future[Any]] = [waiter, starter]
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())  # handed over just as we were cancelled
            self._unwait(waiting, waiter)
            self._settle(starter)
            raise
        handed = waiter.done() and not waiter.cancelled()
        self._unwait(waiting, waiter)
        if handed:
            self._settle(starter)
            return waiter.result()
        return starter.result()

    def _ready_on(self, host: str, login: bool) -> bool:
        """Whether ``host`` has a started, usable session of this kind (idle or busy)."""
        return any(
            s.ready and s.usable and s.host == host and s.login == login for s in self.live
        )

    def _start_in_background(self, pool: Pool, host: str, login: bool) -> None:
        """Start a session nobody waits for (unless one is starting); idle when done."""
        key = (host, login)
        if key in self._background:
            return
        task = asyncio.ensure_future(self._start(pool, host, login))
        self._background[key] = task
        self._starting.add(task)

        def done(t: asyncio.Task[CommandSession | None]) -> None:
            self._starting.discard(t)
            if self._background.get(key) is t:
                del self._background[key]
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None:  # the call that started it reports the host's trouble
                log.debug("command session on %s not started: %s", host, exc)
            elif (s := t.result()) is not None:
                self.release(s)

        task.add_done_callback(done)

    def _unwait(
        self, waiting: list[asyncio.Future[CommandSession]], waiter: asyncio.Future[CommandSession]
    ) -> None:
        if waiter in waiting:
            waiting.remove(waiter)
        if not waiter.done():
            waiter.cancel()

    def _settle(self, starter: asyncio.Task[CommandSession | None]) -> None:
        """A start nobody waits for: cancel it if it has no channel yet, else keep its session."""
        if starter in self._opening:
            starter.cancel()

        def done(t: asyncio.Task[CommandSession | None]) -> None:
            if t.cancelled() or t.exception() is not None:
                return
            s = t.result()
            if s is not None:
                self.release(s)

        starter.add_done_callback(done)

    async def _start(self, pool: Pool, host: str, login: bool) -> CommandSession | None:
        sess = CommandSession(host, login)
        command = 'exec "$SHELL" -l' if login else 'exec "$SHELL"'

        async def opener(
            conn: asyncssh.SSHClientConnection,
        ) -> tuple[asyncssh.SSHClientChannel[bytes], asyncssh.SSHClientSession[bytes]]:
            return await conn.create_session(lambda: sess, command, encoding=None)

        me = asyncio.current_task()
        assert me is not None
        self._opening.add(me)
        try:
            lease, (chan, _) = await pool.open_channel(host, opener)
        finally:
            self._opening.discard(me)
        sess.chan, sess.lease = chan, lease
        if sess.closed:  # lost before we got here
            lease.release()
            return None
        self.live.add(sess)
        self.started += 1
        try:
            async with asyncio.timeout(START_TIMEOUT):
                ok = await sess.handshake()
        except TimeoutError:
            ok = False
        except BaseException:
            self.discard(sess)
            raise
        if not ok:
            gone = not lease.alive
            self.discard(sess)
            if not gone:  # the shell, not the connection: do not try again for a while
                self.unsupported[host] = time.monotonic() + UNSUPPORTED_FOR
                log.info("command sessions do not work on %s; using exec channels", host)
            return None
        log.debug("command session started on %s (login=%s)", host, login)
        return sess

    def release(self, s: CommandSession) -> None:
        """Put ``s`` back as idle if it is healthy and young enough, else close it."""
        pool = self._pool
        if (
            pool is None or pool.closed or not s.usable
            or time.monotonic() - s.born >= pool.session_max_age
        ):
            self.discard(s)
            return
        for waiter in self.waiters.get((s.host, s.login), []):
            if not waiter.done():
                waiter.set_result(s)  # handed over, still busy
                return
        self._park(s, True)
        self.idle.setdefault((s.host, s.login), []).append(s)

    def discard(self, s: CommandSession) -> None:
        """Close ``s`` for good."""
        for lst in self.idle.values():
            if s in lst:
                lst.remove(s)
        self._park(s, False)
        self.live.discard(s)
        s.close()

    @staticmethod
    def _park(s: CommandSession, parked: bool) -> None:
        if s.lease is not None:
            s.lease.park(parked)

    def reclaim(self, host: str) -> bool:
        """Close the longest-idle session of ``host`` so an exec channel gets its slot."""
        for (h, _), lst in self.idle.items():
            if h == host and lst:
                self.discard(lst[0])
                return True
        return False

    async def _reap(self) -> None:
        pool = self._pool
        assert pool is not None
        while not pool.closed:
            idle_timeout = self._idle_timeout()
            period = min(idle_timeout, pool.session_max_age) / 2
            await asyncio.sleep(max(0.05, min(period, 30.0)))
            now = time.monotonic()
            for lst in list(self.idle.values()):
                for s in list(lst):
                    if (not s.usable or now - s.last_used >= idle_timeout
                            or now - s.born >= pool.session_max_age):
                        self.discard(s)

    async def aclose(self) -> None:
        """Close every session (the pool is closing)."""
        for task in [*self._starting, *([self._reaper] if self._reaper else [])]:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for s in list(self.live):
            self.discard(s)
        self.idle.clear()


async def _close_sessions(sp: SessionPool) -> None:
    await sp.aclose()


SESSIONS: PoolKey[SessionPool] = PoolKey("ssh.command_sessions", SessionPool, _close_sessions)
