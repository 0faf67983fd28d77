"""Where the ssh config and known_hosts live, how a host string splits, which aliases exist.

Host *resolution* (HostName, Port, User, IdentityFile, ProxyJump, Include, Match...) is
done by asyncssh's own OpenSSH config support when a connection is prepared (see
``dispatch.ssh.connect``); this module only lists aliases: a pure parser plus a small
I/O wrapper (``hosts()`` in hosts.py applies it to the current pool's config).
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import logging
import os
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HostSpec",
    "parse_host",
    "default_ssh_config",
    "default_known_hosts",
    "parse_host_aliases",
    "read_host_aliases",
    "host_option",
    "read_host_option",
]

log = logging.getLogger(__name__)

SSH_CONFIG_ENV = "DISPATCH_SSH_CONFIG"
KNOWN_HOSTS_ENV = "DISPATCH_KNOWN_HOSTS"

_PATTERN_CHARS = frozenset("*?!")
_MAX_INCLUDE_DEPTH = 16


def default_ssh_config() -> Path:
    """The ssh client config used by default: ``$DISPATCH_SSH_CONFIG``, else ``~/.ssh/config``."""
    env = os.environ.get(SSH_CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.ssh/config").expanduser()


def default_known_hosts() -> Path | None:
    """``$DISPATCH_KNOWN_HOSTS`` when set (it overrides the config's UserKnownHostsFile)."""
    env = os.environ.get(KNOWN_HOSTS_ENV)
    return Path(env).expanduser() if env else None


@dataclass(frozen=True)
class HostSpec:
    """A host string as callers write it: ``alias``, ``user@alias`` or ``alias:port``."""

    host: str
    user: str | None = None
    port: int | None = None

    @property
    def display(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.host}{port}"


_PORT_RE = re.compile(r"^(?P<host>[^:\[\]]+):(?P<port>[0-9]{1,5})$")


def parse_host(text: str) -> HostSpec:
    """Split ``user@host:port`` (user and port optional). Raises ValueError on empty parts."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"invalid SSH host {text!r}: empty")
    if any(c.isspace() for c in text) or text.startswith("-"):
        raise ValueError(f"invalid SSH host {text!r}: whitespace or leading '-'")
    user: str | None = None
    rest = text
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if not user or not rest:
            raise ValueError(f"invalid SSH host {text!r}")
    port: int | None = None
    m = _PORT_RE.match(rest)
    if m:
        rest = m.group("host")
        port = int(m.group("port"))
        if not 1 <= port <= 65535:
            raise ValueError(f"invalid SSH host {text!r}: port {port} out of range")
    elif rest.startswith("[") and "]:" in rest:  # [v6addr]:port
        addr, _, port_s = rest[1:].partition("]:")
        if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
            raise ValueError(f"invalid SSH host {text!r}: bad port {port_s!r}")
        rest, port = addr, int(port_s)
    elif rest.count(":") == 1:  # host:port with a port that is not a number (host:, host:abc)
        name, _, port_s = rest.partition(":")
        what = f"bad port {port_s!r}" if name else "empty host name"
        raise ValueError(f"invalid SSH host {text!r}: {what} (write host or host:PORT)")
    return HostSpec(rest, user, port)


# ---------------------------------------------------------------------------------------
# aliases: a pure parser on text, with includes resolved through a callback
# ---------------------------------------------------------------------------------------


def _split_line(line: str) -> tuple[str, list[str]] | None:
    """Keyword (lower case) and arguments of one config line, or None for blank/comment."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    m = re.match(r"^([A-Za-z][A-Za-z0-9]*)\s*(?:=\s*|\s+)(.*)$", line)
    if not m:
        return (line.lower(), [])
    key, rest = m.group(1).lower(), m.group(2)
    try:
        args = shlex.split(rest, comments=True)
    except ValueError:
        args = rest.split()
    return key, args


def is_concrete_alias(pattern: str) -> bool:
    """True for a plain alias; False for wildcard (``*``, ``?``) or negated (``!``) patterns."""
    return bool(pattern) and not (_PATTERN_CHARS & set(pattern))


def parse_host_aliases(
    text: str,
    include: Callable[[str], Iterable[str]] | None = None,
    _depth: int = 0,
) -> list[str]:
    """Concrete ``Host`` aliases of ssh config ``text``, in file order, without duplicates.

    ``include(pattern)`` returns the texts of the files an ``Include`` argument names (in
    the order OpenSSH reads them); None ignores includes. ``Match`` blocks add nothing.
    """
    seen: dict[str, None] = {}
    for raw in text.splitlines():
        parsed = _split_line(raw)
        if parsed is None:
            continue
        key, args = parsed
        if key == "host":
            for pattern in args:
                if is_concrete_alias(pattern):
                    seen.setdefault(pattern, None)
        elif key == "include" and include is not None and _depth < _MAX_INCLUDE_DEPTH:
            for pattern in args:
                for sub in include(pattern):
                    for alias in parse_host_aliases(sub, include, _depth + 1):
                        seen.setdefault(alias, None)
    return list(seen)


def include_paths(pattern: str, base_dir: Path) -> list[Path]:
    """Files an ``Include`` argument names: ``~`` expanded, relative to ``base_dir``, sorted."""
    expanded = os.path.expanduser(pattern)
    if not os.path.isabs(expanded):
        expanded = str(base_dir / expanded)
    return [Path(p) for p in sorted(glob.glob(expanded)) if os.path.isfile(p)]


def read_host_aliases(path: Path) -> list[str]:
    """Aliases from the config file at ``path`` (Includes followed; missing file -> [])."""
    # OpenSSH resolves relative Include paths against ~/.ssh for user configs (asyncssh too).
    base = Path("~/.ssh").expanduser()

    def _include(pattern: str) -> list[str]:
        texts = []
        for p in include_paths(pattern, base):
            try:
                texts.append(p.read_text(encoding="utf-8", errors="replace"))
            except OSError as exc:
                log.debug("cannot read included ssh config %s: %s", p, exc)
        return texts

    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        log.debug("cannot read ssh config %s: %s", path, exc)
        return []
    return parse_host_aliases(text, _include)


def _host_matches(patterns: list[str], alias: str) -> bool:
    """OpenSSH ``Host`` matching: some positive pattern matches and no negated one does."""
    name = alias.lower()
    hit = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if fnmatch.fnmatchcase(name, pattern.lstrip("!").lower()):
            if negated:
                return False
            hit = True
    return hit


def host_option(
    text: str,
    alias: str,
    option: str,
    include: Callable[[str], Iterable[str]] | None = None,
    _depth: int = 0,
) -> str | None:
    """First value of ``option`` that applies to ``alias`` in ssh config ``text`` (as OpenSSH).

    For options asyncssh does not read (StrictHostKeyChecking). ``Host`` blocks and
    ``Include`` are followed; ``Match`` blocks are not evaluated (their lines are skipped).
    """
    active = True  # lines before the first Host apply to every host
    want = option.lower()
    for raw in text.splitlines():
        parsed = _split_line(raw)
        if parsed is None:
            continue
        key, args = parsed
        if key == "host":
            active = _host_matches(args, alias)
        elif key == "match":
            active = False
        elif not active:
            continue
        elif key == "include" and include is not None and _depth < _MAX_INCLUDE_DEPTH:
            for pattern in args:
                for sub in include(pattern):
                    value = host_option(sub, alias, option, include, _depth + 1)
                    if value is not None:
                        return value
        elif key == want and args:
            return args[0]
    return None


def read_host_option(path: Path, alias: str, option: str) -> str | None:
    """``host_option`` of the config file at ``path`` (Includes followed; missing file -> None)."""
    base = Path("~/.ssh").expanduser()

    def _include(pattern: str) -> list[str]:
        texts = []
        for p in include_paths(pattern, base):
            with contextlib.suppress(OSError):
                texts.append(p.read_text(encoding="utf-8", errors="replace"))
        return texts

    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return host_option(text, alias, option, _include)
