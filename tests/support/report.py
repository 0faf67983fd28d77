"""Figures that tests measure along the way (fault timings, case counts, load numbers),
printed once at the end of the run by ``pytest_terminal_summary`` in conftest.py.

A test records into a section; recording is not an assertion, so a report can neither
fail nor depend on the order tests run in.
"""

from __future__ import annotations

SECTIONS: dict[str, dict[str, object]] = {}


def section(name: str) -> dict[str, object]:
    """The dict that collects ``name``'s figures (created on first use)."""
    return SECTIONS.setdefault(name, {})


def lines() -> list[str]:
    """Every recorded figure, one line each, in recording order (callables are asked now)."""
    return [f"{name}: {key}: {value() if callable(value) else value}"
            for name, figures in SECTIONS.items() for key, value in figures.items()]
