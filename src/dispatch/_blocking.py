"""The one place that turns a coroutine function of ``dispatch.aio`` into its blocking twin.

Every blocking call is run on a single background thread that owns one event loop for the
whole process. Connections opened by the default pool live on that loop, so they persist
across blocking calls; the calling thread may itself be running an event loop (a Jupyter
cell) or be one of many threads. After ``os.fork()`` the child starts a fresh loop thread.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

__all__ = ["blocking", "run_blocking", "add_shutdown_hook", "loop_thread_ident"]

log = logging.getLogger("dispatch")

P = ParamSpec("P")
T = TypeVar("T")

ShutdownHook = Callable[[], Awaitable[None]]


class _LoopThread:
    """A daemon thread running one asyncio event loop until the process exits."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.hooks: list[ShutdownHook] = []
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="dispatch-loop", daemon=True)
        self.thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def shutdown(self, timeout: float = 5.0) -> None:
        if not self.thread.is_alive():
            return

        async def _run_hooks() -> None:
            for hook in reversed(self.hooks):
                try:
                    await hook()
                except Exception:  # pragma: no cover - best effort at exit
                    log.debug("shutdown hook %r failed", hook, exc_info=True)

        try:
            self.submit(_run_hooks()).result(timeout)
        except Exception:  # pragma: no cover - best effort at exit
            log.debug("dispatch shutdown hooks did not finish", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)


_lock = threading.Lock()
_runner: _LoopThread | None = None


def _get_runner() -> _LoopThread:
    global _runner
    runner = _runner
    if runner is not None and runner.pid == os.getpid() and runner.thread.is_alive():
        return runner
    with _lock:
        if _runner is None or _runner.pid != os.getpid() or not _runner.thread.is_alive():
            _runner = _LoopThread()
        return _runner


def _after_fork_in_child() -> None:
    # The parent's loop thread does not exist in the child; its connections must not be
    # shared either. Forget the runner (a new one starts on first use) and the lock.
    global _runner, _lock
    _runner = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _shutdown_at_exit() -> None:
    runner = _runner
    if runner is not None and runner.pid == os.getpid():
        runner.shutdown()


def loop_thread_ident() -> int | None:
    """Thread id of the background loop thread, or None if it has not started."""
    runner = _runner
    return runner.thread.ident if runner is not None else None


def add_shutdown_hook(hook: ShutdownHook) -> None:
    """Run ``await hook()`` on the background loop when the interpreter exits."""
    _get_runner().hooks.append(hook)


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and wait for its result in this thread.

    Ctrl-C (or any exception raised while waiting) cancels the coroutine, so cleanup in
    its ``finally`` blocks (closing a tunnel, cancelling a job) runs before we return.
    """
    runner = _get_runner()
    if threading.get_ident() == runner.thread.ident:
        coro.close()
        raise RuntimeError(
            "a blocking dispatch function was called from dispatch's own event loop; "
            "use the coroutine from dispatch.aio instead"
        )
    future = runner.submit(coro)
    try:
        return future.result()
    except BaseException:
        if not future.done():
            future.cancel()
            with contextlib.suppress(BaseException):  # already propagating an error
                future.result(timeout=10)
        raise


def blocking(afn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """Return the blocking twin of coroutine function ``afn`` (same signature and docstring)."""
    if not inspect.iscoroutinefunction(afn):
        raise TypeError(f"{afn!r} is not a coroutine function")

    @functools.wraps(afn)
    def twin(*args: P.args, **kwargs: P.kwargs) -> T:
        return run_blocking(afn(*args, **kwargs))

    return twin
