"""SlurmJob rendering: directives, validation, and the bootstrap run for real with local bash."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import os
import pathlib
import shutil
import stat
import subprocess
import tarfile
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.errors import InvalidValueError
from dispatch.slurm.job import (
    SLURM_MAX_SCRIPT_BYTES,
    SlurmJob,
    _heredoc_tag,
    sbatch_quote,
    script_size,
    shell_path,
)
from dispatch.slurm.mounts import JuiceFSMount

BASH = shutil.which("bash") or "/bin/bash"
SHELLCHECK = shutil.which("shellcheck")

HOSTILE_VALUES = {
    "SPACES": "a b  c",
    "QUOTES": "it's \"quoted\"",
    "DOLLAR": "$HOME ${PATH} $(id) $((1+1))",
    "BACKTICK": "`id` \\`",
    "NEWLINES": "line1\nline2\n\nline4\n",
    "UNICODE": "ü 日本 \u202e emoji 🚀",
    "GLOB": "* ? [a-z] ~ ~root",
    "EMPTY": "",
    "TRAILING_BACKSLASH": "x\\",
    "SEMICOLON": "; rm -rf / #",
}


def make_tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def run_script(
    script: str,
    tmp_path: pathlib.Path,
    env: dict[str, str] | None = None,
    name: str = "script.sh",
    path_prefix: pathlib.Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a script as `bash -l` with a private HOME (so no real profile is read)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    if path_prefix is not None:
        # A login shell resets PATH from /etc/profile; the user's profile prepends again.
        (home / ".bash_profile").write_text(f'export PATH="{path_prefix}:$PATH"\n')
    path = tmp_path / name
    path.write_text(script, encoding="utf-8")
    base_path = "/usr/local/bin:/usr/bin:/bin"
    full_env = {
        "HOME": str(home),
        "PATH": f"{path_prefix}:{base_path}" if path_prefix else base_path,
        "TMPDIR": str(tmp_path / "tmp"),
        "LANG": "C.UTF-8",
    }
    (tmp_path / "tmp").mkdir(exist_ok=True)
    full_env.update(env or {})
    return subprocess.run(
        [BASH, "-l", str(path)],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def shellcheck(script: str, tmp_path: pathlib.Path) -> None:
    assert SHELLCHECK is not None, "shellcheck is required (Debian package 'shellcheck')"
    path = tmp_path / "check.sh"
    path.write_text(script, encoding="utf-8")
    proc = subprocess.run(
        [SHELLCHECK, "--shell=bash", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def bash_n(script: str) -> None:
    proc = subprocess.run([BASH, "-n"], input=script.encode(), capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()


# --- directives ----------------------------------------------------------------------------


def directives(job: SlurmJob) -> list[str]:
    return [
        line.removeprefix("#SBATCH ")
        for line in job.to_sbatch_script("/x/b.sh").splitlines()
        if line.startswith("#SBATCH ")
    ]


def test_minimal_job_directives_have_no_mem_or_gres() -> None:
    d = directives(SlurmJob(name="train", command="python train.py"))
    assert d == ['--job-name="train"', "--nodes=1"]
    assert not any(x.startswith(("--mem", "--gres", "--ntasks", "--partition")) for x in d)


def test_full_job_directives() -> None:
    job = SlurmJob(
        name="full",
        command="true",
        partition="gpu",
        nodes=2,
        ntasks=8,
        ntasks_per_node=4,
        cpus_per_task=2,
        gpus_per_node=4,
        gpus=8,
        gpu_type="h100",
        mem="16G",
        time="1-02:00:00",
        output="/logs/%x-%j.out",
        error="/logs/%x-%j.err",
        workdir="/work dir",
        dependency="afterok:123:456",
        exclusive=True,
        constraint="a100&ib",
        account="acct",
        qos="high",
        exclude=["node1", "gpu[01-03]"],
        extra_directives=["--mail-type=END", "--signal=B:USR1@60"],
    )
    assert directives(job) == [
        '--job-name="full"',
        "--partition=gpu",
        "--nodes=2",
        "--ntasks=8",
        "--ntasks-per-node=4",
        "--cpus-per-task=2",
        "--gres=gpu:h100:4",
        "--mem=16G",
        "--time=1-02:00:00",
        '--output="/logs/%x-%j.out"',
        '--error="/logs/%x-%j.err"',
        '--chdir="/work dir"',
        "--dependency=afterok:123:456",
        "--exclusive",
        '--constraint="a100&ib"',
        "--account=acct",
        "--qos=high",
        "--exclude=node1,gpu[01-03]",
        "--mail-type=END",
        "--signal=B:USR1@60",
    ]
    script = job.to_sbatch_script("/shared/run 1/bootstrap.sh")
    assert script.startswith("#!/bin/bash\n")
    assert "exec srun --cpus-per-task=2 bash -l '/shared/run 1/bootstrap.sh'" in script


@pytest.mark.parametrize(
    ("kwargs", "gres"),
    [
        ({"gpus": 2}, "--gres=gpu:2"),
        ({"gpus": 2, "gpu_type": "a100"}, "--gres=gpu:a100:2"),
        ({"gpus_per_node": 4, "gpus": 1}, "--gres=gpu:4"),
        ({"gpus": 0}, None),
        ({"gpu_type": "a100"}, None),
    ],
)
def test_gres_rendering(kwargs: dict[str, object], gres: str | None) -> None:
    d = directives(SlurmJob(name="g", command="true", **kwargs))  # type: ignore[arg-type]
    found = [x for x in d if x.startswith("--gres")]
    assert found == ([gres] if gres else [])


def test_mem_only_when_set() -> None:
    assert "--mem=4000M" in directives(SlurmJob(name="m", command="true", mem="4000M"))
    assert "--mem-per-cpu=2G" in directives(SlurmJob(name="m", command="true", mem_per_cpu="2G"))
    with pytest.raises(InvalidValueError, match="mem_per_cpu"):
        SlurmJob(name="m", command="true", mem="1G", mem_per_cpu="1G")


def test_multinode_default_tasks_is_one_per_node() -> None:
    d = directives(SlurmJob(name="n", command="true", nodes=3))
    assert "--nodes=3" in d
    assert not any(x.startswith("--ntasks") for x in d)


def test_chdir_not_emitted_for_shell_paths() -> None:
    d = directives(SlurmJob(name="c", command="true", workdir="$HOME/w"))
    assert not any(x.startswith("--chdir") for x in d)
    d = directives(SlurmJob(name="c", command="true", workdir="sub", root_dir="/root dir"))
    assert '--chdir="/root dir/sub"' in d


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "a\n#SBATCH --account=other"),
        ("name", "a\x00b"),
        ("name", ""),
        ("partition", "gpu\n#SBATCH --qos=x"),
        ("partition", "gpu partition"),
        ("account", "acct\n"),
        ("qos", "q;rm"),
        ("constraint", "a100\nb"),
        ("constraint", "a b"),
        ("dependency", "afterok:1\n#SBATCH --x"),
        ("dependency", "afterok"),
        ("dependency", "whenever:12"),
        ("time", "1 day"),
        ("time", "1-02:00:00\n"),
        ("mem", "16 GB"),
        ("mem", "lots"),
        ("mem_per_cpu", "-1G"),
        ("gpu_type", "h100\n"),
        ("gpu_type", "h 100"),
        ("output", "/a\nb"),
        ("error", "/a\rb"),
        ("workdir", "/a\nb"),
        ("payload_extract_to", "/a\nb"),
    ],
)
def test_invalid_text_fields_are_rejected_naming_the_field(field: str, value: str) -> None:
    kwargs: dict[str, object] = {"name": "ok", "command": "true", field: value}
    with pytest.raises(InvalidValueError, match=rf"SlurmJob\.{field}\b"):
        SlurmJob(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "label"),
    [
        ("extra_directives", ["--ok", "--x\n#SBATCH --y"], "extra_directives[1]"),
        ("extra_directives", ["-x"], "extra_directives[0]"),
        ("extra_directives", ["--"], "extra_directives[0]"),
        ("exclude", ["node1", "node 2"], "exclude[1]"),
        ("exclude", ["node\n"], "exclude[0]"),
        ("modules", ["cuda/12", "x; rm"], "modules[1]"),
        ("uv_groups", ["dev", "a b"], "uv_groups[1]"),
        ("env", {"BAD-KEY": "v"}, "env"),
        ("env", {"1X": "v"}, "env"),
        ("env", {"X": "a\x00b"}, "env"),
        ("setup_commands", ["echo \x00"], "setup_commands[0]"),
        ("nodes", 0, "nodes"),
        ("ntasks", -1, "ntasks"),
        ("cpus_per_task", 0, "cpus_per_task"),
        ("gpus", -2, "gpus"),
        ("payload", "not base64!", "payload"),
        ("command", "a\x00b", "command"),
        ("bootstrap_py", "x\x00", "bootstrap_py"),
    ],
)
def test_invalid_values_are_rejected(field: str, value: object, label: str) -> None:
    kwargs: dict[str, object] = {"name": "ok", "command": "true", field: value}
    with pytest.raises(InvalidValueError) as info:
        SlurmJob(**kwargs)  # type: ignore[arg-type]
    assert f"SlurmJob.{label}" in str(info.value)


def test_env_value_not_in_error_message() -> None:
    with pytest.raises(InvalidValueError) as info:
        SlurmJob(name="ok", command="true", env={"TOKEN": "secret\x00value"})
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    "value",
    ["30", "30:00", "1:00:00", "2-0", "2-12:00", "7-00:00:00", "UNLIMITED", "infinite"],
)
def test_valid_times(value: str) -> None:
    assert SlurmJob(name="t", command="true", time=value).time == value


@pytest.mark.parametrize(
    "value",
    ["afterok:123", "afterok:123:456", "afterany:1,afternotok:2", "singleton",
     "after:5+10", "aftercorr:7_3", "afterok:1?afterany:2"],
)
def test_valid_dependencies(value: str) -> None:
    assert SlurmJob(name="d", command="true", dependency=value).dependency == value


def test_invalid_bootstrap_path_rejected() -> None:
    job = SlurmJob(name="x", command="true")
    with pytest.raises(InvalidValueError, match="bootstrap_script_path"):
        job.to_sbatch_script("/a\n#SBATCH --x")
    with pytest.raises(InvalidValueError, match="payload_path"):
        job.to_bootstrap_script(payload_path="/a\nb")


# --- sbatch directive quoting --------------------------------------------------------------


def sbatch_argument(line: str) -> str:
    """Python port of sbatch's _get_argument() (src/sbatch/opt.c, 22.05) for one word."""
    out = []
    quoted = escape = False
    i = 0
    while i < len(line) and (quoted or not line[i].isspace()):
        ch = line[i]
        if escape:
            escape = False
        elif ch == "\\":
            escape = True
            i += 1
            continue
        elif ch == '"':
            quoted = not quoted
            i += 1
            continue
        elif ch == "#":
            break
        out.append(ch)
        i += 1
    return "".join(out)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1))
