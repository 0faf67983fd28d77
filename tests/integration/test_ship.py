"""ship / ship_dirty / ship_files to the testbed: contents, atomicity, hostile names."""

from __future__ import annotations

import hashlib
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatch.errors import ShipError
from dispatch.shipping import ship, ship_dirty, ship_files
from dispatch.shipping.remote import _ship_bytes
from dispatch.ssh.commands import run

from ..conftest import Testbed
from ..support.local import commit_tree

HOSTILE = ["with space.txt", "it's.txt", 'dq"uote.txt', "ümlaut-日本.txt", "$(id).txt",
           "-dash.txt", "semi;colon&.txt"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def make_repo(path: Path) -> Path:
    files: dict[str, str | bytes] = {"README.md": "hello\n", "pkg/mod.py": "X = 1\n",
                                     "run.sh": "#!/bin/sh\necho ok\n", ".gitignore": "*.log\n"}
    files.update({f"odd dir/{name}": f"hostile {i}\n" for i, name in enumerate(HOSTILE)})
    return commit_tree(path, files, executable=("run.sh",))


def local_files(root: Path, names: list[str]) -> dict[str, str]:
    return {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in names}


async def remote_files(host: str, path: str) -> dict[str, str] | None:
    """relative path -> sha256 of every file under ``path`` on ``host``; None if missing."""
    script = ('cd "$1" 2>/dev/null || { echo MISSING; exit 0; }; '
              "find . -type f -print0 | xargs -0 -r sha256sum")
    res = await run(["sh", "-c", script, "sh", path], host, timeout=60)
    assert res.ok, res
    if res.stdout.strip() == "MISSING":
        return None
    out = {}
    for line in res.stdout.splitlines():
        digest, _, name = line.partition("  ")
        out[name.removeprefix("./")] = digest
    return out


async def siblings(host: str, path: str) -> list[str]:
    """Names next to ``path`` that start with its basename (temp dirs left behind?)."""
    script = ('d=$(dirname "$1"); b=$(basename "$1"); '
              'ls -A "$d" 2>/dev/null | grep -F -- "$b" || true')
    res = await run(["sh", "-c", script, "sh", path], host, timeout=30)
    assert res.ok, res
    return sorted(res.stdout.split("\n")[:-1])


@pytest.fixture
async def remote_dir(testbed: Testbed) -> AsyncIterator[str]:
    res = await run("echo $HOME", testbed.plain, timeout=30)
    home = res.stdout.strip()
    base = f"{home}/dispatch-test-ship/{secrets.token_hex(4)}"
    yield base
    await run(["sh", "-c", 'chmod -R u+w "$1" 2>/dev/null; rm -rf "$1"', "sh", base],
              testbed.plain, timeout=60)


TRACKED = ["README.md", "pkg/mod.py", "run.sh", ".gitignore", *(f"odd dir/{n}" for n in HOSTILE)]


async def test_ship_creates_and_replaces(testbed: Testbed, tmp_path: Path,
                                         remote_dir: str) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "untracked.txt").write_text("not shipped\n")
    target = f"{remote_dir}/deep/er/code"
    res = await ship(testbed.plain, target, repo)
    assert res.ok, res
    assert await remote_files(testbed.plain, target) == local_files(repo, TRACKED)
    # executable bit survives
    res = await run(["sh", "-c", 'test -x "$1"', "sh", f"{target}/run.sh"], testbed.plain)
    assert res.ok
    # shipping again replaces the tree: removed files disappear
    git(repo, "rm", "-q", "pkg/mod.py")
    git(repo, "commit", "-qm", "two")
    res = await ship(testbed.plain, target, repo)
    assert res.ok, res
    assert await remote_files(testbed.plain, target) == local_files(
        repo, [t for t in TRACKED if t != "pkg/mod.py"])
    assert await siblings(testbed.plain, target) == ["code"]
    # an older ref
    res = await ship(testbed.plain, target, repo, ref="HEAD~1")
    assert res.ok
    assert "pkg/mod.py" in (await remote_files(testbed.plain, target) or {})


