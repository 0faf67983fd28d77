"""This user's private dispatch directory on a host, for job scripts and payloads.

``share_dir/.dispatch-<user>/`` (or ``~/.dispatch/`` without a share dir): per user, so
that nobody else's (possibly world-writable) directory is ever on the path to our files.
`ensure_private_dirs` renders the shell code that creates each level (``mkdir -m 700``)
and refuses one that is a symlink, not ours, or writable by others. The remote home and
user name are asked once per host and pool (one round trip) and kept on the pool.
"""

from __future__ import annotations

import asyncio
import posixpath
import re
import shlex

from ..errors import InvalidValueError, SubmitError
from ..results import RunResult
from ..ssh import PoolKey, current_pool, run

__all__ = [
    "SHARE_PREFIX",
    "HOME_SUBDIR",
    "ProbeFailed",
    "remote_home",
    "remote_user",
    "private_base",
    "ensure_private_dirs",
    "absolute_path",
    "check_dir",
]

#: Per-user directory under ``share_dir`` (``.dispatch-<user>``); ``.dispatch`` under home.
SHARE_PREFIX = ".dispatch-"
HOME_SUBDIR = ".dispatch"

_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")

#: (remote home, remote user) per host alias, for the pool's lifetime.
_IDENTITY: PoolKey[dict[str, asyncio.Future[tuple[str, str]]]] = PoolKey(
    "slurm.identity", dict)


class ProbeFailed(SubmitError):
    """The host could not tell us who we are there (unreachable, auth, no $HOME)."""

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result


def check_dir(kind: str, path: str | None) -> str | None:
    """A directory argument without a trailing ``/`` (None stays None); bad ones raise."""
    if path is None:
        return None
    if not isinstance(path, str) or not path.strip() or "\n" in path or "\0" in path:
        raise InvalidValueError(f"invalid {kind} {path!r}")
    return path.rstrip("/") or "/"


async def _probe(host: str, timeout: float | None) -> tuple[str, str]:
    """Ask ``host`` for the home directory and user name (one round trip)."""
    result = await run('printf "%s\\n" "$HOME"; id -un; id -u', host, timeout=timeout,
                       login_shell=False, retries=1)
    lines = result.stdout.splitlines()
    if not result.ok or len(lines) != 3 or not lines[0].startswith("/") \
            or not lines[2].isdigit():
        reason = result.stderr.strip() or result.stdout.strip() or "no answer"
        # ssh's own message says it best when the host was not reached at all
        msg = reason if result.returncode == 255 else (
            f"dispatch: cannot read $HOME and the user name on {host}: {reason}")
        raise ProbeFailed(msg, RunResult(result.returncode or 1, result.stdout, msg + "\n"))
    return lines[0], lines[1] if _USER.match(lines[1]) else lines[2]


async def _identity(host: str, timeout: float | None) -> tuple[str, str]:
    """The remote home directory and user name (uid when the name is unusual in a path):
    one round trip per host alias and pool, then cached on the pool. Concurrent first
    calls share one probe; a failed probe is not cached."""
    cache = current_pool().registry.get(_IDENTITY)
    probe = cache.get(host)
    if probe is None or (probe.done() and (probe.cancelled() or probe.exception())):
        probe = cache[host] = asyncio.ensure_future(_probe(host, timeout))
    try:
        return await asyncio.shield(probe)
    except ProbeFailed:
        if cache.get(host) is probe:
            del cache[host]
        raise


async def remote_home(host: str, timeout: float | None = None) -> str:
    """The remote user's home directory (cached per host alias and pool)."""
    return (await _identity(host, timeout))[0]


async def remote_user(host: str, timeout: float | None = None) -> str:
    """The remote user's name (or uid when the name is unusual in a path), cached likewise."""
    return (await _identity(host, timeout))[1]


async def absolute_path(path: str, host: str, timeout: float | None) -> str:
    """Resolve ``~``/``~/x`` and relative paths against the remote home directory."""
    if path.startswith("/"):
        return path
    home = await remote_home(host, timeout)
    if path == "~":
        return home
    if path.startswith("~/"):
        return f"{home}/{path[2:]}"
    if path.startswith("~"):
        raise InvalidValueError(f"~user paths are not supported: {path!r}")
    return f"{home}/{path}"


async def private_base(host: str, share_dir: str | None, timeout: float | None) -> str:
    """This user's dispatch directory: ``share_dir/.dispatch-<user>`` or ``~/.dispatch``.

    Per user, so that nobody else's (possibly world-writable) directory is ever on the
    path between ``share_dir`` and our scripts or payloads.
    """
    if share_dir:
        base = await absolute_path(share_dir, host, timeout)
        user = await remote_user(host, timeout)
        return f"{base.rstrip('/')}/{SHARE_PREFIX}{user}"
    return f"{await remote_home(host, timeout)}/{HOME_SUBDIR}"


def ensure_private_dirs(dirs: list[str]) -> str:
    """Shell code: create each directory (mode 0700) if missing, then insist it is ours.

    Each must be a real directory (not a symlink), owned by us and writable by nobody
    else; otherwise the command fails naming the directory, its owner and its mode. The
    parent of the first (``share_dir`` itself) is created if missing, with the user's
    umask: it is meant to be shared.
    """
    parent = shlex.quote(posixpath.dirname(dirs[0]) or "/")
    parts = [f"mkdir -p -- {parent} || exit 1"]
    for d in dirs:
        q = shlex.quote(d)
        parts.append(
            f"{{ [ -e {q} ] || [ -L {q} ] || mkdir -m 700 -- {q} || [ -d {q} ]; }} || exit 1; "
            f"if [ -d {q} ] && [ ! -L {q} ] && [ -O {q} ] "
            f"&& [ -z \"$(find {q} -maxdepth 0 -perm /022 -print)\" ]; then :; else "
            f"printf 'dispatch: refusing to use %s: owner %s, mode %s (it must be a "
            f"directory owned by you and writable only by you)\\n' {q} "
            f"\"$(stat -c %U -- {q} 2>/dev/null || echo unknown)\" "
            f"\"$(stat -c %a -- {q} 2>/dev/null || echo unknown)\" >&2; exit 1; fi"
        )
    return "; ".join(parts)