def test_sbatch_quote_round_trips_through_sbatch_parser(name: str) -> None:
    job = SlurmJob(name=name, command="true") if name.strip() else None
    if job is None:
        return
    line = directives(job)[0]
    assert sbatch_argument(line) == f"--job-name={name}"


def test_sbatch_quote_examples() -> None:
    # Verified on the testbed: squeue shows exactly this name for the rendered directive.
    assert sbatch_quote('dispatch |pipe "q" #h ü\\') == '"dispatch |pipe \\"q\\" \\#h ü\\\\"'


def test_shell_path() -> None:
    assert shell_path("$SLURM_TMPDIR/code") == "\"${SLURM_TMPDIR}\"/code"
    assert shell_path("${HOME}/a b") == "\"${HOME}\"'/a b'"
    assert shell_path("~/x") == "\"$HOME\"/x"
    assert shell_path("/a'b") == "'/a'\"'\"'b'"
    assert shell_path("$(id)/x") == "'$(id)/x'"


def test_heredoc_tag_avoids_body_lines() -> None:
    body = "x"
    tag = _heredoc_tag("EOF", body)
    assert tag not in body.splitlines()
    evil = f"a\n{tag}\nb"
    assert _heredoc_tag("EOF", evil) not in evil.splitlines()


# --- lint ----------------------------------------------------------------------------------


