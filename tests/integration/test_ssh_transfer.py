"""copy_to / copy_from / write_file over SFTP against the real sshd: byte-identical round
trips (50 MB file, 500-file tree with hostile names), modes, atomicity, clear failures."""

from __future__ import annotations

import asyncio
import filecmp
import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

import dispatch.aio as dx
from dispatch.ssh import Pool

from ..conftest import Testbed
from ..support.faults import full_dir, readonly_dir

ODD_NAMES = ["it's", 'q"uote', "semi;colon", "$(x)", "`y`", "sp ace", "ünï ✓", "-dash", "new\nline"]


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _same_tree(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files, cmp.report()
    for p in a.rglob("*"):
        q = b / p.relative_to(a)
        assert stat.S_IMODE(p.stat().st_mode) == stat.S_IMODE(q.stat().st_mode), p
        if p.is_file():
            assert p.read_bytes() == q.read_bytes(), p


async def test_50mb_file_round_trip(testbed: Testbed, rdir: str, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(50 * 1024 * 1024))
    src.chmod(0o640)
    seen: list[tuple[int, int]] = []
    up = await dx.copy_to(
        src, testbed.plain, f"{rdir}/big.bin", progress=lambda d, t: seen.append((d, t))
    )
    assert up.ok, up.stderr
    assert seen[-1] == (src.stat().st_size, src.stat().st_size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    remote = await dx.run(["sha256sum", f"{rdir}/big.bin"], testbed.plain)
    assert remote.stdout.split()[0] == _sha(src)
    back = tmp_path / "back.bin"
    down = await dx.copy_from(testbed.plain, f"{rdir}/big.bin", back)
    assert down.ok, down.stderr
    assert _sha(back) == _sha(src)
    assert stat.S_IMODE(back.stat().st_mode) == 0o640
    leftovers = await dx.run(f"ls -A {rdir}", testbed.plain)
    assert leftovers.stdout == "big.bin\n"  # no temp files left


async def test_500_file_tree_round_trip(testbed: Testbed, rdir: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for i in range(500):
        sub = tree / f"d{i % 10}" / ODD_NAMES[i % len(ODD_NAMES)]
        sub.mkdir(parents=True, exist_ok=True)
        f = sub / f"f{i} {ODD_NAMES[(i + 3) % len(ODD_NAMES)]}.txt"
        f.write_bytes(os.urandom(i * 7 % 4096))
        f.chmod(0o600 if i % 3 else 0o755)
    (tree / "d1").chmod(0o700)
    up = await dx.copy_to(tree, testbed.plain, f"{rdir}/")
    assert up.ok, up.stderr
    count = await dx.run(["find", f"{rdir}/tree", "-type", "f"], testbed.plain)
    assert len(count.stdout.split("\n./")) and count.stdout.count(f"{rdir}/tree/") >= 500
    back = tmp_path / "back"
    back.mkdir()
    down = await dx.copy_from(testbed.plain, f"{rdir}/tree", back)
    assert down.ok, down.stderr
    _same_tree(tree, back / "tree")
    # Copying again onto the existing directory merges (each file replaced atomically).
    (tree / "d0" / "new file").write_text("new")
    again = await dx.copy_to(tree, testbed.plain, rdir)
    assert again.ok, again.stderr
    new = await dx.run(["cat", f"{rdir}/tree/d0/new file"], testbed.plain)
    assert new.stdout == "new"
    names = await dx.run(["ls", "-A", rdir], testbed.plain)
    assert names.stdout == "tree\n"


async def test_write_file_atomic_mode_and_parents(testbed: Testbed, rdir: str) -> None:
    path = f"{rdir}/a b/c'd/$(x).sh"
    r = await dx.write_file(testbed.plain, path, b"#!/bin/sh\necho hi\n", mode=0o700)
    assert r.ok, r.stderr
    out = await dx.run(["sh", "-c", 'stat -c %a "$1" && "$1"', "-", path], testbed.plain)
    assert out.stdout == "700\nhi\n"
    r2 = await dx.write_file(testbed.plain, path, b"second")
    assert r2.ok
    script = 'stat -c %a "$1"; cat "$1"; ls -A "$(dirname "$1")"'
    out2 = await dx.run(["sh", "-c", script, "-", path], testbed.plain)
    assert out2.stdout == "600\nsecond$(x).sh\n"
    home = await dx.write_file(testbed.plain, f"~/{rdir}/home.txt", b"x")
    assert home.ok
    assert (await dx.run(["cat", f"{rdir}/home.txt"], testbed.plain)).stdout == "x"


async def test_interrupted_upload_leaves_nothing_under_final_name(
    testbed: Testbed, rdir: str, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(40 * 1024 * 1024))
    task: asyncio.Task[object] | None = None

    def kill_midway(done: int, total: int) -> None:
        if done > total // 4 and task is not None:
            task.cancel()  # the caller goes away mid-transfer (Ctrl-C, killed worker)

    task = asyncio.ensure_future(
        dx.copy_to(src, testbed.plain, f"{rdir}/final.bin", progress=kill_midway)
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    left = await dx.run(["ls", "-A", rdir], testbed.plain)
    assert left.ok and left.stdout == ""  # no final name, no temp file

    def slow(done: int, total: int) -> None:
        time.sleep(0.01)  # ~200 blocks: the transfer outlives the timeout

    r = await dx.copy_to(src, testbed.plain, f"{rdir}/final.bin", timeout=0.5, progress=slow)
    assert r.returncode == -1 and "timed out" in r.stderr
    check = await dx.run(["test", "-e", f"{rdir}/final.bin"], testbed.plain)
    assert check.returncode == 1


async def test_transfer_failures_are_results(testbed: Testbed, rdir: str, tmp_path: Path) -> None:
    missing = await dx.copy_to(tmp_path / "nope", testbed.plain, rdir)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    gone = await dx.copy_from(testbed.plain, f"{rdir}/nope", tmp_path)
    assert gone.returncode != 0 and "does not exist" in gone.stderr
    denied = await dx.write_file(testbed.plain, "/root/dispatch-denied", b"x")
    assert denied.returncode != 0 and "denied" in denied.stderr.lower()
    badhost = await dx.write_file("nobody-here@" + testbed.plain, "x", b"x")
    assert badhost.returncode == 255 and "Permission denied" in badhost.stderr


async def test_write_file_onto_a_directory_says_so(testbed: Testbed, rdir: str) -> None:
    assert (await dx.run(["mkdir", "-p", f"{rdir}/adir/keep"], testbed.plain)).ok
    r = await dx.write_file(testbed.plain, f"{rdir}/adir", b"x")
    assert r.returncode == 1
    assert r.stderr == f"dispatch: writing {testbed.plain}:{rdir}/adir: it is a directory\n"
    assert (await dx.run(["ls", "-A", rdir], testbed.plain)).stdout == "adir\n"  # no temp file
    assert (await dx.run(["ls", "-A", f"{rdir}/adir"], testbed.plain)).stdout == "keep\n"


async def test_write_file_onto_full_disk_says_no_space(testbed: Testbed, pool: Pool) -> None:
    """SFTP reports a full disk as a bare "Failure": the result must say what happened."""
    with full_dir(testbed.user, "1m") as d:
        r = await dx.write_file(testbed.plain, f"{d}/sub/big.bin", os.urandom(3 * 1024 * 1024))
        left = sorted(str(p.relative_to(d)) for p in d.rglob("*") if not p.is_dir())
    assert r.returncode != 0
    assert "No space left on device" in r.stderr, r.stderr
    assert f"{testbed.plain}:{d}/sub" in r.stderr and "bytes free" in r.stderr, r.stderr
    assert left == [], f"left behind: {left}"


async def test_copy_to_onto_full_disk_says_no_space(
    testbed: Testbed, pool: Pool, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    with full_dir(testbed.user, "1m") as d:
        r = await dx.copy_to(src, testbed.plain, f"{d}/big.bin")
        left = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    assert r.returncode != 0
    assert f"No space left on device on {testbed.plain}:{d}" in r.stderr, r.stderr
    assert left == [], f"left behind: {left}"


async def test_unwritable_parent_names_the_directory_it_cannot_create(
    testbed: Testbed, pool: Pool, tmp_path: Path
) -> None:
    """asyncssh's makedirs says "No such file" here; the real reason is a refused mkdir."""
    src = tmp_path / "f.txt"
    src.write_text("x\n")
    with readonly_dir() as d:
        w = await dx.write_file(testbed.plain, f"{d}/a/b/f.txt", b"x")
        c = await dx.copy_to(src, testbed.plain, f"{d}/a/b/")
        left = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    for r in (w, c):
        assert r.returncode != 0
        assert f"cannot create directory '{d}/a' on {testbed.plain}: Permission denied" \
            in r.stderr, r.stderr
    assert left == []
