"""The blocking twins (``dispatch.run`` ...) against the real sshd: plain threads, inside a
running event loop, many threads at once, after fork; connections persist across calls."""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import dispatch
import dispatch.aio as dx
from dispatch._blocking import run_blocking
from dispatch.ssh import PoolStats, current_pool

from ..conftest import Testbed


async def _default_stats(host: str) -> PoolStats:
    return current_pool().stats()[host]


def test_twins_are_generated_with_same_signature() -> None:
    for name in ["run", "run_many", "copy_to", "copy_from", "write_file", "is_reachable",
                 "forward_port", "close_tunnel"]:
        twin, coro = getattr(dispatch, name), getattr(dx, name)
        assert not inspect.iscoroutinefunction(twin)
        assert inspect.signature(twin) == inspect.signature(coro)
        assert twin.__doc__ == coro.__doc__
    assert dispatch.hosts is dx.hosts and not hasattr(dispatch, "Pool")


def test_blocking_calls_reuse_one_connection(testbed: Testbed) -> None:
    first = dispatch.run("echo one", testbed.plain)
    before = run_blocking(_default_stats(testbed.plain)).connects
    second = dispatch.run(["echo", "two"], testbed.plain)
    assert (first.stdout, second.stdout) == ("one\n", "two\n")
    assert run_blocking(_default_stats(testbed.plain)).connects == before


def test_hosts_lists_testbed_aliases(testbed: Testbed) -> None:
    names = dispatch.hosts()
    assert names[:2] == ["plain", "slurm"]
    assert set(testbed.fleet) <= set(names)
    assert not any("*" in n for n in names)


def test_from_a_plain_thread(testbed: Testbed) -> None:
    out: list[str] = []
    th = threading.Thread(target=lambda: out.append(dispatch.run("echo t", testbed.plain).stdout))
    th.start()
    th.join(60)
    assert out == ["t\n"]


def test_inside_a_running_event_loop(testbed: Testbed) -> None:
    async def notebook_cell() -> str:
        # a Jupyter cell calling the blocking API while its own loop runs
        return dispatch.run("echo cell", testbed.plain, timeout=30).stdout

    assert asyncio.run(notebook_cell()) == "cell\n"


def test_from_eight_threads_at_once(testbed: Testbed) -> None:
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda i: dispatch.run(["echo", str(i)], testbed.plain), range(40)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(40)]


def test_after_fork_child_gets_a_fresh_pool(testbed: Testbed) -> None:
    assert dispatch.run("true", testbed.plain).ok  # the parent has a live pooled connection
    pid = os.fork()
    if pid == 0:  # child: must connect anew and never touch the parent's connection
        code = 1
        try:
            r = dispatch.run("echo child", testbed.plain, timeout=30)
            st = run_blocking(_default_stats(testbed.plain))
            code = 0 if (r.stdout == "child\n" and st.connects == 1) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent's connection is unharmed by the child
    assert dispatch.run("echo parent", testbed.plain).stdout == "parent\n"