async def test_ship_to_home_relative_path(testbed: Testbed, tmp_path: Path,
                                          remote_dir: str) -> None:
    repo = make_repo(tmp_path / "repo")
    rel = remote_dir.split("/dispatch-test-ship/", 1)[1]
    res = await ship(testbed.plain, f"~/dispatch-test-ship/{rel}/tilde code", repo)
    assert res.ok, res
    got = await remote_files(testbed.plain, f"{remote_dir}/tilde code")
    assert got == local_files(repo, TRACKED)


async def test_ship_dirty(testbed: Testbed, tmp_path: Path, remote_dir: str) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "README.md").write_text("modified\n")
    (repo / "pkg" / "mod.py").unlink()
    (repo / "staged.py").write_text("S = 1\n")
    git(repo, "add", "staged.py")
    (repo / "new file ü.txt").write_text("untracked\n")
    (repo / "debug.log").write_text("ignored\n")
    status = git(repo, "status", "--porcelain")
    res = await ship_dirty(testbed.plain, f"{remote_dir}/code", repo)
    assert res.ok, res
    want = [t for t in TRACKED if t != "pkg/mod.py"] + ["staged.py", "new file ü.txt"]
    assert await remote_files(testbed.plain, f"{remote_dir}/code") == local_files(repo, want)
    assert git(repo, "status", "--porcelain") == status
    assert git(repo, "stash", "list") == ""


async def test_ship_files(testbed: Testbed, tmp_path: Path, remote_dir: str) -> None:
    base = tmp_path / "base"
    (base / "odd dir").mkdir(parents=True)
    for i, name in enumerate(HOSTILE):
        (base / "odd dir" / name).write_text(f"h{i}")
    (base / "cfg.yaml").write_text("a: 1\n")
    (base / "skip.txt").write_text("not chosen\n")
    res = await ship_files(testbed.plain, f"{remote_dir}/files", ["cfg.yaml", "odd dir"],
                           base_path=base)
    assert res.ok, res
    assert await remote_files(testbed.plain, f"{remote_dir}/files") == local_files(
        base, ["cfg.yaml", *(f"odd dir/{n}" for n in HOSTILE)])
    with pytest.raises(ShipError, match="outside base"):
        await ship_files(testbed.plain, f"{remote_dir}/files", ["../x"], base_path=base)


async def test_local_errors_raise(testbed: Testbed, tmp_path: Path, remote_dir: str) -> None:
    with pytest.raises(ShipError, match="not a git repository"):
        await ship(testbed.plain, f"{remote_dir}/x", tmp_path)
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(ShipError, match="'nope'"):
        await ship(testbed.plain, f"{remote_dir}/x", repo, ref="nope")
    assert await remote_files(testbed.plain, remote_dir) is None


async def test_unwritable_destination_leaves_nothing(testbed: Testbed, tmp_path: Path,
                                                     remote_dir: str) -> None:
    repo = make_repo(tmp_path / "repo")
    # /root is not writable (nor readable) for the test user.
    res = await ship(testbed.plain, f"/root/dispatch-ship-{secrets.token_hex(4)}/code", repo)
    assert not res.ok
    assert "Permission denied" in res.stderr
    # A read-only parent inside the user's home: nothing appears in it.
    ro = f"{remote_dir}/ro"
    assert (await run(["sh", "-c", 'mkdir -p "$1" && chmod 555 "$1"', "sh", ro],
                      testbed.plain)).ok
    res = await ship(testbed.plain, f"{ro}/code", repo)
    assert not res.ok
    assert await remote_files(testbed.plain, ro) == {}
    assert await siblings(testbed.plain, f"{ro}/code") == []


