"""The agent's wire format: length-prefixed pickle frames over a Unix socket.

A frame is a 4-byte big-endian length, then that many bytes of a pickled tuple whose
first item names the message. Pickle is safe here only because both ends are processes
of the same user: the agent checks the client's uid with ``SO_PEERCRED`` and the client
checks the agent's the same way before trusting a byte (a same-uid peer can already do
anything we can). A frame is read into one preallocated buffer (``recv_into``), so a
large result is held once as bytes, never as a list of chunks plus their join.

Messages, client to agent: ``("hello", PROTOCOL, version)``, ``("call", name, args,
kwargs, env, want_progress, plain)`` (``plain``: a `RunResult` comes back as a tuple, see
`plain_run_result`), ``("answer", prompt_id, answers)``, ``("cancel",)``, ``("status",)``,
``("stop",)``. Agent to client: ``("hello", PROTOCOL, version, pid)``
or ``("skew", why, pid)`` (then only status and stop are served), ``("result",
value)``, ``("error", exception)``, ``("cancelled",)``, ``("prompt", prompt_id, host,
name, instructions, prompts)``, ``("progress", done, total)``, ``("status", dict)``,
``("stopping", pid)``.
"""

from __future__ import annotations

import pickle
import socket
import struct

TYPE_CHECKING = False  # not typing's: a served CLI call skips importing typing

if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "ALLOWED",
    "PROTOCOL",
    "MAX_FRAME",
    "ProtocolError",
    "encode",
    "decode",
    "header",
    "send_frame",
    "FrameReader",
    "peer_uid",
    "plain_run_result",
]

#: Bumped whenever a message changes shape; a client and an agent that disagree do not talk.
PROTOCOL = 2
#: The largest frame either side accepts (a run's output beyond this is refused, not read).
MAX_FRAME = 1 << 31
_HEADER = struct.Struct(">I")

#: The calls the agent serves: their arguments and results cross a process boundary
#: safely (plain data; local paths made absolute by the client). Everything else
#: (tunnels, REPL sessions, shipping local code) runs in the calling process.
ALLOWED = frozenset({
    "run", "run_many", "is_reachable", "status", "queue", "job_info", "cancel", "wait",
    "wait_until_running", "partitions", "partition_nodes", "node_info", "nodes_info",
    "available_gpus", "submit", "copy_to", "copy_from", "write_file",
})  # fmt: skip


def plain_run_result(value: object) -> object:
    """A `RunResult` as ``(returncode, stdout, stderr, may_have_run)``; anything else as is.

    The CLI's fast path asks for this form: unpickling a dataclass would import
    `dataclasses` and `inspect` into the client (~6 ms of a ~25 ms call).
    """
    fields = ("returncode", "stdout", "stderr", "may_have_run")
    if type(value).__name__ == "RunResult" and all(hasattr(value, f) for f in fields):
        return tuple(getattr(value, f) for f in fields)
    return value


class ProtocolError(ConnectionError):
    """The peer sent something that is not a frame of this protocol."""


def encode(message: tuple[Any, ...]) -> bytes:
    """Pickle ``message`` (highest protocol)."""
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode(payload: bytes | bytearray | memoryview) -> tuple[Any, ...]:
    """Unpickle one frame's payload; it must be a non-empty tuple."""
    message = pickle.loads(payload)
    if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
        raise ProtocolError(f"not a message of the dispatch agent protocol: {message!r:.80}")
    return message


def header(size: int) -> bytes:
    """The 4-byte length prefix of a frame of ``size`` bytes."""
    if size >= MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes exceeds the limit of {MAX_FRAME}")
    return _HEADER.pack(size)


def send_frame(sock: socket.socket, payload: bytes) -> None:
    """Send one frame on a blocking socket (header and payload, not concatenated)."""
    head = header(len(payload))
    sent = sock.sendmsg([head, payload])
    if sent < len(head):  # a signal cut the first write short: finish it
        sock.sendall(head[sent:])
        sent = len(head)
    if sent < len(head) + len(payload):
        sock.sendall(memoryview(payload)[sent - len(head) :])


class FrameReader:
    """Reads frames from a blocking socket; resumable after an interrupt (Ctrl-C).

    State lives in the object and advances only after ``recv_into`` returned, so a
    ``KeyboardInterrupt`` raised inside ``recv_into`` loses no byte: calling ``read``
    again continues the same frame.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._header = bytearray(_HEADER.size)
        self._got = 0
        self._body: bytearray | None = None

    def _fill(self, buf: bytearray) -> None:
        view = memoryview(buf)
        while self._got < len(buf):
            n = self.sock.recv_into(view[self._got :])
            if n == 0:
                raise EOFError("the dispatch agent closed the connection")
            self._got += n

    def read(self) -> tuple[Any, ...]:
        """The next message; EOFError when the peer closed the connection."""
        if self._body is None:
            self._fill(self._header)
            (size,) = _HEADER.unpack(self._header)
            if size >= MAX_FRAME:
                raise ProtocolError(f"frame of {size} bytes exceeds the limit of {MAX_FRAME}")
            self._body = bytearray(size)
            self._got = 0
        self._fill(self._body)
        body, self._body, self._got = self._body, None, 0
        return decode(body)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
