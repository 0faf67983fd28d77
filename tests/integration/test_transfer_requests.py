"""SFTP requests per transfer, counted on loopback: a regression to one request after
another (or to a session per call) shows here without a slow link.

Each request is given a *round*: one more than the latest round whose reply had been
processed when it was sent. Requests sent together share a round; a request sent only
after a reply came back starts the next one. On a link with RTT r a call costs about
``rounds * r``; the latency benchmark measures that, this test counts it.

So that the count is about the code and not about how fast loopback answers, each reply
is handed to asyncssh no earlier than LINK seconds after its request was sent (in order,
like a slow link): every task woken by one round's replies has sent its next requests
before any reply of those is processed. Only counts are asserted, never times.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh.sftp
import pytest

import dispatch.aio as dx
from dispatch.ssh import Pool
from dispatch.ssh.sftp import SESSIONS

from ..conftest import Testbed

LINK = 0.05  # seconds: an emulated link latency that orders replies, never asserted on


class Rounds:
    """Counts SFTP requests and their rounds (see the module docstring)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: list[object] = []
        self.rounds = 0
        self._answered = 0
        self._round_of: dict[tuple[int, int], int] = {}
        self.sent_at: dict[tuple[int, int], float] = {}

    def sent(self, handler: object, pktid: int, pkttype: object) -> None:
        r = self._answered + 1
        self._round_of[(id(handler), pktid)] = r
        self.sent_at[(id(handler), pktid)] = asyncio.get_running_loop().time()
        self.rounds = max(self.rounds, r)
        self.requests.append(pkttype)

    def answered(self, handler: object, pktid: int) -> None:
        r = self._round_of.pop((id(handler), pktid), 0)
        self._answered = max(self._answered, r)


@pytest.fixture
def rounds(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rounds]:
    rec = Rounds()
    handler = asyncssh.sftp.SFTPClientHandler
    send, process = handler._send_request, handler._process_packet

    def _send_request(self: Any, pkttype: Any, args: Any, waiter: Any) -> None:
        rec.sent(self, self._next_pktid, pkttype)
        send(self, pkttype, args, waiter)

    async def _process_packet(self: Any, pkttype: int, pktid: int, packet: Any) -> None:
        sent = rec.sent_at.pop((id(self), pktid), None)
        if sent is not None:
            wait = sent + LINK - asyncio.get_running_loop().time()
            if wait > 0:
                await asyncio.sleep(wait)  # emulated latency (see the module docstring)
        rec.answered(self, pktid)
        await process(self, pkttype, pktid, packet)

    monkeypatch.setattr(handler, "_send_request", _send_request)
    monkeypatch.setattr(handler, "_process_packet", _process_packet)
    yield rec


async def test_small_and_large_files_cost_a_fixed_number_of_rounds(
    testbed: Testbed, pool: Pool, rdir: str, tmp_path: Path, rounds: Rounds
) -> None:
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(os.urandom(1024))
    big.write_bytes(os.urandom(2 * 1024 * 1024))  # several write requests
    assert (await dx.copy_to(small, testbed.plain, f"{rdir}/warm")).ok  # session started

    rounds.reset()
    assert (await dx.copy_to(small, testbed.plain, f"{rdir}/a")).ok
    assert rounds.rounds == 3, rounds.requests  # look + create, write + close, rename
    assert len(rounds.requests) <= 10, rounds.requests

    rounds.reset()
    assert (await dx.copy_to(small, testbed.plain, f"{rdir}/a")).ok  # onto an existing file
    assert rounds.rounds == 3, rounds.requests

    rounds.reset()
    assert (await dx.copy_to(small, testbed.plain, f"{rdir}/")).ok  # into a directory
    assert rounds.rounds == 3, rounds.requests

    rounds.reset()
    assert (await dx.copy_from(testbed.plain, f"{rdir}/a", tmp_path / "back")).ok
    assert rounds.rounds == 2, rounds.requests  # stat + open, read + close
    assert (tmp_path / "back").read_bytes() == small.read_bytes()

    rounds.reset()
    assert (await dx.write_file(testbed.plain, f"{rdir}/w", b"x" * 100)).ok
    assert rounds.rounds == 3, rounds.requests

    rounds.reset()
    assert (await dx.copy_to(big, testbed.plain, f"{rdir}/big")).ok
    writes = [t for t in rounds.requests if t == 6]  # SSH_FXP_WRITE
    assert len(writes) >= 8, rounds.requests
    assert rounds.rounds == 3, f"{len(writes)} writes took {rounds.rounds} rounds"

    rounds.reset()
    assert (await dx.copy_from(testbed.plain, f"{rdir}/big", tmp_path / "big.back")).ok
    assert rounds.rounds == 2, rounds.rounds
    assert (tmp_path / "big.back").read_bytes() == big.read_bytes()

    # One SFTP session for all of it: never one per call.
    assert pool.registry.get(SESSIONS).started == 1


async def test_a_tree_is_pipelined_not_one_request_after_another(
    testbed: Testbed, pool: Pool, rdir: str, tmp_path: Path, rounds: Rounds
) -> None:
    tree = tmp_path / "tree"
    for i in range(24):
        d = tree / f"d{i % 3}" / f"e{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_bytes(os.urandom(100 + i))
    (tree / "link").symlink_to("d0")
    assert (await dx.write_file(testbed.plain, f"{rdir}/warm", b"")).ok

    rounds.reset()
    assert (await dx.copy_to(tree, testbed.plain, f"{rdir}/")).ok
    # look, mkdirs, opens + links, writes + closes, modes + rename: not 24 files x 4
    assert rounds.rounds == 5, rounds.rounds

    (tree / "d1" / "e0" / "f1.txt").write_text("edited")
    rounds.reset()
    assert (await dx.copy_to(tree, testbed.plain, f"{rdir}/")).ok  # a merge
    # look, list every directory at once (opendir, readdir, readdir, close), mkdirs +
    # probes, opens + links, writes + closes, renames
    assert rounds.rounds == 9, rounds.rounds
    got = await dx.run(["cat", f"{rdir}/tree/d1/e0/f1.txt"], testbed.plain)
    assert got.stdout == "edited"

    rounds.reset()
    back = tmp_path / "back"
    assert (await dx.copy_from(testbed.plain, f"{rdir}/tree", back)).ok
    # stat + open, 3 levels of listing (opendir, readdir, readdir, close), opens,
    # reads + closes
    assert rounds.rounds == 16, rounds.rounds
    assert (back / "d1" / "e0" / "f1.txt").read_text() == "edited"
    assert pool.registry.get(SESSIONS).started == 1
