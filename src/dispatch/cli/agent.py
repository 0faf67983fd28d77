"""``dispatch agent start|stop|status``: the per-user process that owns the connection pool.

It imports only the agent's client (the standard library), never the API: asking an
agent for its status costs no asyncssh import.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .console import EXIT_ERROR, PROG, CliError, out
from .render import format_table, to_json

__all__ = ["cmd_agent"]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _render_status(st: dict[str, Any]) -> str:
    lines = [
        f"agent: pid {st['pid']}, dispatch {st['version']}, up {_age(st['age'])}, "
        f"exits after {_age(st['idle_timeout'])} without clients",
        f"socket: {st['socket']}",
        f"clients: {st['clients']} connected, {st['calls_in_flight']} calls in flight, "
        f"{st['calls_served']} served; keepalive every {st['keepalive']}s",
    ]
    rows = []
    for pool in st["pools"]:
        for h in pool["hosts"]:
            rows.append((
                h["host"], h["open_connections"], h["open_channels"], h["connects"],
                h["connect_failures"], _age(h["connected_for"]), pool["ssh_config"] or "-",
            ))  # fmt: skip
    if rows:
        headers = ("HOST", "CONNECTIONS", "SESSIONS", "CONNECTS", "FAILED", "AGE", "SSH CONFIG")
        lines += ["", format_table(headers, rows)]
    else:
        lines.append("hosts: none yet")
    return "\n".join(lines)


def cmd_agent(args: argparse.Namespace) -> int:
    """``dispatch agent ACTION``."""
    from ..agent import client, paths

    if args.action == "start":
        for name in ("idle_timeout", "keepalive"):
            value = getattr(args, name)
            if value is not None and not value > 0:
                raise CliError(f"--{name.replace('_', '-')} must be a positive number of "
                               f"seconds, not {value!r}")
        try:
            pid, started = client.start_agent(args.idle_timeout, args.keepalive)
        except (client.AgentError, OSError) as exc:
            raise CliError(f"agent start: {exc}") from None
        fields = {"pid": pid, "started": started, "socket": str(paths.socket_path())}
        if args.json:
            out(to_json(fields))
        else:
            what = "started" if started else "already running"
            out(f"{PROG} agent: {what} (pid {pid}, socket {paths.socket_path()})")
        return 0
    if args.action == "stop":
        begun = time.monotonic()
        try:
            stopped = client.stop_agent()
        except (client.AgentError, OSError) as exc:
            raise CliError(f"agent stop: {exc}") from None
        if args.json:
            out(to_json({"pid": stopped, "stopped": stopped is not None}))
        elif stopped is None:
            sys.stderr.write(f"{PROG} agent: not running ({paths.socket_path()})\n")
        else:
            out(f"{PROG} agent: stopped (pid {stopped}, {time.monotonic() - begun:.1f}s)")
        return 0
    try:
        st = client.agent_status()
    except (client.AgentError, OSError) as exc:
        raise CliError(f"agent status: {exc}") from None
    if st is None:
        if args.json:
            out(to_json({"running": False, "socket": str(paths.socket_path())}))
        else:
            sys.stderr.write(f"{PROG} agent: not running ({paths.socket_path()})\n")
        return EXIT_ERROR
    if args.json:
        out(to_json({"running": True, **st}))
    else:
        out(_render_status(st))
    return 0
