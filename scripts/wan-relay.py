#!/usr/bin/env python3
"""A slow link for the testbed: a TCP relay that holds every chunk for a one-way delay.

    wan-relay.py --listen 127.0.0.1:22040 --target 127.0.0.1:22022 --rtt-ms 40

This kernel has no ``netem`` qdisc, so the delay is added in userspace: each chunk read
from one side is queued with the time it arrived and written to the other side RTT/2
later, in order (a FIFO per direction), with TCP_NODELAY on both sockets. Bandwidth is
not limited; in-flight bytes per direction are capped (like a TCP window) so a large
transfer cannot fill memory. Stdlib only (runs with the system python3; test equipment,
started and stopped by scripts/testbed).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import signal
import socket
import sys

LOG = logging.getLogger("wan-relay")
CHUNK = 256 * 1024
MAX_IN_FLIGHT = 8 * 1024 * 1024  # bytes queued per direction before reading pauses


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host or "127.0.0.1", int(port)


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay: float) -> None:
    """Copy reader to writer, each chunk released ``delay`` seconds after it was read."""
    loop = asyncio.get_running_loop()
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    queued = 0
    changed = asyncio.Event()  # a chunk was queued, or EOF, or space was freed
    eof = False

    async def pump_in() -> None:
        nonlocal queued, eof
        try:
            while True:
                while queued >= MAX_IN_FLIGHT:
                    changed.clear()
                    await changed.wait()
                data = await reader.read(CHUNK)
                if not data:
                    break
                queue.append((loop.time() + delay, data))
                queued += len(data)
                changed.set()
        except (ConnectionError, OSError):
            pass
        finally:
            eof = True
            changed.set()

    async def pump_out() -> None:
        nonlocal queued
        while True:
            if not queue:
                if eof:
                    break
                changed.clear()
                await changed.wait()
                continue
            due, data = queue[0]
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            queue.popleft()
            queued -= len(data)
            changed.set()
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    feeder = asyncio.create_task(pump_in())
    try:
        await pump_out()
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feeder


class Relay:
    """Accepts on ``listen`` and relays each connection to ``target`` with the delay."""

    def __init__(self, target: tuple[str, int], rtt_ms: float) -> None:
        self.target = target
        self.delay = rtt_ms / 2000.0
        self.active = 0

    async def handle(self, c_reader: asyncio.StreamReader,
                     c_writer: asyncio.StreamWriter) -> None:
        self.active += 1
        s_writer: asyncio.StreamWriter | None = None
        try:
            _nodelay(c_writer)
            try:
                s_reader, s_writer = await asyncio.open_connection(*self.target)
            except OSError as exc:
                LOG.warning("connect %s:%d: %s", *self.target, exc)
                return
            _nodelay(s_writer)
            up = asyncio.create_task(_pipe(c_reader, s_writer, self.delay))
            down = asyncio.create_task(_pipe(s_reader, c_writer, self.delay))
            done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
            broken = any(not t.cancelled() and t.exception() is not None for t in done)
            for task in pending:  # one side finished cleanly: let the other drain too
                if broken:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for task in done:
                with contextlib.suppress(Exception):
                    task.result()
        except (ConnectionError, OSError):
            pass
        finally:
            self.active -= 1
            for w in (c_writer, s_writer):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_addr, required=True, help="HOST:PORT to accept on")
    parser.add_argument("--target", type=_addr, required=True, help="HOST:PORT to relay to")
    parser.add_argument("--rtt-ms", type=float, required=True,
                        help="round trip added by the relay (half in each direction)")
    args = parser.parse_args()
    if args.rtt_ms < 0:
        parser.error(f"--rtt-ms {args.rtt_ms}: must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s wan-relay: %(message)s")
    relay = Relay(args.target, args.rtt_ms)
    server = await asyncio.start_server(relay.handle, *args.listen, backlog=512,
                                        reuse_address=True)
    LOG.info("listening on %s:%d -> %s:%d, rtt %g ms", *args.listen, *args.target, args.rtt_ms)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    LOG.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
