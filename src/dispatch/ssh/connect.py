"""Making one SSH connection: client options from the ssh config, host keys, ProxyJump hops.

Also the one-line ``ssh``-style messages for connect failures. Nothing here pools or
retries: `pool.py` decides when to connect, this module knows how.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from . import auth
from .config import (
    SSH_CONFIG_ENV,
    HostSpec,
    default_ssh_config,
    parse_host,
    read_host_option,
)
from .errors import ConnectError, HandshakeTimeout, HostKeyConnectError

__all__ = [
    "jitter",
    "ClientOptions",
    "client_options",
    "known_hosts_files",
    "host_key_error",
    "describe",
    "proxy_hops",
    "connect_hops",
    "open_connection",
]

log = logging.getLogger(__name__)

OptionsFor = Callable[[str, HostSpec], Awaitable[asyncssh.SSHClientConnectionOptions]]


def jitter(base: float, attempt: int, cap: float = 5.0) -> float:
    """Backoff delay of retry ``attempt``: exponential from ``base``, capped, +-50% jitter."""
    return float(min(cap, base * (2**attempt)) * (0.5 + random.random()))


def _is_file(path: Path) -> bool:
    return path.is_file()


def _append_line(file: str, line: str) -> Path:
    path = Path(file).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line)
    return path


@dataclass(frozen=True)
class ClientOptions:
    """asyncssh's options for one host, plus what dispatch itself reads from the config.

    ``known_hosts`` lists the configured known_hosts files in order, missing ones
    included (messages name them; accept-new appends to the first, as ssh does), while
    ``opts`` verifies against the existing ones only. ``strict_host_key_checking`` is
    the config's StrictHostKeyChecking, lower case (asyncssh does not read it);
    ``batch_mode`` its BatchMode (no terminal or askpass prompts).
    """

    opts: asyncssh.SSHClientConnectionOptions
    known_hosts: tuple[str, ...]
    strict_host_key_checking: str | None
    batch_mode: bool = False

    @property
    def accept_new(self) -> bool:
        """Whether the config says ``StrictHostKeyChecking accept-new``."""
        return self.strict_host_key_checking == "accept-new"


_warned: set[str] = set()  # missing files already reported (log once per process)


def _warn_missing(what: str, path: str, key: str) -> None:
    if path not in _warned:
        _warned.add(path)
        log.warning("%s %s (for %s) does not exist; skipped, as ssh does", what, path, key)


def _expanded(path: object) -> Path:
    return Path(str(path)).expanduser()


async def _construct(
    kwargs: dict[str, Any], key: str, cfg: Path
) -> asyncssh.SSHClientConnectionOptions:
    try:
        opts: asyncssh.SSHClientConnectionOptions = (
            await asyncssh.SSHClientConnectionOptions.construct(**kwargs)
        )
    except (asyncssh.ConfigParseError, ValueError, OSError) as exc:
        raise ConnectError(f"ssh: {key}: bad ssh config {cfg}: {exc}") from None
    return opts


async def _without_missing_identities(
    kwargs: dict[str, Any], key: str, cfg: Path
) -> dict[str, Any]:
    """``kwargs`` naming only the IdentityFiles that exist (ssh warns and tries the next)."""
    probe = await _construct({**kwargs, "client_keys": None}, key, cfg)  # loads no key
    ids: Any = probe.config.get("IdentityFile") or []
    present = [str(i) for i in ids if _is_file(_expanded(i))]
    for i in ids:
        if str(i) not in present:
            _warn_missing("IdentityFile", str(i), key)
    # As for config-named keys: encrypted ones are skipped, not asked a passphrase for.
    return {**kwargs, "client_keys": present or None, "ignore_encrypted": True}


def _verified_known_hosts(
    opts: asyncssh.SSHClientConnectionOptions, files: list[str], key: str
) -> object:
    """The ``known_hosts`` argument to use instead of the config's, or None to keep it.

    Options are rebuilt from their arguments at connect time, so a fix has to be an
    argument, not an attribute set afterwards.
    """
    kh: Any = opts.known_hosts
    if kh is None:  # "UserKnownHostsFile none" turns checking off in asyncssh: never
        return []  # asyncssh then checks ~/.ssh/known_hosts (nothing trusted if absent)
    if not (isinstance(kh, str | os.PathLike | list | tuple) and kh):
        return None
    present = [f for f in files if _is_file(_expanded(f))]
    if present == files:
        return None
    for f in files:
        if f not in present:
            log.debug("known_hosts file %s (for %s) does not exist (yet); skipped", f, key)
    # None left: trust nothing (an empty list would fall back to ~/.ssh/known_hosts).
    return present or asyncssh.import_known_hosts("")


async def client_options(
    key: str,
    spec: HostSpec,
    *,
    ssh_config: Path | None,
    known_hosts: Path | None,
    keepalive_interval: float | None,
    keepalive_count_max: int | None,
) -> ClientOptions:
    """Options for host string ``key`` (resolved by asyncssh's OpenSSH config support).

    Missing IdentityFiles and known_hosts files are skipped (logged once), as ssh does.

    Args:
        key: the host string as the caller wrote it (for messages).
        spec: ``key`` split into host, user and port.
        ssh_config: the config named by ``Pool(ssh_config=...)``; None for
            ``$DISPATCH_SSH_CONFIG``, else ``~/.ssh/config``. A named config must exist.
        known_hosts: known_hosts file overriding the config's UserKnownHostsFile.
        keepalive_interval: seconds between keepalives (None: the config's).
        keepalive_count_max: unanswered keepalives before dead (None: the config's).

    Returns:
        The options (public-key authentication only) and the config's host-key settings.

    Raises:
        ConnectError: the named config does not exist or cannot be parsed.
    """
    origin = "Pool(ssh_config=...)" if ssh_config is not None else None
    if ssh_config is None:
        ssh_config = default_ssh_config()
        origin = f"${SSH_CONFIG_ENV}" if os.environ.get(SSH_CONFIG_ENV) else None
    if origin is not None and not _is_file(ssh_config):
        # like `ssh -F missing`: a config the caller named must exist
        raise ConnectError(f"ssh: {key}: ssh config {ssh_config} (from {origin}) does not exist")
    has_config = _is_file(ssh_config)
    kwargs: dict[str, Any] = {
        "config": [str(ssh_config)] if has_config else [],
        "host": spec.host,
        "password_auth": False,  # keys, plus a second factor when asked (see auth.py)
        "encoding": None,
    }
    if spec.user:
        kwargs["username"] = spec.user
    if spec.port:
        kwargs["port"] = spec.port
    if known_hosts is not None:
        kwargs["known_hosts"] = str(known_hosts)
    if keepalive_interval is not None:
        kwargs["keepalive_interval"] = keepalive_interval
    if keepalive_count_max is not None:
        kwargs["keepalive_count_max"] = keepalive_count_max
    try:
        opts = await asyncssh.SSHClientConnectionOptions.construct(**kwargs)
    except FileNotFoundError:  # an IdentityFile that does not exist
        kwargs = await _without_missing_identities(kwargs, key, ssh_config)
        opts = await _construct(kwargs, key, ssh_config)
    except (asyncssh.ConfigParseError, ValueError, OSError) as exc:
        raise ConnectError(f"ssh: {key}: bad ssh config {ssh_config}: {exc}") from None
    files = known_hosts_files(opts)
    fixed = _verified_known_hosts(opts, files, key)
    if fixed is not None:
        kwargs = {**kwargs, "known_hosts": fixed}
        opts = await _construct(kwargs, key, ssh_config)
    opts = await _named_identities_only(opts, kwargs, key, ssh_config)
    strict = (
        read_host_option(ssh_config, spec.host, "StrictHostKeyChecking") if has_config else None
    )
    batch = read_host_option(ssh_config, spec.host, "BatchMode") if has_config else None
    return ClientOptions(
        opts,
        tuple(files),
        strict.lower() if strict else None,
        batch_mode=(batch or "").lower() in ("yes", "true"),
    )


async def _named_identities_only(
    opts: asyncssh.SSHClientConnectionOptions, kwargs: dict[str, Any], key: str, cfg: Path
) -> asyncssh.SSHClientConnectionOptions:
    """With an agent and IdentityFiles named by the config, offer only those keys.

    asyncssh offers every agent key first, one round trip each (and each counts toward
    the server's MaxAuthTries) before the key the config names; ssh offers the named
    ones first. Like ``IdentitiesOnly yes``, the agent's copies of the named keys are
    still used (an encrypted key file works through the agent).
    """
    if not opts.agent_path or opts.config.get("IdentitiesOnly") or "agent_identities" in kwargs:
        return opts
    ids: Any = opts.config.get("IdentityFile") or []
    named = [str(i) for i in ids if _is_file(_expanded(i))]
    if not named:
        return opts
    try:
        return await _construct({**kwargs, "agent_identities": named}, key, cfg)
    except ConnectError as exc:  # e.g. a key whose public half cannot be read: as before
        log.debug("offering only the named identities of %s failed: %s", key, exc)
        return opts


def known_hosts_files(opts: asyncssh.SSHClientConnectionOptions) -> list[str]:
    """The known_hosts files ``opts`` names (``~/.ssh/known_hosts`` when none is set)."""
    kh: Any = opts.known_hosts
    if isinstance(kh, str | os.PathLike):
        return [str(kh)]
    if isinstance(kh, list | tuple) and kh:
        return [str(k) for k in kh]
    return [str(Path("~/.ssh/known_hosts").expanduser())]


async def host_key_error(
    key: str, copts: ClientOptions, *, accept_new: bool
) -> HostKeyConnectError | None:
    """The error for a host key asyncssh could not verify: unknown, or CHANGED (says which).

    With ``accept_new`` an unknown (not a changed) key is appended to the first
    known_hosts file instead, and None is returned: try connecting again.
    """
    opts = copts.opts
    files = list(copts.known_hosts)
    host, port = opts.host, opts.port
    changed = False
    try:
        addr = await asyncio.get_running_loop().run_in_executor(None, socket.gethostbyname, host)
    except OSError:
        addr = host
    for f in files:
        with contextlib.suppress(Exception):  # a missing file trusts nothing
            trusted = asyncssh.read_known_hosts(f).match(host, addr, port)[0]
            if trusted:
                changed = True
    where = ", ".join(files)
    target = f"{host}:{port}" if port != 22 else host
    if not changed and accept_new and await _accept_new_key(opts, files[0]):
        return None
    if changed:
        msg = (
            f"ssh: Host key verification failed for {key} ({target}): the server's "
            f"host key has CHANGED and does not match known_hosts ({where}). Remove the "
            f"stale entry only if you know why the key changed."
        )
    else:
        msg = (
            f"ssh: Host key verification failed for {key} ({target}): no host key "
            f"for it in known_hosts ({where}) (unknown host key; add it with "
            f"ssh-keyscan after checking its fingerprint)."
        )
        if copts.strict_host_key_checking in ("no", "off"):
            msg += (
                " The config's StrictHostKeyChecking no is not honoured: dispatch never "
                "disables host key checks (use accept-new, or Pool(accept_new_host_keys=True))."
            )
    return HostKeyConnectError(msg)


async def _accept_new_key(opts: asyncssh.SSHClientConnectionOptions, file: str) -> bool:
    """Append the server's key to ``file`` (accept-new); False if not possible."""
    try:
        key = await asyncssh.get_server_host_key(opts.host, opts.port)
    except (OSError, asyncssh.Error):
        return False
    if key is None:
        return False
    name = opts.host if opts.port == 22 else f"[{opts.host}]:{opts.port}"
    line = f"{name} {key.export_public_key('openssh').decode().strip()}\n"
    path = _append_line(file, line)
    log.info("added host key of %s to %s (accept_new_host_keys)", name, path)
    return True


def describe(
    key: str,
    spec: HostSpec,
    opts: asyncssh.SSHClientConnectionOptions | None,
    exc: BaseException,
) -> tuple[str, bool]:
    """ssh-like one-line message for a connect failure, and whether retrying may help."""
    target = f"{opts.host} port {opts.port}" if opts is not None else key
    user = opts.username if opts is not None else "?"
    if isinstance(exc, socket.gaierror):
        host = opts.host if opts is not None else spec.host
        return f"ssh: Could not resolve hostname {host}: {exc.strerror}", False
    if isinstance(exc, ConnectionRefusedError):
        return f"ssh: connect to host {target}: Connection refused", True
    if isinstance(exc, HandshakeTimeout):
        return (
            f"ssh: connect to host {target}: SSH handshake/authentication timed out after "
            f"{exc.seconds:g}s (the TCP connection was established; the server stopped "
            "answering)",
            False,
        )
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return f"ssh: connect to host {target}: Connection timed out (TCP connect)", False
    if isinstance(exc, asyncssh.PermissionDenied):
        who = key if "@" in key else f"{user}@{key}"
        keys = ""
        if opts is not None:
            ids: Any = opts.config.get("IdentityFile") or []
            keys = f" (identity files: {', '.join(str(i) for i in ids)})" if ids else ""
        return (
            f"ssh: {who}: Permission denied (publickey): no usable key was "
            f"accepted{keys}; password logins are disabled",
            False,
        )
    if isinstance(exc, asyncssh.ConnectionLost | ConnectionResetError | BrokenPipeError):
        return f"ssh: connection to {target} lost during handshake: {exc}", True
    if isinstance(exc, asyncssh.DisconnectError):
        return f"ssh: {target}: disconnected: {exc.reason}", True
    if isinstance(exc, OSError):
        return f"ssh: connect to host {target}: {exc.strerror or exc}", True
    return f"ssh: {key}: {type(exc).__name__}: {exc}", False


def proxy_hops(key: str, opts: asyncssh.SSHClientConnectionOptions) -> list[str]:
    """The ProxyJump hops of ``opts`` in order (empty for a direct connection)."""
    spec = opts.tunnel
    if not isinstance(spec, str) or not spec or spec.lower() == "none":
        return []
    hops = [h.strip() for h in spec.split(",") if h.strip()]
    if key in hops:
        raise ConnectError(f"ssh: {key}: ProxyJump loops back to itself")
    return hops


async def connect_hops(
    key: str,
    first: asyncssh.SSHClientConnection,
    hops: list[str],
    options_for: OptionsFor,
    default_timeout: float,
    answerer: auth.Answerer | None = None,
) -> tuple[asyncssh.SSHClientConnection, list[Callable[[], None]]]:
    """Connect the later ProxyJump ``hops`` (dedicated, not pooled) through ``first``.

    A hop that asks for a second factor is answered by ``answerer``, as the target is.

    Returns:
        The last hop's connection and the callables closing the hops opened here.

    Raises:
        ConnectError: a hop failed; its message names the hop and the target.
    """
    conn = first
    closers: list[Callable[[], None]] = []
    try:
        for hop in hops:
            try:
                spec = parse_host(hop)
            except ValueError as exc:
                raise ConnectError(f"dispatch: {key}: ProxyJump {exc}") from None
            hop_opts = await options_for(hop, spec)
            try:
                conn = await _login(
                    hop, hop_opts, conn, float(hop_opts.connect_timeout or default_timeout),
                    answerer,
                )
            except ConnectError as exc:
                raise ConnectError(
                    f"{exc} (ProxyJump hop {hop} of {key})", transient=exc.transient
                ) from None
            except (TimeoutError, OSError, asyncssh.Error) as exc:
                msg, transient = describe(hop, spec, hop_opts, exc)
                raise ConnectError(
                    f"{msg} (ProxyJump hop {hop} of {key})", transient=transient
                ) from None
            closers.append(conn.close)
    except BaseException:
        for fn in reversed(closers):
            fn()
        raise
    return conn, closers


async def _login(
    key: str,
    opts: asyncssh.SSHClientConnectionOptions,
    tunnel: asyncssh.SSHClientConnection | None,
    timeout: float,
    answerer: auth.Answerer | None,
    state: auth.LoginState | None = None,
) -> asyncssh.SSHClientConnection:
    """asyncssh.connect within ``timeout``; the clock waits while a code is being answered.

    ``timeout`` (the config's ConnectTimeout) bounds the network steps: TCP connect, key
    exchange, the key, and the server's check of an answer (each time anew after an
    answer). The time a human or an askpass program takes to answer is bounded by
    ``answerer.timeout`` instead. asyncssh's own ``connect_timeout`` would span the whole
    login, prompts included, so it is turned off here and this clock replaces it.

    Raises:
        ConnectError: refused in a way keyboard-interactive explains (the one-line
            message says what the server asked and why it was not answered).
        TimeoutError, OSError, asyncssh.Error: as asyncssh raised them.
    """
    state = state if state is not None else auth.LoginState()
    loop = asyncio.get_running_loop()
    ended = False
    async with asyncio.timeout(timeout) as clock:

        def answering(prompt_seconds: float | None) -> None:
            # Called by the LoginClient around each answer. A handler still running when
            # the login already ended (its connection aborted) must not touch the clock.
            if ended or clock.expired():
                return
            extra = prompt_seconds if prompt_seconds is not None else 0.0
            clock.reschedule(loop.time() + timeout + extra)

        kwargs: dict[str, Any] = {
            "options": opts,
            "client_factory": lambda: auth.LoginClient(key, answerer, state, answering),
            "connect_timeout": None,  # bounded by ``clock`` (asyncssh's spans the prompts)
        }
        if tunnel is not None:
            kwargs["tunnel"] = tunnel
        try:
            conn: asyncssh.SSHClientConnection = await asyncssh.connect(opts.host, **kwargs)
        except (asyncssh.PermissionDenied, asyncssh.DisconnectError):
            msg = auth.failure_message(key, str(opts.username), state)
            if msg is None:
                raise
            raise ConnectError(msg) from None
        finally:
            ended = True
    if state.signed_first:
        log.debug("%s: key offered signed (no query round trip)", key)
    return conn


async def open_connection(
    key: str,
    opts: asyncssh.SSHClientConnectionOptions,
    tunnel: asyncssh.SSHClientConnection | None,
    timeout: float,
    handshakes: asyncio.Semaphore,
    answerer: auth.Answerer | None = None,
    state: auth.LoginState | None = None,
) -> asyncssh.SSHClientConnection:
    """One connect attempt within ``timeout``, holding a slot of ``handshakes`` meanwhile.

    A second factor is asked of ``answerer`` (None: nobody answers); the time a human
    takes to answer (bounded by ``answerer.timeout``) does not count against ``timeout``.
    ``state`` (a fresh one if None) records what happened, e.g. whether a second factor
    was answered.

    Raises:
        ConnectError: refused after keyboard-interactive was asked (see ``_login``).
        HandshakeTimeout: timed out after the TCP connection was up.
        TimeoutError, OSError, asyncssh.Error: as asyncssh raised them.
    """
    state = state if state is not None else auth.LoginState()
    try:
        async with handshakes:
            log.debug("connecting to %s (%s:%s)", key, opts.host, opts.port)
            return await _login(key, opts, tunnel, timeout, answerer, state)
    except TimeoutError:
        if state.tcp_up:
            raise HandshakeTimeout(timeout) from None
        raise
