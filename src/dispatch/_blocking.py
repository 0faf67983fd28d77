"""The one place that turns a coroutine function of ``dispatch.aio`` into its blocking twin.

Every blocking call runs on one background event loop for the whole process: an anyio
blocking portal (``anyio.from_thread.BlockingPortal`` run by ``anyio.run``) owns the loop thread, so
connections opened by the default pool persist across blocking calls, and the calling
thread may itself be running an event loop (a Jupyter cell) or be one of many threads.
After ``os.fork()`` the child starts a fresh portal on first use.

Ctrl-C (or any exception raised while waiting) cancels the call's task and then waits,
bounded, for that task to finish its cleanup (killing the remote command, closing a
tunnel, cancelling a job), so the remote side is tidy when the exception reaches the
caller. The cancellation is asyncio's own (``task.cancel()``), which the library's
cleanup code is written for: an ``await`` in an ``except`` or ``finally`` block runs.
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
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, ParamSpec, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

__all__ = ["blocking", "blocking_iter", "run_blocking"]

log = logging.getLogger("dispatch")

P = ParamSpec("P")
T = TypeVar("T")

CLEANUP_WAIT = 20.0  # seconds an interrupted call waits for its task's cleanup
_SHUTDOWN_WAIT = 10.0  # seconds the exit hook gives the shutdown hooks


class _Runner:
    """A blocking portal: one event loop in a daemon thread, until the process exits.

    Built from ``BlockingPortal`` and ``anyio.run`` rather than the
    ``start_blocking_portal`` context manager, whose generator would try to stop the
    parent's (nonexistent) loop thread when a forked child drops it.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        ready: concurrent.futures.Future[BlockingPortal] = concurrent.futures.Future()

        async def _serve() -> None:
            async with BlockingPortal() as portal:
                ready.set_result(portal)
                await portal.sleep_until_stopped()

        def _main() -> None:
            threading.current_thread().name = "dispatch-loop"
            try:
                anyio.run(_serve, backend="asyncio")
            except BaseException as exc:  # pragma: no cover - the loop failed to start
                if not ready.done():
                    ready.set_exception(exc)

        self.thread = threading.Thread(target=_main, name="dispatch-loop", daemon=True)
        self.thread.start()
        self.portal: BlockingPortal = ready.result()
        self.loop: asyncio.AbstractEventLoop = self.portal.call(asyncio.get_running_loop)
        self.thread_ident: int = self.thread.ident or 0

    def shutdown(self) -> None:
        """Close the loop's default pool (connections, tunnels), then stop the portal."""
        # Imported here, not at the top: `import dispatch` stays free of asyncssh until a
        # call needs it, and a process that never made a call has no pool to close.
        from .ssh import close_default_pool

        try:
            self.portal.start_task_soon(close_default_pool).result(_SHUTDOWN_WAIT)
        except Exception:  # pragma: no cover - best effort at exit
            log.debug("dispatch: closing the default pool at exit did not finish", exc_info=True)
        with contextlib.suppress(Exception):
            self.portal.call(self.portal.stop, True)
        self.thread.join(_SHUTDOWN_WAIT)


_lock = threading.Lock()
_runner: _Runner | None = None


def _get_runner() -> _Runner:
    runner = _runner
    if runner is not None and runner.pid == os.getpid():
        return runner
    with _lock:
        return _runner_locked()


def _runner_locked() -> _Runner:
    global _runner
    if _runner is None or _runner.pid != os.getpid():
        _runner = _Runner()
    return _runner


def _after_fork_in_child() -> None:
    # The parent's loop thread does not exist in the child and its connections must not
    # be shared: forget the runner (a new one starts on first use) and the lock.
    global _runner, _lock
    _runner = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _shutdown_at_exit() -> None:
    runner = _runner
    if runner is not None and runner.pid == os.getpid():
        runner.shutdown()


class _Call:
    """One blocking call's task, so an interrupt can cancel it the asyncio way."""

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.cancel_requested = False

    def cancel(self) -> None:
        """Runs on the loop: cancel the task (or make it cancel itself when it starts)."""
        self.cancel_requested = True
        if self.task is not None:
            self.task.cancel()


_CANCELLED: Any = object()


async def _guarded(coro: Coroutine[Any, Any, T], call: _Call) -> T:
    call.task = asyncio.current_task()
    if call.cancel_requested:  # interrupted before the task got to run
        coro.close()
        return _CANCELLED  # type: ignore[no-any-return]
    try:
        return await coro
    except asyncio.CancelledError:
        if not call.cancel_requested:
            raise
        # Our own interrupt: the cleanup has run; finish normally so the caller's wait
        # ends now, and re-raise the caller's exception there.
        if call.task is not None:
            call.task.uncancel()
        return _CANCELLED


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and wait for its result in this thread.

    On Ctrl-C (or any exception raised while waiting) the coroutine is cancelled and its
    cleanup (``finally`` blocks: killing the remote command, closing a tunnel) has
    finished, within ``CLEANUP_WAIT`` seconds, before the exception reaches the caller.
    """
    runner = _get_runner()
    if threading.get_ident() == runner.thread_ident:
        coro.close()
        raise RuntimeError(
            "a blocking dispatch function was called from dispatch's own event loop; "
            "use the coroutine from dispatch.aio instead"
        )
    call = _Call()
    # Scheduling is one non-blocking hand-off (the portal's own start_task_soon waits for
    # the loop, and a Ctrl-C in that wait would strand the coroutine between threads).
    try:
        future = asyncio.run_coroutine_threadsafe(_guarded(coro, call), runner.loop)
    except BaseException:
        coro.close()
        raise
    try:
        return future.result()
    except BaseException:
        if not future.done():
            with contextlib.suppress(RuntimeError):  # the loop is closing at exit
                runner.loop.call_soon_threadsafe(call.cancel)
            try:
                future.result(timeout=CLEANUP_WAIT)
            except concurrent.futures.TimeoutError:
                log.warning(
                    "dispatch: an interrupted call did not finish its cleanup within %ss",
                    CLEANUP_WAIT,
                )
            except BaseException:  # already propagating the caller's exception
                pass
        raise


def blocking(afn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """Return the blocking twin of coroutine function ``afn`` (same signature and docstring)."""
    if not inspect.iscoroutinefunction(afn):
        raise TypeError(f"{afn!r} is not a coroutine function")

    @functools.wraps(afn)
    def twin(*args: P.args, **kwargs: P.kwargs) -> T:
        from .agent import client as agent  # stdlib only: a running agent serves the call

        routed = agent.route(afn, args, kwargs)
        if not isinstance(routed, agent.Local):
            return routed
        return run_blocking(afn(*args, **kwargs))

    return twin


def blocking_iter(
    afn: Callable[P, AsyncIterator[T]],
) -> Callable[P, Iterator[T]]:
    """Return the blocking twin of async generator function ``afn``: a plain generator.

    Each item is fetched on the background loop; closing the generator (``break``, an
    exception, garbage collection) closes the async one there too.
    """
    if not inspect.isasyncgenfunction(afn):
        raise TypeError(f"{afn!r} is not an async generator function")

    @functools.wraps(afn)
    def twin(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        agen = afn(*args, **kwargs)

        async def _next() -> tuple[bool, T | None]:
            try:
                return True, await agen.__anext__()
            except StopAsyncIteration:
                return False, None

        async def _close() -> None:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                await aclose()

        try:
            while True:
                more, item = run_blocking(_next())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            with contextlib.suppress(Exception):
                run_blocking(_close())

    return twin
