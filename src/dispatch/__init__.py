"""Remote dispatch utilities for SSH and SLURM.

Every coroutine function of :mod:`dispatch.aio` appears here as a blocking function with
the same name, parameters and docstring; classes and plain functions are re-exported as
they are.
"""

from __future__ import annotations

import inspect as _inspect
from typing import Any as _Any

from . import aio
from ._blocking import blocking as _blocking

__version__ = "0.1.0"


def _export() -> dict[str, _Any]:
    names: dict[str, _Any] = {}
    for name in aio.__all__:
        obj = getattr(aio, name)
        names[name] = _blocking(obj) if _inspect.iscoroutinefunction(obj) else obj
    return names


globals().update(_export())
__all__ = [*aio.__all__, "aio", "__version__"]  # noqa: PLE0604
