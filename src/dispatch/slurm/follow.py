"""Live output of a SLURM job: `follow` yields the lines of its stdout/stderr file as they come.

The file's path is asked once (``scontrol show job``: ``StdOut=``/``StdErr=``, read on the
login host, so it must be on a filesystem the login host sees, as it is at most sites).
Then each tick is ONE remote command that prints the file's size, its first bytes (to
notice a file that was replaced or truncated) and the bytes after the offset read so far
(base64). The job's state comes from the shared poller (`.watch`), not from this command,
so many follows on a host cost one squeue per tick between them, and they share the
pool's connection.

No line is lost or repeated: the offset is kept here, so a dropped connection resumes
from it; a requeued job either appends to the file (``--open-mode=append``, which
`SlurmJob` uses with ``max_restarts``) and the follow simply goes on, or truncates it, which
the size and first-bytes check notices, and the new run is read from its first byte.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import shlex
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from ..errors import DispatchError, InvalidValueError
from ..ssh import run
from .arrays import JobId, JobRef, job_ref
from .events import Subscriber, parse_scontrol_job
from .poller import check_interval, subscribe

__all__ = ["follow", "FollowError", "output_path"]

log = logging.getLogger(__name__)

#: At most this many new bytes per remote read (more are read at once in the next).
CHUNK_BYTES = 1 << 20
#: How many leading bytes identify a file (a different start: it was replaced).
FINGERPRINT_BYTES = 64
#: SSH timeout of each read.
READ_TIMEOUT = 60.0
#: Give up after this many reads in a row failed (a dropped connection is retried).
MAX_FAILED_READS = 30


class FollowError(DispatchError):
    """`follow` cannot go on: the job is unknown, or its output cannot be read."""


@dataclass
class _File:
    """What has been read of one output file."""

    path: str
    offset: int = 0
    head: bytes = b""  # its first bytes, as read
    partial: bytes = b""  # an unfinished last line


def _read_command(f: _File) -> str:
    """One tick: ``SIZE HEADHEX`` (or ``missing``), then the new bytes in base64."""
    n = min(FINGERPRINT_BYTES, f.offset)
    return (
        f"f={shlex.quote(f.path)}; "
        'if [ -f "$f" ] && [ -r "$f" ]; then '
        f'printf "%s %s\\n" "$(stat -L -c %s -- "$f")" '
        f'"$(head -c {n} -- "$f" | od -An -v -tx1 | tr -d " \\n")"; '
        f'tail -c +{f.offset + 1} -- "$f" | head -c {CHUNK_BYTES} | base64 | tr -d "\\n"; '
        "else echo missing; fi"
    )


def _parse_read(stdout: str) -> tuple[int, bytes, bytes] | None:
    """``(size, first bytes, new bytes)``, or None when the file does not exist (yet)."""
    header, _, body = stdout.partition("\n")
    if header.strip() == "missing":
        return None
    size_s, _, head_hex = header.strip().partition(" ")
    try:
        return int(size_s), bytes.fromhex(head_hex), base64.b64decode(body.strip())
    except (ValueError, binascii.Error) as exc:
        raise FollowError(f"follow: unexpected reply from the output read: {exc}") from exc


def _lines(f: _File, data: bytes) -> list[str]:
    """Complete lines of ``f.partial + data`` (decoded; the rest kept as partial)."""
    buf = f.partial + data
    *done, f.partial = buf.split(b"\n")
    return [line.rstrip(b"\r").decode("utf-8", "replace") for line in done]


async def output_path(job_id: JobRef, host: str, stream: str = "stdout") -> str:
    """The path of a job's output file as slurmctld reports it (``StdOut=``/``StdErr=``).

    Args:
        job_id: SLURM job id, or an array element (``"123_4"``).
        host: SSH host alias with SLURM access.
        stream: ``"stdout"`` or ``"stderr"``.

    Returns:
        The absolute path (with ``%j`` etc. filled in by slurmctld).

    Raises:
        InvalidValueError: Bad ``stream`` or job id.
        FollowError: slurmctld does not know the job (any more), or names no file.
    """
    ref = job_ref(job_id)
    key = _stream_key(stream)
    res = await run(["scontrol", "--oneliner", "show", "job", str(ref)], host,
                    timeout=READ_TIMEOUT, retries=1)
    records = parse_scontrol_job(res.stdout) if res.ok else []
    if not records:
        said = res.stderr.strip().splitlines()[-1:] or ["no such job"]
        raise FollowError(f"follow: job {ref} on {host}: {said[0]}")
    if ref.task is None and len(records) > 1:
        raise FollowError(
            f"follow: job {ref} on {host} is an array: follow one element, like '{ref}_0'"
        )
    path = records[0].get(key, "")
    if not path.startswith("/"):
        raise FollowError(f"follow: job {ref} on {host} has no {stream} file ({key}={path!r})")
    return path


def _stream_key(stream: str) -> str:
    if stream not in ("stdout", "stderr"):
        raise InvalidValueError(f"stream must be 'stdout' or 'stderr', got {stream!r}")
    return "StdOut" if stream == "stdout" else "StdErr"


async def follow(
    job_id: JobRef,
    host: str,
    stream: str = "stdout",
    *,
    poll_interval: float = 2.0,
    live: bool = True,
) -> AsyncGenerator[str, None]:
    """Yield the output lines of a SLURM job, from the first, while it runs.

    Starts when the file appears (a pending job has none yet), keeps up while it grows,
    and ends when the job has ended and the file is drained. A requeued job's new output
    follows on; a broken connection is resumed from the byte offset read so far. Lines
    come without their newline; a last line without one comes when the job has ended.

    Args:
        job_id: SLURM job id, or an array element (``"123_4"``).
        host: SSH host alias with SLURM access (the file is read there).
        stream: ``"stdout"`` (``--output``) or ``"stderr"`` (``--error``; the same
            file as stdout unless the job set ``error``).
        poll_interval: Seconds between reads while nothing new came (> 0).
        live: False: yield what the file holds now and stop (``dispatch logs`` without
            ``-f``).

    Returns:
        An async iterator (``async for line in follow(...)``); it ends when the job is
        over and the file drained (or, with ``live=False``, at the file's end now).

    Yields:
        Each line of the output (``str``, without its newline), in order, once.

    Raises:
        InvalidValueError: Bad ``stream``, job id or interval.
        FollowError: The job is unknown to slurmctld, or the file could not be read
            ``MAX_FAILED_READS`` times in a row.
    """
    ref = job_ref(job_id)
    _stream_key(stream)
    interval = check_interval(poll_interval)
    f = _File(await output_path(job_id, host, stream))
    if not live:
        async for line in _drain(f, host):
            yield line
        return
    sub = Subscriber(host, frozenset({ref}), interval, asyncio.get_running_loop().time())
    poller = subscribe(sub)
    try:
        over = False
        failures = 0
        while True:
            over = over or _job_over(sub, ref)
            got = await _read(f, host)
            if got is None:
                failures += 1
                if failures >= MAX_FAILED_READS:
                    raise FollowError(f"follow: cannot read {f.path} on {host}")
            else:
                failures = 0
                lines, more = got
                for line in lines:
                    yield line
                if more:
                    continue  # a full chunk: read on at once
                if over:
                    if f.partial:
                        yield f.partial.decode("utf-8", "replace")
                    return
            await _sleep_or_event(sub, interval)
    finally:
        poller.unsubscribe(sub)


def _job_over(sub: Subscriber, ref: JobId) -> bool:
    """True once the poller has reported the job over (events drained here)."""
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            sub.ended = True
    return sub.ended or ref not in sub.open_refs()


async def _sleep_or_event(sub: Subscriber, interval: float) -> None:
    """Sleep one interval, waking early when the poller reports something."""
    if not sub.queue.empty():
        return
    getter = asyncio.ensure_future(sub.queue.get())
    try:
        done, _ = await asyncio.wait({getter}, timeout=interval)
        if done:
            # Put it back for _job_over (events are only used as a state signal here).
            sub.queue.put_nowait(getter.result())
    finally:
        if not getter.done():
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getter


async def _read(f: _File, host: str) -> tuple[list[str], bool] | None:
    """One remote read: (new complete lines, whether more bytes wait), None on failure."""
    res = await run(_read_command(f), host, timeout=READ_TIMEOUT, login_shell=False, retries=1)
    if not res.ok:
        log.debug("follow: reading %s on %s failed: %s", f.path, host, res.stderr.strip())
        return None
    parsed = _parse_read(res.stdout)
    if parsed is None:
        if f.offset:
            log.info("follow: %s on %s was removed; reading it anew when it appears", f.path, host)
            f.offset, f.head, f.partial = 0, b"", b""
        return [], False
    size, head, data = parsed
    if size < f.offset or head != f.head[: len(head)]:
        # Truncated or replaced (a requeue without append, log rotation): a new file.
        log.info("follow: %s on %s was replaced; reading it from the start", f.path, host)
        f.offset, f.head, f.partial = 0, b"", b""
        return [], True
    if len(f.head) < FINGERPRINT_BYTES:
        f.head = (f.head + data)[:FINGERPRINT_BYTES]
    f.offset += len(data)
    return _lines(f, data), len(data) >= CHUNK_BYTES


async def _drain(f: _File, host: str) -> AsyncIterator[str]:
    """What the file holds now (for ``live=False``)."""
    while True:
        got = await _read(f, host)
        if got is None:
            raise FollowError(f"follow: cannot read {f.path} on {host}")
        lines, more = got
        for line in lines:
            yield line
        if not more:
            break
    if f.partial:
        yield f.partial.decode("utf-8", "replace")
