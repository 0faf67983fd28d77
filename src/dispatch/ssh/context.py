"""Which pool is current: the innermost ``async with Pool()``, else one default pool per loop.

The blocking facade runs everything on one background loop, so its default pool persists
across blocking calls. After ``fork`` the child forgets the parent's pools (never using or
closing the parent's sockets) and makes its own on first use.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from pathlib import Path

from .config import default_ssh_config
from .pool import Pool, entered_pool

__all__ = ["current_pool", "current_ssh_config", "close_default_pool"]

_default_lock = threading.Lock()
_default_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pool] = (
    weakref.WeakKeyDictionary()
)


def current_pool() -> Pool:
    """The pool in the current context.

    The innermost ``async with Pool()``, else the default pool of the running event loop
    (created on first use, closed when the blocking API's loop shuts down). Call it from
    a coroutine.

    Returns:
        The current ``Pool``.
    """
    pool = entered_pool()
    pid = os.getpid()
    if pool is not None and not pool.closed and pool.pid == pid:
        return pool
    loop = asyncio.get_running_loop()
    with _default_lock:
        pool = _default_pools.get(loop)
        if pool is None or pool.closed or pool.pid != pid:
            pool = Pool()
            _default_pools[loop] = pool
    return pool


def current_ssh_config() -> Path:
    """The ssh config of the pool entered in this context, else the default location."""
    pool = entered_pool()
    if pool is not None and pool.ssh_config is not None:
        return pool.ssh_config
    return default_ssh_config()


async def close_default_pool() -> None:
    """Close the running loop's default pool, if it has one (at interpreter exit, say)."""
    loop = asyncio.get_running_loop()
    with _default_lock:
        pool = _default_pools.pop(loop, None)
    if pool is not None:
        await pool.close()


def _forget_pools_after_fork() -> None:
    # The child must never use (or close) the parent's connections: just drop them.
    global _default_lock
    _default_lock = threading.Lock()
    for pool in list(_default_pools.values()):
        pool.abandon()
    _default_pools.clear()


os.register_at_fork(after_in_child=_forget_pools_after_fork)
