"""Fault-injection servers for the reliability suite, each on its own thread and event loop.

* :class:`Relay` forwards TCP between a client and a real server (sshd) and can be
  *frozen*: it stops reading and writing on every socket, keeping them open, so the client
  sees a silent partition (no RST, no FIN) - exactly what a dropped route looks like.
  ``heal()`` resumes forwarding; ``close_connections()`` cuts every relayed connection.
* :class:`Tarpit` accepts TCP connections and never says a word.
* :class:`SlowAuth` sends an SSH identification banner, then stalls forever.

Each runs on a private loop thread, so it keeps working while the test's own loop (or the
dispatch background loop) is blocked, and its control methods are safe from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["LoopServer", "Relay", "SlowAuth", "StallingSSHServer", "Tarpit"]


class LoopServer:
    """A TCP server on 127.0.0.1 (ephemeral port) driven by its own loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.accepted = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), daemon=True,
                                       name=type(self).__name__)
        self.thread.start()
        ready.wait()
        self._call(self._start())

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _on_client(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        except (ConnectionError, asyncio.CancelledError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one accepted connection (subclasses override)."""
        raise NotImplementedError

    @property
    def open_connections(self) -> int:
        """Client connections currently held open."""
        return len(self._writers)

    async def _close_all(self, rst: bool) -> None:
        for w in list(self._writers):
            if rst:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
            w.transport.abort() if rst else w.close()
        for t in list(self._tasks):
            t.cancel()

    def close_connections(self, rst: bool = False) -> None:
        """Close every held client connection (FIN, or RST with ``rst=True``)."""
        self._call(self._close_all(rst))

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._close_all(rst=False)

    def stop(self) -> None:
        """Stop listening, close every connection and end the loop thread."""
        if not self.thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def __enter__(self) -> LoopServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Tarpit(LoopServer):
    """Accepts TCP and never speaks: reads and discards whatever the client sends."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        await asyncio.Event().wait()


class SlowAuth(LoopServer):
    """Sends an SSH identification banner, then stalls: the key exchange never completes."""

    banner = b"SSH-2.0-OpenSSH_9.2p1 stall\r\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.banner)
        await writer.drain()
        while await reader.read(65536):
            pass
        await asyncio.Event().wait()


class Relay(LoopServer):
    """A TCP relay to ``127.0.0.1:upstream_port`` that can be frozen, healed and cut.

    While frozen, nothing is read from or written to any socket (client or upstream):
    kernel buffers fill and the peers see silence, never a reset. New connections are
    accepted by the kernel but not forwarded (a blackhole before the SSH banner).
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        if not upstream_host.startswith("127."):
            raise ValueError("the relay only forwards to loopback addresses")
        self.upstream = (upstream_host, upstream_port)
        self._flowing: asyncio.Event | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.upstream_ports: list[int] = []  # our local ports of the connections to upstream
        super().__init__()

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await super()._start()

    @property
    def frozen(self) -> bool:
        return self._flowing is not None and not self._flowing.is_set()

    async def _set(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    def freeze(self) -> None:
        """Stop forwarding in both directions, silently (sockets stay open)."""
        self._call(self._set(False))

    def heal(self) -> None:
        """Resume forwarding (data buffered while frozen then flows)."""
        self._call(self._set(True))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        await self._flowing.wait()
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.upstream_ports.append(up_writer.get_extra_info("sockname")[1])
        self._writers.add(up_writer)
        try:
            up = asyncio.ensure_future(self._pump(reader, up_writer, "up"))
            down = asyncio.ensure_future(self._pump(up_reader, writer, "down"))
            try:
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                up.cancel()
                down.cancel()
                await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self._writers.discard(up_writer)
            with contextlib.suppress(Exception):
                up_writer.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    direction: str) -> None:
        assert self._flowing is not None
        while True:
            await self._flowing.wait()
            data = await src.read(65536)
            if not data:
                return
            # Frozen while this chunk was in hand: hold it until healed.
            await self._flowing.wait()
            dst.write(data)
            if direction == "up":
                self.bytes_up += len(data)
            else:
                self.bytes_down += len(data)
            await dst.drain()


class StallingSSHServer:
    """A real SSH server (asyncssh) that completes key exchange, then never answers auth.

    ``known_hosts_line`` trusts its (fresh) host key, so the client gets past host-key
    checking and hangs exactly where a slow PAM/LDAP login would leave it.
    """

    def __init__(self) -> None:
        import asyncssh

        self._asyncssh = asyncssh
        self.key = asyncssh.generate_private_key("ssh-ed25519")
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.auth_attempts = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), daemon=True,
                                       name="StallingSSHServer")
        self.thread.start()
        ready.wait()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    async def _start(self) -> None:
        asyncssh = self._asyncssh
        outer = self

        class _Server(asyncssh.SSHServer):  # type: ignore[misc]
            def begin_auth(self, username: str) -> bool:
                return True

            def public_key_auth_supported(self) -> bool:
                return True

            async def validate_public_key(self, username: str, key: Any) -> bool:
                outer.auth_attempts += 1
                await asyncio.Event().wait()  # never answers
                return False

        self._server = await asyncssh.create_server(
            _Server, "127.0.0.1", 0, server_host_keys=[self.key],
            login_timeout=3600)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def known_hosts_line(self) -> str:
        pub = self.key.export_public_key("openssh").decode().split()
        return f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}"

    def stop(self) -> None:
        async def _close() -> None:
            self._server.close()

        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_close(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
