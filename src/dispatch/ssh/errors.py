"""Exceptions of the ssh layer: what connecting can raise, and "it may have run"."""

from __future__ import annotations

from ..errors import DispatchError, HostKeyError

__all__ = ["ConnectError", "HostKeyConnectError", "MayHaveRunError", "HandshakeTimeout"]


class ConnectError(DispatchError):
    """An SSH connection could not be made (resolve, refuse, auth, host key, timeout).

    ``str(exc)`` reads like ``ssh``'s own message and names the host. ``transient`` is
    True when trying again later may help (refused, reset, dropped), False for
    configuration problems (unknown name, no usable key, host key).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class HostKeyConnectError(ConnectError, HostKeyError):
    """The server's host key is unknown or changed; the message names host and known_hosts."""


class MayHaveRunError(DispatchError):
    """The connection broke after the channel's request was sent: it may have taken effect."""


class HandshakeTimeout(TimeoutError):
    """Connect timed out after TCP was up: in the SSH handshake or authentication."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"SSH handshake/authentication timed out after {seconds:g}s")
        self.seconds = seconds
