"""Job ids with array elements, and sbatch's ``--array`` index syntax (pure, no I/O).

A job is named by its id (``123``: a whole job, or a whole array) or by an array element
(``"123_4"``). SLURM prints elements as ``123_4`` and a pending remainder as one row
``123_[5-19%8]`` (squeue) or ``123_[1,3,5%2]``; `split_array_id` takes such a raw id
apart and `task_in` says whether an element is in a remainder's index list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

from ..errors import InvalidValueError

__all__ = [
    "JobRef",
    "JobId",
    "job_ref",
    "split_array_id",
    "task_in",
    "check_array_spec",
    "check_array_output",
    "ARRAY_OUTPUT",
]

#: Output file of an array job when none is given: one per element (sbatch's own default).
ARRAY_OUTPUT = "slurm-%A_%a.out"

#: What the API accepts as a job id: ``123`` (a job, or a whole array) or ``"123_4"``
#: (one array element). A job id as a string (``"123"``) is refused, as before.
JobRef: TypeAlias = int | str

_ELEMENT = re.compile(r"^(\d+)_(\d+)$")
_RAW_ARRAY = re.compile(r"^(\d+)_(\d+|\[[^\]]*\])")
_PER_ELEMENT = re.compile(r"(?<!%)%\d*[aj]")  # %a (index) or %j (the element's own id)
_ITEM = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


@dataclass(frozen=True)
class JobId:
    """A job (``task`` None) or one element of a job array (``base_task``)."""

    base: int
    task: int | None = None

    def __str__(self) -> str:
        return str(self.base) if self.task is None else f"{self.base}_{self.task}"


def job_ref(value: object) -> JobId:
    """``123`` or ``"123_4"`` (or a `JobId`) as a `JobId`; anything else raises.

    Raises:
        InvalidValueError: Not a positive int or such a string (the message names it).
    """
    if isinstance(value, JobId):
        return value
    if isinstance(value, bool):
        raise InvalidValueError(f"job_id must be a positive int or '123_4', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise InvalidValueError(f"job_id must be a positive int, got {value!r}")
        return JobId(value)
    if isinstance(value, str):
        m = _ELEMENT.match(value)
        if m is not None and int(m.group(1)) > 0:
            return JobId(int(m.group(1)), int(m.group(2)))
    raise InvalidValueError(
        f"job_id must be a positive int (a job, or a whole array) or a string naming an "
        f"array element like '123_4', got {value!r}"
    )


def split_array_id(raw: str) -> tuple[int | None, str | None]:
    """``"123_4"`` -> ``(123, "4")``; ``"123_[5-19%8]"`` -> ``(123, "5-19%8")``.

    Step suffixes are ignored (``"123_4.batch"`` -> ``(123, "4")``); a plain or
    heterogeneous id (``"123"``, ``"123+1"``) is not an array element: ``(None, None)``.
    """
    m = _RAW_ARRAY.match(raw.strip())
    if m is None:
        return None, None
    return int(m.group(1)), m.group(2).strip("[]")


def _ranges(spec: str) -> tuple[list[tuple[int, int, int]], int | None]:
    """``"1-7:2,9%3"`` -> ``([(1, 7, 2), (9, 9, 1)], 3)``; raises ValueError when malformed."""
    body, pct, throttle = spec.partition("%")
    limit: int | None = None
    if pct:
        if not throttle.isdigit() or int(throttle) < 1:
            raise ValueError("the %N throttle must be a whole number >= 1")
        limit = int(throttle)
    out: list[tuple[int, int, int]] = []
    for item in body.split(","):
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(f"{item!r} is not N, N-M or N-M:S")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        if hi < lo:
            raise ValueError(f"range {item!r} ends before it starts")
        if step < 1:
            raise ValueError(f"step in {item!r} must be >= 1")
        out.append((lo, hi, step))
    return out, limit


def task_in(spec: str, task: int) -> bool:
    """True when array index ``task`` is in ``spec`` (``"4"``, ``"5-19%8"``, ``"1,3,5-9:2"``).

    A malformed spec contains nothing.
    """
    try:
        ranges, _ = _ranges(spec)
    except ValueError:
        return False
    return any(lo <= task <= hi and (task - lo) % step == 0 for lo, hi, step in ranges)


def check_array_spec(spec: object) -> str:
    """Validate an sbatch ``--array`` value: comma-separated ``N``, ``N-M``, ``N-M:S``, then
    an optional ``%N`` throttle (``"0-99%8"``, ``"0-15:4"``, ``"1,3,5-7"``).

    Returns:
        The spec unchanged.

    Raises:
        InvalidValueError: Anything else, naming the value and what is wrong.
    """
    if not isinstance(spec, str):
        raise InvalidValueError(f"SlurmJob.array: {spec!r} must be a string like '0-99%8'")
    try:
        _ranges(spec)
    except ValueError as exc:
        raise InvalidValueError(
            f"SlurmJob.array: {spec!r} is not a valid job array spec ({exc}); use indexes "
            "like '0-99', '0-15:4' or '1,3,5', optionally with a '%N' throttle"
        ) from None
    return spec


def check_array_output(fieldname: str, path: str | None) -> None:
    """An array's ``output``/``error`` must differ per element (``%a`` or ``%j`` in it).

    Otherwise every element would write the same file. ``/dev/null`` is fine.

    Raises:
        InvalidValueError: The path is the same for every element (the message names it).
    """
    if path is None or path == "/dev/null" or _PER_ELEMENT.search(path):
        return
    raise InvalidValueError(
        f"SlurmJob.{fieldname}: {path!r} would be the same file for every array element; "
        "put %a (the element's index) in it, e.g. 'logs/%A_%a.out'"
    )
