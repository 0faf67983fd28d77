"""snapshot / snapshot_dirty / pack_files: local tarballs from git and from file lists."""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from dispatch.errors import ShipError
from dispatch.shipping import pack_files, snapshot, snapshot_dirty
from dispatch.shipping.remote import extract_script

from ..support.local import commit_tree


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def make_repo(path: Path) -> Path:
    return commit_tree(path, {"README.md": "hello\n", "pkg/mod.py": "X = 1\n",
                              "gone.txt": "to be deleted\n", ".gitignore": "*.log\nbuild/\n"})


def members(data: bytes) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar:
            f = tar.extractfile(m) if m.isfile() else None
            out[m.name.rstrip("/")] = f.read() if f else None
    return out


def test_snapshot_is_gzip_of_tracked_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    (repo / "untracked.txt").write_text("u\n")
    (repo / "README.md").write_text("changed\n")
    data = snapshot(repo)
    assert data[:2] == b"\x1f\x8b"
    files = {k: v for k, v in members(data).items() if v is not None}
    assert files == {"README.md": b"hello\n", "pkg/mod.py": b"X = 1\n",
                     "gone.txt": b"to be deleted\n", ".gitignore": b"*.log\nbuild/\n"}
    # a subdirectory of the repo ships the whole repository
    assert members(snapshot(repo / "pkg")).keys() == members(data).keys()


def test_snapshot_of_a_commit_is_byte_identical_across_time(tmp_path: Path) -> None:
    """The payload cache is keyed by sha256: the same commit must give the same bytes,
    also when the wall clock moved on (git stamps a bare tree's entries with "now")."""
    repo = make_repo(tmp_path / "r")
    first = snapshot(repo)
    start = time.time()
    while int(time.time()) == int(start):  # cross a second boundary (tar mtimes are seconds)
        time.sleep(0.05)
    assert snapshot(repo) == first
    assert snapshot(repo, git(repo, "rev-parse", "HEAD").strip()) == first


def test_snapshot_ref(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    (repo / "README.md").write_text("two\n")
    git(repo, "commit", "-qam", "two")
    git(repo, "tag", "v1", "HEAD~1")
    assert members(snapshot(repo, "v1"))["README.md"] == b"hello\n"
    assert members(snapshot(repo))["README.md"] == b"two\n"


def test_snapshot_errors(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ShipError, match="not a git repository"):
        snapshot(plain)
    with pytest.raises(ShipError, match="not a directory"):
        snapshot(tmp_path / "missing")
    repo = make_repo(tmp_path / "r")
    with pytest.raises(ShipError, match="'no-such-branch'"):
        snapshot(repo, "no-such-branch")
    with pytest.raises(ShipError, match="invalid git ref"):
        snapshot(repo, "--output=/tmp/x")


def test_snapshot_dirty(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    (repo / "README.md").write_text("modified\n")          # tracked, modified
    (repo / "gone.txt").unlink()                            # tracked, deleted
    (repo / "staged.py").write_text("S = 1\n")             # new, staged
    git(repo, "add", "staged.py")
    (repo / "new dir").mkdir()
    (repo / "new dir" / "untracked é.txt").write_text("u\n")  # untracked, not ignored
    (repo / "debug.log").write_text("ignored\n")            # ignored
    (repo / "build").mkdir()
    (repo / "build" / "out.bin").write_text("ignored\n")    # ignored dir
    status_before = git(repo, "status", "--porcelain")
    files = {k: v for k, v in members(snapshot_dirty(repo)).items() if v is not None}
    assert files == {"README.md": b"modified\n", "pkg/mod.py": b"X = 1\n",
                     "staged.py": b"S = 1\n", "new dir/untracked é.txt": b"u\n",
                     ".gitignore": b"*.log\nbuild/\n"}
    # the repository is untouched: same status, nothing stashed
    assert git(repo, "status", "--porcelain") == status_before
    assert git(repo, "stash", "list") == ""


def test_snapshot_dirty_skips_an_untracked_file_that_vanishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An editor's temp file can disappear between listing and packing: skip it."""
    import dispatch.shipping.tarball as shipping

    repo = make_repo(tmp_path / "r")
    (repo / "kept.txt").write_text("k\n")
    listed = shipping._untracked

    def untracked_then_vanish(top: Path) -> list[str]:
        return [*listed(top), "vanished.tmp"]

    monkeypatch.setattr(shipping, "_untracked", untracked_then_vanish)
    files = members(snapshot_dirty(repo))
    assert "kept.txt" in files and "vanished.tmp" not in files


def test_snapshot_dirty_clean_tree_equals_head(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    assert members(snapshot_dirty(repo)) == members(snapshot(repo))


def test_pack_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "it's \"q\" ü.txt").write_text("q")
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "sub" / "x").write_text("x")
    data = pack_files(["a.txt", Path("d"), tmp_path / "a.txt"], base_path=tmp_path)
    files = {k: v for k, v in members(data).items() if v is not None}
    assert files == {"a.txt": b"a", "d/it's \"q\" ü.txt": b"q", "d/sub/x": b"x"}


def test_pack_files_errors(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (tmp_path / "outside.txt").write_text("o")
    with pytest.raises(ShipError, match="outside base"):
        pack_files(["../outside.txt"], base_path=base)
    with pytest.raises(ShipError, match="outside base"):
        pack_files([tmp_path / "outside.txt"], base_path=base)
    with pytest.raises(ShipError, match="does not exist"):
        pack_files(["nope.txt"], base_path=base)
    with pytest.raises(ShipError, match="no files"):
        pack_files([], base_path=base)
    with pytest.raises(ShipError, match="single path"):
        pack_files("a.txt", base_path=base)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "/", "~", ".", "..", "a/..", "~other/x", "a\nb"])
