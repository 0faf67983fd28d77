"""Hostile input survives literally (property tests, checked on the real host).

Arbitrary NUL-free strings - quotes, ``$()``, backticks, ``;``, newlines, control and
non-ASCII characters - must arrive unchanged as list-command arguments, as env values in a
generated bootstrap, and as remote file names written by ``copy_to`` and ``ship_files``.
Every case is read back on the testbed host, not just inspected locally.
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dispatch

from ..conftest import Testbed
from ..support import report
from ..support.remote import scratch_dir, ssh_out

# Hostile characters drawn often, plus the rest of Unicode (no NUL, no lone surrogates).
_NASTY = [*"'\"`$();&|<>*?[]{}~!#\\ \t\n\r\x1b\x7f-=%", "$(id)", "`id`", "${HOME}"]
_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_piece = st.one_of(st.sampled_from(_NASTY), _chars)
hostile_text = st.lists(_piece, min_size=0, max_size=24).map("".join)

# File names: no '/' or NUL, not '.'/'..', short enough (bytes) for a temp-name prefix.
_name_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/")
hostile_name = (
    st.lists(st.one_of(st.sampled_from([c for c in _NASTY if c != "/"]), _name_chars),
             min_size=1, max_size=16)
    .map("".join)
    .filter(lambda s: s not in (".", "..") and len(s.encode()) <= 100)
)

PROPERTY = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

# Counted so the issue note can report how many generated cases ran.
CASES: dict[str, int] = {}


def _count(name: str) -> None:
    CASES[name] = CASES.get(name, 0) + 1


def _split0(out: str) -> list[str]:
    assert out.endswith("\0"), repr(out[-40:])
    return out[:-1].split("\0")


@given(args=st.lists(hostile_text, min_size=1, max_size=5))
@PROPERTY
def test_list_command_arguments_arrive_literally(testbed: Testbed, args: list[str]) -> None:
    _count("argv")
    res = dispatch.run(["printf", r"%s\0", *args], testbed.plain, timeout=30)
    assert res.ok, res.stderr
    assert _split0(res.stdout) == args


@given(args=st.lists(hostile_text, min_size=1, max_size=3))
@PROPERTY
def test_list_command_arguments_literal_without_login_shell(
        testbed: Testbed, args: list[str]) -> None:
    _count("argv_no_login_shell")
    out = dispatch.run(["printf", r"%s\0", *args], testbed.plain, timeout=30,
                       login_shell=False)
    assert out.ok, out.stderr
    assert _split0(out.stdout) == args


@given(values=st.lists(hostile_text, min_size=1, max_size=4))
@PROPERTY
def test_env_values_survive_a_generated_bootstrap(testbed: Testbed, values: list[str]) -> None:
    _count("bootstrap_env")
    env = {f"HOSTILE_V{i}": v for i, v in enumerate(values)}
    refs = " ".join(f'"${k}"' for k in env)
    job = dispatch.SlurmJob(
        name="hostile-env",
        command=f"printf '%s\\0' BEGIN-MARK {refs} END-MARK",
        is_slurm=False,
        env=env,
    )
    script = job.to_bootstrap_script()
    res = dispatch.run(["bash", "-c", script], testbed.plain, timeout=60)
    assert res.ok, res.stderr
    fields = res.stdout.split("\0")
    start = fields.index("BEGIN-MARK")
    end = fields.index("END-MARK", start)
    assert fields[start + 1:end] == values


@pytest.fixture(scope="module")
def remote_root(testbed: Testbed) -> Iterator[str]:
    """One remote scratch directory for the whole module (each example gets a subdir)."""
    with scratch_dir(testbed, testbed.plain, "dispatch-hostile") as root:
        yield root


_serial = itertools.count()


def _read_back(testbed: Testbed, directory: str, files: list[str]) -> tuple[list[str], list[bytes]]:
    """Names under ``directory`` and the bytes of ``files`` (relative), in one ssh call."""
    sep = f"\0--{secrets.token_hex(8)}--\0"
    script = ('d=$1; sep=$2; shift 2; cd -- "$d" && find . -mindepth 1 -printf "%P\\0" && '
              'for f; do printf "\\0%s\\0" "$sep"; cat "./$f"; done')
    # NUL cannot go through argv: printf adds the separator's NULs remotely
    out = ssh_out(testbed, testbed.plain,
                  ["sh", "-c", script, "sh", directory, sep.strip("\0"), *files])
    raw = out.encode("utf-8", errors="surrogateescape")
    head, *bodies = raw.split(sep.encode())
    names = head.decode("utf-8", errors="surrogateescape").split("\0")
    return [n for n in names if n], bodies


@given(name=hostile_name, body=st.binary(max_size=256))
@PROPERTY
def test_copy_to_remote_file_name_is_literal(testbed: Testbed, remote_root: str, name: str,
                                             body: bytes) -> None:
    _count("copy_to_name")
    local_dir = Path(tempfile.mkdtemp(prefix="dispatch-hostile-"))
    try:
        src = local_dir / "payload"
        src.write_bytes(body)
        remote = f"{remote_root}/c{next(_serial)}"
        assert dispatch.run(["mkdir", remote], testbed.plain, timeout=30).ok
        res = dispatch.copy_to(src, testbed.plain, f"{remote}/{name}", timeout=60)
        assert res.ok, res.stderr
        names, bodies = _read_back(testbed, remote, [name])
        assert names == [name]  # exactly that name, no stray temp file
        assert bodies == [body]
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)


@given(names=st.lists(hostile_name, min_size=1, max_size=4, unique=True))
@PROPERTY
def test_ship_files_remote_file_names_are_literal(testbed: Testbed, remote_root: str,
                                                  names: list[str]) -> None:
    _count("ship_files_names")
    base = Path(tempfile.mkdtemp(prefix="dispatch-hostile-ship-"))
    try:
        files: list[str | Path] = []
        for i, n in enumerate(names):
            (base / n).write_text(f"content {i}\n")
            files.append(base / n)
        dest = f"{remote_root}/s{next(_serial)}/dest"
        res = dispatch.ship_files(testbed.plain, dest, files, base_path=base, timeout=60)
        assert res.ok, res.stderr
        got, bodies = _read_back(testbed, dest, names)
        assert sorted(got) == sorted(names)
        assert bodies == [f"content {i}\n".encode() for i in range(len(names))]
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# fields that reach #SBATCH lines or the bootstrap: rejected clearly, or harmless
# ---------------------------------------------------------------------------------------

_STR_FIELDS = ["name", "partition", "account", "qos", "constraint", "gpu_type", "mem",
               "mem_per_cpu", "time", "dependency", "output", "error", "workdir", "root_dir",
               "payload_extract_to"]
_LIST_FIELDS = ["exclude", "modules", "uv_groups", "extra_directives"]
_INJECT = "--nice=123"  # visible in scontrol if it ever became a directive


def _hostile_values(mark: str) -> dict[str, str]:
    return {
        "newline-directive": f"x\n#SBATCH {_INJECT}",
        "cr-directive": f"x\r#SBATCH {_INJECT}",
        "quote-break": f'x" {_INJECT} "',
        "shell": f"x$(touch {mark})`touch {mark}`;touch {mark}",
        "comment-hash": f"x # {_INJECT}",
    }


_STUBBED = ('d=$(mktemp -d) && printf "#!/bin/sh\\nexit 0\\n" > "$d/srun" && '
            'cp "$d/srun" "$d/sbcast" && chmod +x "$d/srun" "$d/sbcast" && '
            'PATH="$d:$PATH" bash -s; rc=$?; rm -rf "$d"; exit $rc')


def _job_with(field: str, value: str, **extra: object) -> dispatch.SlurmJob:
    kwargs: dict[str, object] = {"name": "hostile-field", "command": "true", **extra}
    if field == "time" or field == "partition":
        kwargs.setdefault("time", "1")
    kwargs[field] = [value] if field in _LIST_FIELDS else value
    if field == "mem_per_cpu":
        kwargs.pop("mem", None)
    if field == "extra_directives":
        kwargs[field] = [f"--comment={value}"]
    return dispatch.SlurmJob(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["newline-directive", "cr-directive", "quote-break", "shell",
                                  "comment-hash"])
@pytest.mark.parametrize("field", _STR_FIELDS + _LIST_FIELDS)
def test_field_injection_rejected_or_harmless(testbed: Testbed, remote_root: str, field: str,
                                              kind: str) -> None:
    _count("field_injection")
    mark = f"{remote_root}/pwned-{field}-{kind}"
    value = _hostile_values(mark)[kind]
    try:
        job = _job_with(field, value)
        wrapper = job.to_sbatch_script(f"{remote_root}/bootstrap-{field}.sh")
        boot = dataclasses.replace(job, is_slurm=False).to_bootstrap_script()
    except dispatch.InvalidValueError as exc:
        assert field.split("_")[0] in str(exc), f"error does not name the field: {exc}"
        REJECTED.add(f"{field}:{kind}")
        return
    # accepted: no injected directive line, and running the scripts touches nothing
    for line in wrapper.splitlines():
        if line.startswith("#SBATCH"):
            assert not line.startswith(f"#SBATCH {_INJECT}"), line
    for script in (wrapper, boot):
        dispatch.run(["sh", "-c", _STUBBED], testbed.plain, timeout=60, input=script)
    marks = dispatch.run(["sh", "-c", 'ls -d "$1"* 2>/dev/null || true', "sh", mark],
                         testbed.plain, timeout=30)
    assert marks.stdout == "", f"{field}={value!r} ran shell code: {marks.stdout}"
    ACCEPTED.add(f"{field}:{kind}")


REJECTED: set[str] = set()
ACCEPTED: set[str] = set()
report.section("hostile").update({
    "hypothesis cases run": lambda: f"{CASES} total={sum(CASES.values())}",
    "fields rejected": lambda: len(REJECTED),
    "fields accepted and harmless": lambda: sorted(ACCEPTED),
})


@pytest.mark.parametrize("kind", ["quote-break", "shell", "comment-hash"])
@pytest.mark.parametrize("field", ["name", "output", "workdir"])
def test_accepted_hostile_fields_are_literal_to_sbatch(testbed: Testbed, remote_root: str,
                                                       field: str, kind: str) -> None:
    """What the renderer accepts, real sbatch reads literally (held job, then cancelled)."""
    _count("sbatch_literal")
    mark = f"{remote_root}/pwned-sbatch-{field}-{kind}"
    value = _hostile_values(mark)[kind]
    if field != "name":
        value = f"{remote_root}/{field}-{value}"
    job = _job_with(field, value, time="1", partition="cpu", extra_directives=["--hold"])
    res = dispatch.submit(job, testbed.slurm, timeout=120)
    assert res.job_id is not None, res
    try:
        show = dispatch.run(["scontrol", "show", "job", str(res.job_id)], testbed.slurm,
                            timeout=30)
        assert show.ok, show
        assert "Nice=123" not in show.stdout, f"{field}: injected directive took effect"
        if field == "name":
            got = dispatch.run(["squeue", "-h", "-j", str(res.job_id), "-o", "%j"],
                               testbed.slurm, timeout=30)
            assert got.stdout.rstrip("\n") == value, (got.stdout, value)
        elif field == "output":
            assert f"StdOut={value}" in show.stdout, show.stdout
        else:
            assert f"WorkDir={value}" in show.stdout, show.stdout
    finally:
        dispatch.cancel(res.job_id, testbed.slurm)


@pytest.mark.parametrize("kind", ["shell", "quote-break", "comment-hash", "newline-directive"])
def test_hostile_share_dir_and_ship_path_rejected_or_literal(testbed: Testbed, remote_root: str,
                                                              kind: str, tmp_path: Path) -> None:
    _count("paths")
    mark = f"{remote_root}/pwned-path-{kind}"
    value = _hostile_values(mark)[kind]
    share = f"{remote_root}/share-{kind} {value}"
    job = dispatch.SlurmJob(name="hostile-share", command="true", time="1", partition="cpu",
                            extra_directives=["--hold"])
    try:
        res = dispatch.submit(job, testbed.slurm, share_dir=share, timeout=120)
    except dispatch.InvalidValueError as exc:
        assert "share_dir" in str(exc)
        res = None
    if res is not None:
        assert res.job_id is not None, res
        try:
            show = dispatch.run(["scontrol", "show", "job", str(res.job_id)], testbed.slurm,
                                timeout=30)
            assert f"Command={share}/" in show.stdout, show.stdout
        finally:
            dispatch.cancel(res.job_id, testbed.slurm)
    (tmp_path / "f.txt").write_text("shipped\n")
    dest = f"{remote_root}/ship-{kind} {value}"
    try:
        shipped = dispatch.ship_files(testbed.plain, dest, [tmp_path / "f.txt"],
                                      base_path=tmp_path, timeout=60)
    except (dispatch.ShipError, dispatch.InvalidValueError) as exc:
        assert "remote_path" in str(exc)
    else:
        assert shipped.ok, shipped
        names, bodies = _read_back(testbed, dest, ["f.txt"])
        assert names == ["f.txt"] and bodies == [b"shipped\n"]
    marks = dispatch.run(["sh", "-c", 'ls -d "$1"* 2>/dev/null || true', "sh", mark],
                         testbed.plain, timeout=30)
    assert marks.stdout == "", f"path {value!r} ran shell code"
