"""The SSH half of the API: pooled asyncssh connections, commands, transfers, tunnels.

Every coroutine here has a blocking twin in ``dispatch`` (generated, same signature).
"""

from __future__ import annotations

from .commands import is_reachable, run, run_many
from .config import hosts
from .pool import ConnectError, HostKeyConnectError, Pool, PoolStats, current_pool
from .registry import PoolKey as PoolKey  # for the layers above; not public API
from .transfer import copy_from, copy_to, write_file
from .tunnel import close_tunnel, forward_port

__all__ = [
    "hosts",
    "run",
    "run_many",
    "copy_to",
    "copy_from",
    "write_file",
    "is_reachable",
    "forward_port",
    "close_tunnel",
    "Pool",
    "PoolStats",
    "current_pool",
    "ConnectError",
    "HostKeyConnectError",
]
