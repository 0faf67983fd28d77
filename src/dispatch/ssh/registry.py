"""Per-pool state for the layers above ssh: typed keys, one value per pool, closed with it.

The pool knows nothing of pollers, tunnels or Jupyter sessions; each layer declares a
`PoolKey` with a factory (and optionally a close hook) and asks ``pool.registry.get(KEY)``.
State keyed this way cannot collide (the key is an object, not an ``id()``) and dies
with the pool instead of leaking in a module global.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, cast

__all__ = ["PoolKey", "Registry"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class PoolKey(Generic[T]):
    """A typed slot for per-pool state: ``factory`` makes it, ``close`` tears it down."""

    __slots__ = ("close", "factory", "name")

    def __init__(
        self,
        name: str,
        factory: Callable[[], T],
        close: Callable[[T], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.factory = factory
        self.close = close

    def __repr__(self) -> str:
        return f"PoolKey({self.name!r})"


class Registry:
    """The values of every `PoolKey` used with one pool, in creation order."""

    def __init__(self) -> None:
        self._values: dict[PoolKey[Any], Any] = {}

    def get(self, key: PoolKey[T]) -> T:
        """The pool's value for ``key``, made by its factory on first use."""
        if key not in self._values:
            self._values[key] = key.factory()
        return cast(T, self._values[key])

    def peek(self, key: PoolKey[T]) -> T | None:
        """The value for ``key`` if one was made, without making it."""
        return cast("T | None", self._values.get(key))

    async def aclose(self) -> None:
        """Run every close hook, newest first; a failing hook is logged, not raised."""
        items = list(self._values.items())
        self._values.clear()
        for key, value in reversed(items):
            if key.close is None:
                continue
            try:
                await key.close(value)
            except Exception:  # one layer's teardown must not stop another's
                log.warning("closing %s failed", key.name, exc_info=True)
