"""The SSH half of the API: pooled asyncssh connections, commands, transfers, tunnels.

Every coroutine here has a blocking twin in ``dispatch`` (generated, same signature).
"""

from __future__ import annotations

import logging

from .commands import is_reachable, run, run_many
from .context import close_default_pool as close_default_pool  # for _blocking's exit hook
from .context import current_pool
from .errors import ConnectError, HostKeyConnectError
from .hosts import hosts
from .pool import Pool
from .registry import PoolKey as PoolKey  # for the layers above; not public API
from .slots import PoolStats
from .transfer import copy_from, copy_to, write_file
from .tunnel import close_tunnel, forward_port

# asyncssh logs every command line at INFO (secrets in argv included), so a script's
# `logging.basicConfig(level=INFO)` would print them. Keep its logger at WARNING unless the
# application set a level on it before importing dispatch.ssh.
if logging.getLogger("asyncssh").level == logging.NOTSET:
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

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