def sample_jobs() -> list[SlurmJob]:
    tarball = make_tarball({"a.txt": b"a"})
    return [
        SlurmJob(name="min", command="true"),
        SlurmJob(name="ssh", command="echo hi", is_slurm=False),
        SlurmJob(
            name='every "thing" #1',
            command='python -c "print(1)"; echo "$X"',
            partition="gpu",
            nodes=2,
            cpus_per_task=4,
            gpus_per_node=2,
            gpu_type="h100",
            mem="8G",
            time="10:00",
            workdir="$HOME/work",
            root_dir="/shared",
            env=HOSTILE_VALUES,
            modules=["cuda/12.1", "gcc"],
            uv_groups=["train", "dev"],
            setup_commands=["echo setup", "export Y=1"],
            juicefs_mount=JuiceFSMount(
                redis_url="redis://user:p@ss'w@host:6379/1",
                mount_point="/mnt/jfs",
                cache_dir="/tmp/jfs cache",
                cache_size="10240",
            ),
            bootstrap_py="import os\nprint(os.environ['X'])\n",
            extra_directives=["--mail-type=END"],
        ).pack(tarball),
        SlurmJob(name="path", command="ls", payload_extract_to="/tmp/x y/code").pack(tarball),
    ]


@pytest.mark.parametrize("index", range(4))
def test_scripts_pass_bash_n_and_shellcheck(index: int, tmp_path: pathlib.Path) -> None:
    job = sample_jobs()[index]
    boot = job.to_bootstrap_script()
    scripts = [
        boot,
        job.to_bootstrap_script(payload_path="$HOME/.cache/dispatch/abc.tar.gz"),
        job.to_sbatch_script("/shared/bootstrap.sh"),
        job.to_sbatch_script("$TMPDIR", embed_bootstrap=boot),
        job.to_sbatch_script("/scratch/local dir", embed_bootstrap=boot),
    ]
    assert job.to_script() == boot
    for script in scripts:
        bash_n(script)
        shellcheck(script, tmp_path)


