"""Logging in: who answers a keyboard-interactive second factor, and fewer auth round trips.

A server that wants a one-time password after the key (``AuthenticationMethods
publickey,keyboard-interactive``: pam_oath, Duo, Google Authenticator) accepts the key
(partial success) and then sends a keyboard-interactive challenge. dispatch answers it
only after a key was accepted (passwords stay off) and only when someone can answer:
``Pool(kbdint=handler)`` from code, else `default_kbdint_handler` (the terminal, or
OpenSSH's askpass convention). With nobody to answer it fails at once, saying so. A
refused answer is never retried (a code is good once).

`LoginClient` is the asyncssh client object of one connect attempt: it records what
happened during authentication (for a truthful message) and trims avoidable round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import shutil
import termios
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from asyncssh.packet import String

__all__ = [
    "KbdintHandler",
    "CannotAnswer",
    "Answerer",
    "LoginState",
    "LoginClient",
    "default_kbdint_handler",
    "default_answer_route",
    "failure_message",
]

log = logging.getLogger(__name__)

KbdintHandler = Callable[
    [str, str, str, Sequence[tuple[str, bool]]], Awaitable[Sequence[str] | None]
]
"""``handler(host, name, instructions, prompts)``: answers, or None when it cannot answer.

``prompts`` are (prompt text, echo) pairs; the answers are one string per prompt. A
handler that knows *why* it cannot answer raises `CannotAnswer` with the reason instead
of returning None (the failed call's message then says so).
"""


class CannotAnswer(Exception):
    """Raised by a kbdint handler that cannot answer; ``reason`` says why (shown to the caller).

    The login fails at once with the message the default answerer gives when nobody can
    answer: ``... asked for a one-time password (...), but nothing here can answer it
    (<reason>) ...``. Nothing is sent to the server, so no code is spent.

    Args:
        reason: why, in a few words (``"no terminal and SSH_ASKPASS is not set"``).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason

    def __reduce__(self) -> tuple[Any, ...]:  # picklable with its reason (agent frames)
        return (type(self), (self.reason,))

_ASKPASS_DEFAULT = "/usr/bin/ssh-askpass"  # OpenSSH's _PATH_SSH_ASKPASS_DEFAULT on Debian
_MAX_ROUNDS = 8  # challenge rounds within one keyboard-interactive attempt
_TTY = "/dev/tty"
_tty_lock = threading.Lock()  # one prompt on the terminal at a time


# -- the default answerer: terminal or askpass, as ssh does --------------------------------


def _can_open_tty() -> bool:
    try:
        fd = os.open(_TTY, os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def default_answer_route() -> tuple[str, str] | tuple[None, str]:
    """How `default_kbdint_handler` would answer now, following OpenSSH's read_passphrase.

    ``SSH_ASKPASS_REQUIRE``: ``force`` uses askpass always (even without ``DISPLAY``);
    ``prefer`` uses it when ``DISPLAY``/``WAYLAND_DISPLAY`` is set, even with a
    terminal; ``never`` never; unset: only without a terminal and with a display.

    Returns:
        ``("askpass", program)``, ``("tty", "/dev/tty")``, or ``(None, why not)``.
    """
    display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    require = (os.environ.get("SSH_ASKPASS_REQUIRE") or "").lower()
    allow, use = display, False
    if require == "force":
        allow = use = True
    elif require == "prefer":
        use = allow
    elif require == "never":
        allow = False
    tty = _can_open_tty()
    if not use and not tty:
        use = True
    program = os.environ.get("SSH_ASKPASS") or _ASKPASS_DEFAULT
    if use and allow:
        if os.environ.get("SSH_ASKPASS") or shutil.which(program):
            return "askpass", program
        if not tty:
            return None, f"no terminal, and no askpass program ({_ASKPASS_DEFAULT} is missing)"
    if tty:
        return "tty", _TTY
    if not os.environ.get("SSH_ASKPASS"):
        return None, "no terminal and SSH_ASKPASS is not set"
    if require == "never":
        return None, "no terminal, and SSH_ASKPASS_REQUIRE=never"
    return None, "no terminal, and SSH_ASKPASS needs DISPLAY or SSH_ASKPASS_REQUIRE=force"


def _read_tty(text: str, prompt: str, echo: bool, cancel: threading.Event) -> str | None:
    """Prompt on the terminal like ssh (echo off unless ``echo``); None on EOF or cancel."""
    while not _tty_lock.acquire(timeout=0.2):
        if cancel.is_set():
            return None
    try:
        fd = os.open(_TTY, os.O_RDWR | os.O_NOCTTY)
        try:
            old = termios.tcgetattr(fd)
            new = termios.tcgetattr(fd)
            new[3] |= termios.ICANON
            new[3] = new[3] | termios.ECHO if echo else new[3] & ~termios.ECHO
            termios.tcsetattr(fd, termios.TCSAFLUSH, new)
            buf = bytearray()
            try:
                if text:
                    os.write(fd, text.encode("utf-8", "replace"))
                os.write(fd, b"\r" + prompt.encode("utf-8", "replace"))
                while b"\n" not in buf and b"\r" not in buf:
                    if cancel.is_set():
                        return None
                    ready, _, _ = select.select([fd], [], [], 0.2)
                    if ready:
                        chunk = os.read(fd, 1024)
                        if not chunk:
                            return None
                        buf += chunk
            finally:
                termios.tcsetattr(fd, termios.TCSAFLUSH, old)
                if not echo:
                    os.write(fd, b"\n")
            return bytes(buf).splitlines()[0].decode("utf-8", "replace") if buf.strip() else ""
        finally:
            os.close(fd)
    finally:
        _tty_lock.release()


async def _tty_answer(text: str, prompt: str, echo: bool) -> str | None:
    cancel = threading.Event()
    try:
        return await asyncio.to_thread(_read_tty, text, prompt, echo, cancel)
    finally:
        cancel.set()  # cancelled or timed out: the thread stops within 0.2 s


async def _askpass(program: str, prompt: str) -> str | None:
    """Run ``program prompt`` and read the answer from its stdout (None: it failed)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            program, prompt,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        log.warning("askpass program %s could not run: %s", program, exc)
        return None
    try:
        out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
    if proc.returncode != 0:
        log.debug("askpass program %s exited %s", program, proc.returncode)
        return None
    text = out.decode("utf-8", "replace")
    return text.split("\n", 1)[0].split("\r", 1)[0]


async def default_kbdint_handler(
    host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
) -> Sequence[str] | None:
    """Answer a keyboard-interactive challenge as ``ssh`` would, in this process.

    On the terminal (``/dev/tty``): the name and instructions, then each prompt as
    ``(host) prompt`` without echo (unless the server asked for echo). Without a
    terminal (or as ``SSH_ASKPASS_REQUIRE`` says): the ``SSH_ASKPASS`` program, run with
    the prompt as its argument, answering on its stdout. See `default_answer_route`.

    Args:
        host: the host string of the login (shown before each prompt).
        name: the challenge's name (shown on a terminal when not empty).
        instructions: the challenge's instructions (shown on a terminal when not empty).
        prompts: (prompt, echo) pairs.

    Returns:
        One answer per prompt, or None when the user gave up (EOF, a cancelled askpass).

    Raises:
        CannotAnswer: nobody can answer here (no terminal, no usable askpass: says which).
    """
    how, where = default_answer_route()
    if how is None:
        log.debug("keyboard-interactive for %s: cannot answer (%s)", host, where)
        raise CannotAnswer(where)
    answers: list[str] = []
    header = "".join(f"{t}\n" for t in (name, instructions) if t)
    for prompt, echo in prompts:
        shown = f"({host}) {prompt}"
        if how == "askpass":
            answer = await _askpass(where, shown)
        else:
            answer = await _tty_answer(header, shown, echo)
            header = ""
        if answer is None:
            return None
        answers.append(answer)
    if not prompts and header and how == "tty":
        await _tty_show(header)
    return answers


async def _tty_show(text: str) -> None:
    def show() -> None:
        with contextlib.suppress(OSError), _tty_lock:
            fd = os.open(_TTY, os.O_WRONLY | os.O_NOCTTY)
            try:
                os.write(fd, text.encode("utf-8", "replace"))
            finally:
                os.close(fd)

    await asyncio.to_thread(show)


# -- one login attempt ------------------------------------------------------------------


@dataclass(frozen=True)
class Answerer:
    """Who answers keyboard-interactive challenges for a pool, and for how long at most.

    ``handler`` None: nobody (fail at once). ``batch_mode``: the ssh config says
    ``BatchMode yes``, which turns the terminal/askpass answerer off (as for ssh); a
    handler passed in code still answers.
    """

    handler: KbdintHandler | None
    timeout: float
    batch_mode: bool = False

    def why_not(self) -> str | None:
        """Why nobody can answer right now (None: someone can, or may)."""
        if self.handler is None:
            return "Pool(kbdint=None) turns answering off"
        if self.handler is default_kbdint_handler:
            if self.batch_mode:
                return "the ssh config says BatchMode yes (no prompts)"
            how, why = default_answer_route()
            if how is None:
                return why
        return None


@dataclass
class LoginState:
    """What happened while authenticating (mutable, one connect attempt)."""

    tcp_up: bool = False
    key_accepted: bool = False  # partial success: a key was accepted, more was asked
    kbdint_offered: bool = False  # the server asked for keyboard-interactive
    attempts: int = 0  # keyboard-interactive attempts started (at most one)
    rounds: int = 0  # challenge rounds answered or shown
    keys_offered: int = 0  # publickey requests sent
    keys_exhausted: bool = False  # asyncssh ran out of keys to offer
    prompts: list[str] = field(default_factory=list)
    answered: bool = False  # answers were sent
    no_answer: str | None = None  # why it was not (or could not be) answered
    cannot_answer: bool = False  # nobody here can answer (vs. asked, then given up)
    signed_first: int = 0  # publickey offers sent signed (no query round trip)


class LoginClient(asyncssh.SSHClient):
    """The asyncssh client of one connect attempt: answers kbdint, records what happened.

    Also trims two round trips asyncssh would spend before the key is even checked:
    authentication starts with ``publickey`` instead of a ``none`` request, and a key
    loaded from a file is offered signed at once instead of asking first whether the
    server would accept it (OpenSSH's and asyncssh's query). Both ride on asyncssh
    internals that have no option, so each is guarded and falls back to asyncssh's
    own behaviour when the internals look different.
    """

    def __init__(
        self,
        key: str,
        answerer: Answerer | None,
        state: LoginState,
        extend: Callable[[float | None], None] = lambda _s: None,
        fast_auth: bool = True,
    ) -> None:
        self._key = key
        self._answerer = answerer
        self._state = state
        self._extend = extend
        self._fast = fast_auth
        self._conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._state.tcp_up = True
        self._conn = conn
        if self._fast:
            _start_with_publickey(conn)
        _watch_publickey(conn, self._state, sign_first=self._fast)

    def public_key_auth_requested(self) -> None:
        # asyncssh asks its owner only once the configured keys are used up.
        self._state.keys_exhausted = True
        return None

    def kbdint_auth_requested(self) -> str | None:
        state = self._state
        state.kbdint_offered = True
        # Keyboard-interactive right after a key, with keys left to offer, means that
        # key got partial success (asyncssh moves on to the next key after a refusal).
        state.key_accepted = state.keys_offered > 0 and not state.keys_exhausted
        if not state.key_accepted:
            state.no_answer = "no key was accepted first"
            return None  # keyboard-interactive alone is a password login: off
        if state.attempts:
            return None  # the answer was refused: never retried
        why = self._answerer.why_not() if self._answerer else "nobody answers"
        if why is not None:
            state.no_answer = why
            return None
        state.attempts += 1
        return ""

    async def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> Sequence[str] | None:
        state = self._state
        assert self._answerer is not None and self._answerer.handler is not None
        if not prompts and not (name or instructions):
            return []  # PAM's closing round: nothing to show or answer
        state.rounds += 1
        if state.rounds > _MAX_ROUNDS:
            state.no_answer = f"more than {_MAX_ROUNDS} challenge rounds"
            return None
        state.prompts.extend(p for p, _echo in prompts)
        timeout = self._answerer.timeout
        self._extend(timeout)  # a human is typing: the connect timeout waits
        try:
            async with asyncio.timeout(timeout):
                answers = await self._answerer.handler(
                    self._key, name, instructions, list(prompts)
                )
        except TimeoutError:
            state.no_answer = f"no answer within {timeout:g}s"
            return None
        except CannotAnswer as exc:
            log.debug("keyboard-interactive for %s: the handler cannot answer (%s)",
                      self._key, exc.reason)
            state.no_answer = exc.reason
            state.cannot_answer = True
            return None
        except Exception as exc:  # a broken handler is a failed login, not a crash
            log.warning("keyboard-interactive handler for %s raised %r", self._key, exc)
            state.no_answer = f"the kbdint handler raised {type(exc).__name__}: {exc}"
            return None
        finally:
            self._extend(None)
        if not prompts:
            return []
        if answers is None:
            state.no_answer = "the kbdint handler gave no answer"
            return None
        answers = list(answers)
        if len(answers) != len(prompts) or not all(isinstance(a, str) for a in answers):
            state.no_answer = (
                f"the kbdint handler returned {len(answers)} answers for {len(prompts)} prompts"
            )
            return None
        state.answered = True
        return answers


def _start_with_publickey(conn: asyncssh.SSHClientConnection) -> None:
    """Skip the ``none`` request asyncssh sends first (one round trip).

    Its only use is learning the server's methods; a refused key's failure tells the
    same, and ``none`` stays second for clients without any key.
    """
    methods: Any = getattr(conn, "_auth_methods", None)
    if methods == [b"none"]:
        conn._auth_methods = [b"publickey", b"none"]


_QUERY = b"\x00"  # SSH boolean FALSE: "would you accept this key?" (no signature)
_SIGNED = b"\x01"


def _watch_publickey(
    conn: asyncssh.SSHClientConnection, state: LoginState, *, sign_first: bool
) -> None:
    """Count publickey offers; with ``sign_first`` send file keys' offers signed at once.

    Signing skips the query's round trip ("would you accept this key?"). Only keys
    loaded from files (never agent, PKCS#11 or security keys: signing those may need a
    touch or a prompt); the server answers success, partial success or failure exactly
    as it would after the query.
    """
    original = getattr(conn, "send_userauth_request", None)
    if original is None:
        return
    keys: Any = getattr(getattr(conn, "_options", None), "client_keys", None) or []
    local = [k for k in keys if isinstance(k, asyncssh.SSHKeyPair) and _signs_silently(k)]

    async def send(method: bytes, *args: bytes, key: Any = None, trivial: bool = True) -> None:
        if method == b"publickey":
            state.keys_offered += 1
            if sign_first and key is None and len(args) == 3 and args[0] == _QUERY:
                for k in local:  # args are SSH strings: length-prefixed
                    if String(k.algorithm) == args[1] and String(k.public_data) == args[2]:
                        state.signed_first += 1
                        await original(method, _SIGNED, args[1], args[2], key=k, trivial=False)
                        return
        await original(method, *args, key=key, trivial=trivial)

    conn.send_userauth_request = send  # type: ignore[method-assign]


def _signs_silently(k: asyncssh.SSHKeyPair) -> bool:
    alg = k.algorithm
    return (
        type(k).__name__ == "SSHLocalKeyPair"
        and not alg.startswith(b"sk-")
        and b"webauthn" not in alg
    )


# -- messages ---------------------------------------------------------------------------


def failure_message(key: str, user: str, state: LoginState) -> str | None:
    """The one-line message for a refused login that involved keyboard-interactive.

    Returns:
        The message, or None when keyboard-interactive played no part.
    """
    if not state.kbdint_offered:
        return None
    who = key if "@" in key else f"{user}@{key}"
    if not state.key_accepted:
        return (
            f"ssh: {who}: Permission denied (publickey): no usable key was accepted; the "
            "server also offers keyboard-interactive, which dispatch answers only as a "
            "second factor after a key (password logins are disabled)"
        )
    asked = f' ("{state.prompts[0].strip()}")' if state.prompts else ""
    if state.answered:
        return (
            f"ssh: {who}: Permission denied: the server accepted the key but refused the "
            f"one-time password (keyboard-interactive{asked}); not retried (a code is good "
            "once: wait for the next one)"
        )
    if state.prompts and not state.cannot_answer:  # asked; the answerer gave up or timed out
        return (
            f"ssh: {who}: the server accepted the key and asked for a one-time password "
            f"(keyboard-interactive{asked}), but it was not answered ({state.no_answer})"
        )
    return (
        f"ssh: {who}: the server accepted the key and asked for a one-time password "
        f"(keyboard-interactive{asked}), but nothing here can answer it ({state.no_answer}). "
        "Provide one: run in a terminal, set SSH_ASKPASS (with SSH_ASKPASS_REQUIRE=force "
        "when there is no DISPLAY), pass Pool(kbdint=...), use the dispatch agent, or "
        "log in once with an OpenSSH ControlMaster (ControlPath in the ssh config)"
    )