async def test_broken_stream_keeps_old_tree(testbed: Testbed, tmp_path: Path,
                                            remote_dir: str) -> None:
    repo = make_repo(tmp_path / "repo")
    target = f"{remote_dir}/code"
    assert (await ship(testbed.plain, target, repo)).ok
    before = await remote_files(testbed.plain, target)
    # A truncated tarball: tar fails half way; the old tree stays, no temp dir is left.
    from dispatch.shipping import snapshot

    data = snapshot(repo)
    res = await _ship_bytes(testbed.plain, target, data[: len(data) // 2], timeout=60)
    assert not res.ok
    assert await remote_files(testbed.plain, target) == before
    assert await siblings(testbed.plain, target) == ["code"]
    # Not a tarball at all, to a new target: nothing is created.
    res = await _ship_bytes(testbed.plain, f"{remote_dir}/fresh", b"garbage", timeout=60)
    assert not res.ok
    assert await remote_files(testbed.plain, f"{remote_dir}/fresh") is None
    assert await siblings(testbed.plain, f"{remote_dir}/fresh") == []


async def test_hostile_remote_path(testbed: Testbed, tmp_path: Path, remote_dir: str) -> None:
    repo = make_repo(tmp_path / "repo")
    target = f"{remote_dir}/it's \"x\" $(touch pwned) `id` ü;&/code"
    res = await ship(testbed.plain, target, repo)
    assert res.ok, res
    assert await remote_files(testbed.plain, target) == local_files(repo, TRACKED)
    # nothing was executed: no file named pwned anywhere near
    res = await run(["sh", "-c", 'find "$1" -name pwned | wc -l', "sh", remote_dir],
                    testbed.plain)
    assert res.stdout.strip() == "0"
    home = (await run("echo $HOME", testbed.plain)).stdout.strip()
    assert not (await run(["test", "-e", f"{home}/pwned"], testbed.plain)).ok


async def test_ship_repo_with_symlink_and_binary_to_path_with_spaces(
        testbed: Testbed, tmp_path: Path, remote_dir: str) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "link").symlink_to("README.md")
    (repo / "weights.bin").write_bytes(secrets.token_bytes(3 * 1024 * 1024))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "two")
    dest = f"{remote_dir}/my project 'v2'/code"
    res = await ship(testbed.plain, dest, repo)
    assert res.ok, res
    got = await remote_files(testbed.plain, dest)
    assert got == local_files(repo, [*TRACKED, "weights.bin"])
    check = await run(["sh", "-c", 'test -L "$1/link" && readlink "$1/link"', "sh", dest],
                      testbed.plain, timeout=30)
    assert check.stdout.strip() == "README.md", check


async def test_ship_files_directory_recursive_and_missing_file(
        testbed: Testbed, tmp_path: Path, remote_dir: str) -> None:
    base = tmp_path / "base"
    (base / "conf" / "deep").mkdir(parents=True)
    (base / "conf" / "a.yaml").write_text("a\n")
    (base / "conf" / "deep" / "b.yaml").write_text("b\n")
    res = await ship_files(testbed.plain, f"{remote_dir}/f", ["conf"], base_path=base)
    assert res.ok, res
    assert await remote_files(testbed.plain, f"{remote_dir}/f") == local_files(
        base, ["conf/a.yaml", "conf/deep/b.yaml"])
    with pytest.raises(ShipError, match=r"does not exist: .*missing\.yaml"):
        await ship_files(testbed.plain, f"{remote_dir}/g", ["conf", "missing.yaml"],
                         base_path=base)
    assert await remote_files(testbed.plain, f"{remote_dir}/g") is None


async def test_ship_through_symlinked_destination_keeps_the_link(
        testbed: Testbed, tmp_path: Path, remote_dir: str) -> None:
    # HPC layout: ~/code is a symlink into scratch; shipping must not replace the link
    # with a real directory in the (small) home.
    repo = make_repo(tmp_path / "repo")
    setup = await run(["sh", "-c", 'mkdir -p "$1/scratch/code" && echo old > '
                       '"$1/scratch/code/stale.txt" && ln -s scratch/code "$1/link"',
                       "sh", remote_dir], testbed.plain, timeout=30)
    assert setup.ok, setup
    for dest in (f"{remote_dir}/link", f"{remote_dir}/link/"):
        res = await ship(testbed.plain, dest, repo)
        assert res.ok, res
        check = await run(["sh", "-c", 'test -L "$1/link" && readlink "$1/link"', "sh",
                           remote_dir], testbed.plain, timeout=30)
        assert check.stdout.strip() == "scratch/code", check
        assert await remote_files(testbed.plain, f"{remote_dir}/scratch/code") == \
            local_files(repo, TRACKED)
        assert await siblings(testbed.plain, f"{remote_dir}/scratch/code") == ["code"]
