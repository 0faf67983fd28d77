"""argparse value types shared by every subcommand: one message per kind of bad value."""

from __future__ import annotations

import argparse

__all__ = ["count", "job_id", "seconds"]


def seconds(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def count(text: str) -> int:
    """A non-negative integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def job_id(text: str) -> int | str:
    """A SLURM job id (``123``, an int) or an array element (``123_4``, kept as text)."""
    head, sep, task = text.partition("_")
    if head.isdigit() and int(head) > 0 and (not sep or task.isdigit()):
        return text if sep else int(head)
    raise argparse.ArgumentTypeError(f"expected a SLURM job id like 123 or 123_4, got {text!r}")
