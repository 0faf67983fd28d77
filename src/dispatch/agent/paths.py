"""Where the agent lives: its private runtime directory, socket, lock and log files.

``$XDG_RUNTIME_DIR/dispatch/`` when the session has a runtime dir, else
``/tmp/dispatch-$UID/``. The directory must be ours, mode 0700 and not a symlink: a
directory someone else made (or a symlink planted in ``/tmp``) is refused, never used.
`pathlib` is imported only by the functions returning a `Path`: a CLI call served by the
agent uses the ``str`` ones (`runtime_directory`, `socket_file`) and skips its import.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # not typing's: a served CLI call skips importing typing

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "AgentPathError",
    "runtime_directory",
    "socket_file",
    "runtime_dir",
    "socket_path",
    "lock_path",
    "start_lock_path",
    "log_path",
    "pid_path",
    "ensure_runtime_dir",
    "check_runtime_dir",
]


class AgentPathError(OSError):
    """The agent's runtime directory is unsafe (not ours, a symlink, open to others)."""


def runtime_directory() -> str:
    """The agent's directory: ``$XDG_RUNTIME_DIR/dispatch``, else ``/tmp/dispatch-$UID``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base):
        return os.path.join(base, "dispatch")
    return f"/tmp/dispatch-{os.getuid()}"


def socket_file() -> str:
    """The agent's Unix socket (0600), as a string."""
    return os.path.join(runtime_directory(), "agent.sock")


def _path(text: str) -> Path:
    from pathlib import Path

    return Path(text)


def runtime_dir() -> Path:
    """The agent's directory (see `runtime_directory`)."""
    return _path(runtime_directory())


def socket_path() -> Path:
    """The agent's Unix socket (0600)."""
    return _path(socket_file())


def lock_path() -> Path:
    """Held (flock) by the running agent for its whole life: at most one agent per dir."""
    return _path(os.path.join(runtime_directory(), "agent.lock"))


def start_lock_path() -> Path:
    """Held (flock) by whoever is starting an agent: concurrent starters take turns."""
    return _path(os.path.join(runtime_directory(), "start.lock"))


def log_path() -> Path:
    """The agent's log file (its stderr and the ``dispatch`` logger)."""
    return _path(os.path.join(runtime_directory(), "agent.log"))


def pid_path() -> Path:
    """The running agent's process id, one line."""
    return _path(os.path.join(runtime_directory(), "agent.pid"))


def check_runtime_dir(path: str | os.PathLike[str]) -> None:
    """Raise AgentPathError unless ``path`` is a real directory owned by us, mode 0700.

    Args:
        path: the directory to check.

    Raises:
        AgentPathError: it is a symlink, not a directory, owned by another user, or
            readable/writable by others.
    """
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise AgentPathError(f"dispatch agent: {path} is a symlink; refusing to use it")
    if not stat.S_ISDIR(st.st_mode):
        raise AgentPathError(f"dispatch agent: {path} is not a directory")
    if st.st_uid != os.getuid():
        raise AgentPathError(
            f"dispatch agent: {path} belongs to uid {st.st_uid}, not to us (uid {os.getuid()})"
        )
    if st.st_mode & 0o077:
        raise AgentPathError(
            f"dispatch agent: {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0700"
        )


def ensure_runtime_dir() -> Path:
    """Create the runtime directory (0700) if missing, then check it.

    Returns:
        The directory.

    Raises:
        AgentPathError: the directory exists but is unsafe (see ``check_runtime_dir``).
    """
    path = runtime_dir()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    else:
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    check_runtime_dir(path)
    return path
