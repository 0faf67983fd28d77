"""File systems a SLURM job mounts on its nodes (rendered by `SlurmJob`'s bootstrap).

Lives in the slurm layer because the job script needs it; `dispatch.placement.hardware`
re-exports it for the inventory (one class, one identity: ``dispatch.JuiceFSMount``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .._validate import check_path
from ..errors import InvalidValueError

__all__ = ["JuiceFSMount", "split_password"]

_REDIS_PASSWORD_RE = re.compile(r"(://[^:/@]*:)[^@]*@")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


@dataclass(frozen=True)
class JuiceFSMount:
    """A JuiceFS file system to mount for a job; ``redis_url`` may carry a password."""

    redis_url: str = field(repr=False)
    mount_point: str
    cache_dir: str | None = None
    cache_size: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.redis_url, str) or not self.redis_url.strip():
            raise InvalidValueError("JuiceFSMount.redis_url must be a non-empty string")
        check_path("JuiceFSMount.mount_point", self.mount_point)
        check_path("JuiceFSMount.cache_dir", self.cache_dir)

    @property
    def redacted_url(self) -> str:
        """``redis_url`` with any password replaced by ``***`` (safe to log)."""
        return _REDIS_PASSWORD_RE.sub(r"\1***@", self.redis_url)

    def __repr__(self) -> str:
        return (
            f"JuiceFSMount(redis_url={self.redacted_url!r}, mount_point={self.mount_point!r}, "
            f"cache_dir={self.cache_dir!r}, cache_size={self.cache_size!r}, name={self.name!r})"
        )


def split_password(url: str) -> tuple[str, str | None]:
    """``redis://u:p@h/1`` -> ``('redis://u@h/1', 'p')``; userinfo ends at the last ``@``."""
    m = _URL_SCHEME.match(url)
    if m is None:
        return url, None
    rest = url[m.end() :]
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    userinfo, at, host = authority.rpartition("@")
    user, colon, secret = userinfo.partition(":")
    if not at or not colon:
        return url, None
    return f"{m.group(0)}{user}@{host}{path}", secret
