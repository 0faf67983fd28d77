"""Where copies land and what happens to what is there (docs/guides/copying.md), against
the real sshd: scp's rules (symlinks written through, read-only files refused, modes kept),
the cp -r nesting rule, links inside/outside a tree, and re-copying a tree with a
directory symlink (issue 16, items 2 and 3)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import dispatch.aio as dx

from ..conftest import Testbed


async def sh(testbed: Testbed, script: str, *args: str) -> str:
    r = await dx.run(["sh", "-c", script, "-", *args], testbed.plain)
    assert r.ok, r.stderr
    return r.stdout


async def test_recopying_a_tree_with_a_directory_symlink(
    testbed: Testbed, rdir: str, tmp_path: Path
) -> None:
    """Issue 16.2: the second copy used to fail halfway with "'…/latest' is a directory"."""
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "a.txt").write_text("a1")
    (proj / "main.py").write_text("v1")
    (proj / "latest").symlink_to("data")
    first = await dx.copy_to(proj, testbed.plain, f"{rdir}/")
    assert first.ok, first.stderr
    (proj / "main.py").write_text("v2")
    (proj / "data" / "b.txt").write_text("b1")
    again = await dx.copy_to(proj, testbed.plain, f"{rdir}/")
    assert again.ok, again.stderr
    out = await sh(testbed, 'cd "$1/proj" && readlink latest && cat main.py data/b.txt && '
                   'ls -A . data', rdir)
    assert out == "data\nv2b1.:\ndata\nlatest\nmain.py\n\ndata:\na.txt\nb.txt\n"


async def test_a_conflicting_merge_changes_nothing_and_says_why(
    testbed: Testbed, rdir: str, tmp_path: Path
) -> None:
    """All checks run before the first rename: a half-updated tree cannot happen here."""
    proj = tmp_path / "proj"
    (proj / "sub").mkdir(parents=True)
    for name in ("a.txt", "z.txt"):
        (proj / name).write_text("old")
    (proj / "sub" / "f").write_text("old")
    assert (await dx.copy_to(proj, testbed.plain, f"{rdir}/")).ok
    # a directory where a file goes:
    await sh(testbed, 'rm "$1/proj/sub/f" && mkdir "$1/proj/sub/f"', rdir)
    for name in ("a.txt", "z.txt"):
        (proj / name).write_text("new")
    r = await dx.copy_to(proj, testbed.plain, f"{rdir}/")
    assert r.returncode == 1
    assert r.stderr == (f"dispatch: copy_to: nothing copied into {testbed.plain}:{rdir}/proj: "
                        f"{rdir}/proj/sub/f is a directory\n")
    assert await sh(testbed, 'cat "$1/proj/a.txt" "$1/proj/z.txt"; ls -A "$1/proj"', rdir) \
        == "oldolda.txt\nsub\nz.txt\n"  # nothing landed, no temp files


async def test_copy_to_writes_through_a_remote_symlink(
    testbed: Testbed, rdir: str, tmp_path: Path
) -> None:
    src = tmp_path / "cfg.txt"
    src.write_text("new content")
    await sh(testbed, 'mkdir "$1/real" && echo old > "$1/real/cfg.txt" && chmod 600 '
             '"$1/real/cfg.txt" && ln -s real/cfg.txt "$1/cfg.txt"', rdir)
    r = await dx.copy_to(src, testbed.plain, f"{rdir}/cfg.txt")
    assert r.ok, r.stderr
    out = await sh(testbed, 'cd "$1" && readlink cfg.txt && cat real/cfg.txt && '
                   'stat -c %a real/cfg.txt && ls -A . real', rdir)
    assert out == "real/cfg.txt\nnew content600\n.:\ncfg.txt\nreal\n\nreal:\ncfg.txt\n"


async def test_copy_to_refuses_a_read_only_file_and_keeps_modes(
    testbed: Testbed, rdir: str, tmp_path: Path
) -> None:
    src = tmp_path / "f.txt"
    src.write_text("new")
    src.chmod(0o644)
    await sh(testbed, 'cd "$1" && echo old > ro && chmod 444 ro && echo old > priv && '
             'chmod 600 priv', rdir)
    r = await dx.copy_to(src, testbed.plain, f"{rdir}/ro")
    assert r.returncode == 1
    assert r.stderr == (f"dispatch: copy_to: cannot write {testbed.plain}:{rdir}/ro: read-only "
                        "(mode 0444; left unchanged)\n")
    # An existing file keeps its mode (scp); preserve=True (scp -p) takes the source's.
    assert (await dx.copy_to(src, testbed.plain, f"{rdir}/priv")).ok
    os.utime(src, (1_000_000_000, 1_000_000_000))
    assert (await dx.copy_to(src, testbed.plain, f"{rdir}/new", preserve=True)).ok
    out = await sh(testbed, 'cd "$1" && cat ro priv && stat -c "%n %a" ro priv new && '
                   'stat -c %Y new && ls -A', rdir)
    assert out == "old\nnewro 444\npriv 600\nnew 644\n1000000000\nnew\npriv\nro\n"


async def test_copy_from_refuses_a_read_only_file_and_writes_through_links(
    testbed: Testbed, rdir: str, tmp_path: Path
) -> None:
    await sh(testbed, 'echo remote > "$1/f.txt" && chmod 640 "$1/f.txt"', rdir)
    ro = tmp_path / "ro.txt"
    ro.write_text("local")
    ro.chmod(0o444)
    r = await dx.copy_from(testbed.plain, f"{rdir}/f.txt", ro)
    assert r.returncode == 1
    assert r.stderr == (f"dispatch: copy_from: cannot write {str(ro)!r}: read-only "
                        "(mode 0444; left unchanged)\n")
    assert ro.read_text() == "local"
    real = tmp_path / "real.txt"
    real.write_text("local")
    real.chmod(0o600)
    link = tmp_path / "link.txt"
    link.symlink_to("real.txt")
    assert (await dx.copy_from(testbed.plain, f"{rdir}/f.txt", link)).ok
    assert link.is_symlink() and os.readlink(link) == "real.txt"
    assert real.read_text() == "remote\n"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600  # an existing file keeps its mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "real.txt", "ro.txt"]


async def test_links_inside_a_tree_stay_links_outside_ones_are_content(
    testbed: Testbed, rdir: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shared.txt").write_text("shared")
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "x").write_text("x")
    (proj / "inner").symlink_to("data/x")
    (proj / "ext").symlink_to(outside / "shared.txt")
    (proj / "extdir").symlink_to("../outside")
    assert (await dx.copy_to(proj, testbed.plain, f"{rdir}/")).ok
    out = await sh(testbed, 'cd "$1/proj" && stat -c "%n %F" inner ext extdir '
                   'extdir/shared.txt && cat ext', rdir)
    assert out == ("inner symbolic link\next regular file\nextdir directory\n"
                   "extdir/shared.txt regular file\nshared")
    # And back: the same rule from the remote side.
    await sh(testbed, 'ln -s "$(pwd)/$1/proj/data/x" "$1/proj/abs"', rdir)
    back = tmp_path / "back"
    assert (await dx.copy_from(testbed.plain, f"{rdir}/proj", back)).ok
    assert (back / "inner").is_symlink() and os.readlink(back / "inner") == "data/x"
    assert not (back / "abs").is_symlink() and (back / "abs").read_text() == "x"


async def test_cp_r_nesting_rule(testbed: Testbed, rdir: str, tmp_path: Path) -> None:
    """Copying ``dir`` to a missing path creates it; the second time nests (cp -r, scp -r)."""
    src = tmp_path / "dir"
    src.mkdir()
    (src / "f").write_text("f")
    for _ in range(2):
        assert (await dx.copy_to(src, testbed.plain, f"{rdir}/copy")).ok
    assert await sh(testbed, 'cd "$1" && find copy | sort', rdir) == \
        "copy\ncopy/dir\ncopy/dir/f\ncopy/f\n"
    local = tmp_path / "local"
    for _ in range(2):
        assert (await dx.copy_from(testbed.plain, f"{rdir}/copy/dir", local)).ok
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*")) == ["dir", "dir/f", "f"]
