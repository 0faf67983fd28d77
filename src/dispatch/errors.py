"""Exceptions for programming errors and invalid input; remote failures are results."""

from __future__ import annotations

__all__ = [
    "DispatchError",
    "ConfigError",
    "HostKeyError",
    "InvalidValueError",
    "SolveError",
    "ShipError",
    "SubmitError",
]


class DispatchError(Exception):
    """Base class of every exception raised by dispatch."""


class InvalidValueError(DispatchError, ValueError):
    """A value passed in (a job name, a path, a port) cannot be used; the message names it."""


class ConfigError(DispatchError, ValueError):
    """The dispatch config file is invalid; the message names file, key path and value."""


class HostKeyError(DispatchError):
    """The server's host key is unknown or does not match known_hosts."""


class SolveError(DispatchError):
    """No host satisfies a hardware request; the message says why each host was rejected."""


class ShipError(DispatchError):
    """Code could not be packed or shipped (not a git repo, bad ref, file outside base)."""


class SubmitError(DispatchError):
    """A job could not be submitted (for example: its script exceeds slurmctld's limit)."""