def test_juicefs_password_not_on_command_line() -> None:
    boot = sample_jobs()[2].to_bootstrap_script()
    mount_line = next(line for line in boot.splitlines() if "juicefs mount" in line)
    assert mount_line.strip().startswith("META_PASSWORD='p@ss'\"'\"'w' juicefs mount")
    assert "redis://user@host:6379/1" in mount_line
    assert "ss" not in mount_line.split("juicefs mount", 1)[1]


# --- running the bootstrap locally ---------------------------------------------------------


def test_hostile_env_values_survive(tmp_path: pathlib.Path) -> None:
    names = list(HOSTILE_VALUES)
    printer = "printf '%s\\0' " + " ".join(f'"${n}"' for n in names)
    job = SlurmJob(name="env", command=printer, env=HOSTILE_VALUES, is_slurm=False)
    proc = run_script(job.to_bootstrap_script(), tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    values = proc.stdout.decode().split("\0")[:-1]
    assert dict(zip(names, values, strict=True)) == HOSTILE_VALUES


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))))
def test_any_env_value_survives(value: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        job = SlurmJob(name="env", command='printf %s "$V"', env={"V": value}, is_slurm=False)
        proc = run_script(job.to_bootstrap_script(), pathlib.Path(tmp))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == value.encode("utf-8", "surrogateescape")


def test_exit_status_survives_bash_logout(tmp_path: pathlib.Path) -> None:
    """Debian's ~/.bash_logout fails under srun (SHLVL=1, no console); it must not mask rc."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bash_logout").write_text('if [ "$SHLVL" = 1 ]; then [ -x /nonexistent ] && x; fi\n')
    for command, rc in (("exit 7", 7), ("true", 0), ("false", 1)):
        job = SlurmJob(name="rc", command=command)
        proc = run_script(job.to_bootstrap_script(), tmp_path, env={"SHLVL": "0"})
        assert proc.returncode == rc, (command, proc.stderr.decode())


def test_failing_setup_command_stops_before_command(tmp_path: pathlib.Path) -> None:
    job = SlurmJob(name="s", command="echo RAN", setup_commands=["false"], is_slurm=False)
    proc = run_script(job.to_bootstrap_script(), tmp_path)
    assert proc.returncode != 0
    assert b"RAN" not in proc.stdout


def test_sections_run_in_order(tmp_path: pathlib.Path) -> None:
    work = tmp_path / "work dir"
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    uv = fakebin / "uv"
    uv.write_text('#!/bin/sh\necho "uv $*" >> "$DISPATCH_WORK_DIR/../log"\n')
    uv.chmod(0o755)
    job = SlurmJob(
        name="order",
        command='echo "cmd $PWD $A $B" >> ../log',
        workdir=str(work),
        env={"A": "a"},
        modules=["cuda/12"],
        uv_groups=["g1", "g 2".replace(" ", "_")],
        setup_commands=['echo "setup $A" >> ../log', "export B=b"],
        bootstrap_py="print('hello')\n",
        is_slurm=False,
    )
    proc = run_script(job.to_bootstrap_script(), tmp_path, path_prefix=fakebin)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"no module command" in proc.stderr
    log = (tmp_path / "log").read_text().splitlines()
    assert log == ["uv sync --group g1 --group g_2", "setup a", f"cmd {work} a b"]
    py = list(work.glob(".dispatch-bootstrap-*.py"))
    assert len(py) == 1 and py[0].read_text() == "print('hello')\n"
    assert stat.S_IMODE(py[0].stat().st_mode) == 0o600


def test_bootstrap_py_path_exported(tmp_path: pathlib.Path) -> None:
    job = SlurmJob(
        name="py",
        command='cat "$DISPATCH_BOOTSTRAP_PY"',
        bootstrap_py="x = '''\nEOF\n'''\n",
        is_slurm=False,
    )
    proc = run_script(job.to_bootstrap_script(), tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == "x = '''\nEOF\n'''\n"


FILES = {"pkg/__init__.py": b"", "pkg/main.py": b"print('hi')\n", "data/a b.txt": b"x" * 1000}


def test_packed_payload_falls_back_without_slurm_tmpdir(tmp_path: pathlib.Path) -> None:
    command = (
        'find . -type f | sort; stat -c "mode %a" "$PWD" "${PWD%/code}"; '
        'printf "dir %s\\n" "$PWD"'
    )
    job = SlurmJob(name="p", command=command, payload_extract_to="$SLURM_TMPDIR/code")
    job = job.pack(make_tarball(FILES))
    assert base64.b64decode(job.payload or "") == make_tarball(FILES)
    proc = run_script(job.to_bootstrap_script(), tmp_path, env={"SLURM_JOB_ID": "4242"})
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    listed = [line.removeprefix("./") for line in lines if line.startswith("./")]
    assert sorted(f for f in listed if not f.startswith(".dispatch")) == sorted(FILES)
    assert [line for line in lines if line.startswith("mode")] == ["mode 700", "mode 700"]
    code = pathlib.Path(next(line[4:] for line in lines if line.startswith("dir ")))
    assert code.parent.parent == tmp_path / "tmp" and code.parent.name.startswith("dispatch-4242-")
    # The only task on the node was the last one out: dir and lock file are gone.
    assert list((tmp_path / "tmp").iterdir()) == []


def _wait_for(path: pathlib.Path, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def test_fallback_code_dir_is_removed_by_the_last_task_on_the_node(
    tmp_path: pathlib.Path,
) -> None:
    """Two tasks of one job on one node share the fallback dir; it outlives the first."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    first = SlurmJob(
        name="p",
        command=(
            f"printf changed > pkg/main.py; touch {ready}; "
            f"for _ in $(seq 1 3000); do [ -e {go} ] && break; sleep 0.01; done"
        ),
    ).pack(make_tarball(FILES))
    second = SlurmJob(name="p", command="cat pkg/main.py").pack(make_tarball(FILES))
    env = {"SLURM_JOB_ID": "77"}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        task0 = pool.submit(run_script, first.to_bootstrap_script(), tmp_path, env, "t0.sh")
        _wait_for(ready)
        task1 = run_script(second.to_bootstrap_script(), tmp_path, env, "t1.sh")
        # The second task found the first one's extraction (no second extract) ...
        assert task1.returncode == 0, task1.stderr.decode()
        assert task1.stdout == b"changed"
        # ... and left the dir alone: the first task still uses it.
        base = next((tmp_path / "tmp").glob("dispatch-77-*[!k]"))
        assert (base / "code" / "pkg" / "main.py").read_bytes() == b"changed"
        go.touch()
        assert task0.result(timeout=60).returncode == 0
    assert list((tmp_path / "tmp").iterdir()) == []


