"""``hosts()``: the concrete aliases of the ssh config the current pool reads."""

from __future__ import annotations

from .config import read_host_aliases
from .context import current_ssh_config

__all__ = ["hosts"]


def hosts() -> list[str]:
    """Parse the ssh config to list accessible hosts.

    Returns the host names/aliases defined in the SSH config (``$DISPATCH_SSH_CONFIG``, else
    ``~/.ssh/config``; inside ``async with Pool(ssh_config=...)`` that pool's file), following
    ``Include``, in file order without duplicates. Excludes wildcard patterns and special
    entries (``*``, ``?``, negated ``!`` patterns and ``Match`` blocks).

    Returns:
        Host aliases in file order (empty if the config file does not exist).
    """
    return read_host_aliases(current_ssh_config())