def test_remote_path_refused(bad: str) -> None:
    with pytest.raises(ShipError):
        extract_script(bad)


def test_remote_path_quoted() -> None:
    script = extract_script("/tmp/x y/$(id)")
    assert "target='/tmp/x y/$(id)'" in script
    assert 'target="$HOME"/\'code dir\'' in extract_script("~/code dir/")


def test_snapshot_of_repo_without_commits_says_so(tmp_path: Path) -> None:
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.py").write_text("A = 1\n")
    for fn in (snapshot, snapshot_dirty):
        with pytest.raises(ShipError, match="has no commits yet") as info:
            fn(repo)
        assert str(repo) in str(info.value)


def test_snapshot_symlinks_empty_dirs_binaries_and_submodules(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sub = make_repo(tmp_path / "sub")
    repo = make_repo(tmp_path / "r")
    (repo / "link").symlink_to("README.md")
    (repo / "empty").mkdir()                       # git does not track empty dirs
    blob = bytes(range(256)) * 8192                # 2 MiB with every byte value
    (repo / "weights.bin").write_bytes(blob)
    git(repo, "add", "-A")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "sub")
    git(repo, "commit", "-q", "-m", "two")
    for fn in (snapshot, snapshot_dirty):
        caplog.clear()
        data = fn(repo)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            by_name = {m.name.rstrip("/"): m for m in tar}
            assert by_name["link"].issym() and by_name["link"].linkname == "README.md"
            weights = tar.extractfile(by_name["weights.bin"])
            assert weights is not None and weights.read() == blob
        assert "empty" not in by_name
        # The submodule is an empty directory in the tarball, and the user is told.
        assert not any(n.startswith("sub/") for n in by_name)
        assert "submodules are not shipped" in caplog.text and "sub" in caplog.text


def test_pack_files_missing_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "here.txt").write_text("x")
    with pytest.raises(ShipError, match=r"does not exist: .*not-here\.txt"):
        pack_files(["here.txt", "not-here.txt"], tmp_path)


def test_pack_files_dot_is_everything_in_base(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "x").write_text("x")
    (tmp_path / "ln").symlink_to("a.txt")
    for spec in (["."], [tmp_path], [".", "a.txt"]):
        data = pack_files(spec, base_path=tmp_path)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            names = {m.name: m for m in tar}
        assert {n for n, m in names.items() if m.isfile()} == {"a.txt", "d/e/x"}
        assert names["ln"].issym() and names["ln"].linkname == "a.txt"
        assert not any(n in (".", "") or n.startswith("./") for n in names)