def test_user_given_extract_dir_is_kept(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "mine"
    job = SlurmJob(name="p", command="true", payload_extract_to=str(target))
    proc = run_script(job.pack(make_tarball(FILES)).to_bootstrap_script(), tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (target / "pkg" / "main.py").read_bytes() == FILES["pkg/main.py"]


def test_packed_payload_uses_slurm_tmpdir_when_set(tmp_path: pathlib.Path) -> None:
    job = SlurmJob(name="p", command="pwd").pack(make_tarball(FILES))
    slurm_tmp = tmp_path / "slurm tmp"
    slurm_tmp.mkdir()
    proc = run_script(job.to_bootstrap_script(), tmp_path, env={"SLURM_TMPDIR": str(slurm_tmp)})
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == str(slurm_tmp / "code")
    assert (slurm_tmp / "code" / "data" / "a b.txt").exists()


def test_packed_payload_ssh_host_uses_private_temp_dir(tmp_path: pathlib.Path) -> None:
    job = SlurmJob(name="p", command="pwd", is_slurm=False).pack(make_tarball(FILES))
    proc = run_script(job.to_bootstrap_script(), tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    code = pathlib.Path(proc.stdout.decode().strip())
    assert code.parent.parent == tmp_path / "tmp"
    assert code.name == "code" and (code / "pkg" / "main.py").exists()
    assert stat.S_IMODE(code.parent.stat().st_mode) == 0o700


def test_payload_from_uploaded_file(tmp_path: pathlib.Path) -> None:
    tarball = tmp_path / "payload dir" / "abc.tar.gz"
    tarball.parent.mkdir()
    tarball.write_bytes(make_tarball(FILES))
    job = SlurmJob(name="p", command="cat pkg/main.py", payload_extract_to=str(tmp_path / "c"))
    script = job.to_bootstrap_script(payload_path=str(tarball))
    assert "base64" not in script
    proc = run_script(script, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"print('hi')\n"


def _fake_slurm_bin(tmp_path: pathlib.Path) -> pathlib.Path:
    """Stand-in srun (drops its options, runs the command) and sbcast (--force SRC DEST)."""
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "srun").write_text(
        '#!/bin/bash\necho "srun $*" >> "$LOG"\nwhile [[ $1 == --* ]]; do shift; done\n'
        'exec "$@"\n'
    )
    (fakebin / "sbcast").write_text(
        '#!/bin/sh\necho "sbcast $*" >> "$LOG"\n[ "$2" != "$3" ] || exit 9\ncp "$2" "$3"\n'
    )
    for f in fakebin.iterdir():
        f.chmod(0o755)
    return fakebin


def test_sbatch_wrapper_with_embedded_bootstrap_runs(tmp_path: pathlib.Path) -> None:
    """The wrapper stages the bootstrap privately, sbcasts it to a different, node-local
    0700 dir, runs it there, then removes the copies (and the staged file)."""
    fakebin = _fake_slurm_bin(tmp_path)
    command = 'echo "from-bootstrap"; ls -d "${TMPDIR}"/dispatch-4242-*/bootstrap.sh'
    job = SlurmJob(name="w", command=command, nodes=2, cpus_per_task=3)
    boot = job.to_bootstrap_script()
    script = job.to_sbatch_script("$TMPDIR", embed_bootstrap=boot)
    assert "${TMPDIR:-/tmp}" in script and boot.rstrip("\n") in script
    log = tmp_path / "log"
    proc = run_script(
        script,
        tmp_path,
        env={"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "4242", "LOG": str(log)},
        path_prefix=fakebin,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode().splitlines()
    assert out[0] == "from-bootstrap"
    dest = pathlib.Path(out[1])
    assert dest.parent.parent == tmp_path / "tmp"
    assert dest.parent.name.startswith("dispatch-4242-") and len(dest.parent.name) == 30
    lines = log.read_text().splitlines()
    assert len(lines) == 4, lines
    mkdir, sbcast, main, cleanup = lines
    assert mkdir.startswith("srun --overlap --nodes=2 --ntasks=2 --ntasks-per-node=1 sh -c ")
    assert mkdir.endswith(f" sh {dest.parent}")
    _, force, staged, target = sbcast.split(" ")
    assert force == "--force" and target == str(dest) and staged != target
    assert pathlib.Path(staged).parent == tmp_path / "tmp"
    assert main == f"srun --cpus-per-task=3 bash -l {dest}"
    assert cleanup.startswith("srun --overlap --nodes=2 ") and cleanup.endswith(str(dest.parent))
    # Staged file and every copy are gone.
    assert list((tmp_path / "tmp").iterdir()) == []


def test_embedded_bootstrap_copy_is_private_and_exit_status_kept(tmp_path: pathlib.Path) -> None:
    fakebin = _fake_slurm_bin(tmp_path)
    command = (
        'stat -c %a "$(ls -d "$TMPDIR"/dispatch-9-*/)" "$(ls "$TMPDIR"/dispatch-9-*/*)"; exit 5'
    )
    job = SlurmJob(name="w", command=command)
    script = job.to_sbatch_script(
        str(tmp_path / "local base"), embed_bootstrap=job.to_bootstrap_script()
    )
    (tmp_path / "local base").mkdir()
    proc = run_script(
        script,
        tmp_path,
        env={
            "SLURM_JOB_ID": "9",
            "LOG": str(tmp_path / "log"),
            "TMPDIR": str(tmp_path / "local base"),
        },
        path_prefix=fakebin,
    )
    assert proc.returncode == 5, proc.stderr.decode()
    assert proc.stdout.decode().split() == ["700", "700"]
    assert list((tmp_path / "local base").iterdir()) == []


def test_embedded_bootstrap_refuses_a_foreign_or_symlinked_node_dir(tmp_path: pathlib.Path) -> None:
    """If the node-local dir exists and is not a real dir of ours, nothing is copied or run."""
    fakebin = _fake_slurm_bin(tmp_path)
    # A stand-in od makes the 'random' part predictable, as an attacker would need.
    (fakebin / "od").write_text("#!/bin/sh\necho ' 01 02'\n")
    (fakebin / "od").chmod(0o755)
    (tmp_path / "tmp").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "tmp" / "dispatch-3-0102").symlink_to(tmp_path / "elsewhere")
    job = SlurmJob(name="w", command="echo RAN")
    script = job.to_sbatch_script("$TMPDIR", embed_bootstrap=job.to_bootstrap_script())
    proc = run_script(
        script, tmp_path, env={"SLURM_JOB_ID": "3", "LOG": str(tmp_path / "log")},
        path_prefix=fakebin,
    )
    assert proc.returncode != 0
    assert b"cannot create the private directory" in proc.stderr
    assert b"RAN" not in proc.stdout
    assert "sbcast" not in (tmp_path / "log").read_text()
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_script_size() -> None:
    assert SLURM_MAX_SCRIPT_BYTES == 4 * 1024 * 1024
    assert script_size("ü") == 2
    big = SlurmJob(name="b", command="true").pack(os.urandom(3 * 1024 * 1024))
    assert script_size(big.to_bootstrap_script()) > SLURM_MAX_SCRIPT_BYTES


def test_pack_returns_new_job() -> None:
    job = SlurmJob(name="p", command="true")
    packed = job.pack(b"\x00\x01")
    assert job.payload is None
    assert packed.payload == base64.b64encode(b"\x00\x01").decode()
    assert packed.name == "p"


def test_modules_loaded_when_module_command_exists(tmp_path: pathlib.Path) -> None:
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    module = fakebin / "module"
    module.write_text('#!/bin/sh\necho "module $*"\n')
    module.chmod(0o755)
    job = SlurmJob(
        name="m", command="echo cmd", modules=["cuda/12.1", "gcc@13"], is_slurm=False
    )
    proc = run_script(job.to_bootstrap_script(), tmp_path, path_prefix=fakebin)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == ["module load cuda/12.1 gcc@13", "cmd"]


# --- review fixes: values sbatch accepts, list fields given as a bare string ---------


@pytest.mark.parametrize("mem", ["16GB", "500MB", "1gb", "100KB", "2TB", "0"])
def test_mem_with_b_suffix_is_accepted_like_sbatch(mem: str) -> None:
    # sbatch (testbed, --test-only) accepts --mem=16GB / 100mb; only K/M/G/T[B] suffixes.
    job = SlurmJob(name="m", command="true", mem=mem, mem_per_cpu=None)
    assert f"--mem={mem}" in job.sbatch_directives()
    assert SlurmJob(name="m", command="true", mem_per_cpu=mem).mem_per_cpu == mem


@pytest.mark.parametrize("mem", ["1.5G", "1GiB", "16 GB", "lots", "G", "16BG"])
def test_mem_sbatch_rejects_is_rejected_naming_value(mem: str) -> None:
    with pytest.raises(InvalidValueError, match="mem"):
        SlurmJob(name="m", command="true", mem=mem)


@pytest.mark.parametrize(
    "field", ["modules", "setup_commands", "exclude", "extra_directives", "uv_groups"]
)
def test_list_field_given_a_string_is_rejected(field: str) -> None:
    # A bare string used to be iterated character by character (setup_commands="pip
    # install x" became one command per letter; modules="gcc" loaded g, c and c).
    with pytest.raises(InvalidValueError, match=field):
        SlurmJob(name="s", command="true", **{field: "gcc"})  # type: ignore[arg-type]


def test_list_fields_accept_tuples() -> None:
    job = SlurmJob(name="t", command="true", modules=("gcc/12",),  # type: ignore[arg-type]
                   exclude=("node1",))  # type: ignore[arg-type]
    assert "--exclude=node1" in job.sbatch_directives()


def test_env_not_a_mapping_is_rejected() -> None:
    with pytest.raises(InvalidValueError, match="env"):
        SlurmJob(name="e", command="true", env=["A=1"])  # type: ignore[arg-type]
