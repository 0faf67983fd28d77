"""SlurmJob's checkpoint/restart fields (slurm/restarts.py): validation, directives, and the
rendered restart block (bash -n, shellcheck, and what it traps)."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest

from dispatch.errors import InvalidValueError
from dispatch.slurm.job import SlurmJob
from dispatch.slurm.restarts import (
    CHECKPOINT_SIGNALS,
    RESTART_BY,
    check_restart_fields,
    frozen_pattern,
    restart_command,
    restart_directives,
)

SHELLCHECK = shutil.which("shellcheck")


def _job(**kw: object) -> SlurmJob:
    return SlurmJob(name="ckpt", command="python train.py", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "message"), [
    ({"signal_before_end": 0}, r"SlurmJob.signal_before_end: 0 must be None or whole seconds"),
    ({"signal_before_end": 65536}, r"signal_before_end: 65536"),
    ({"signal_before_end": True}, r"signal_before_end: True"),
    ({"signal_before_end": 1.5}, r"signal_before_end: 1.5"),
    ({"signal_before_end": "90"}, r"signal_before_end: '90'"),
    ({"signal_before_end": 90, "checkpoint_signal": "KILL"},
     r"checkpoint_signal: 'KILL' must be one of USR1, USR2, TERM, INT, HUP"),
    ({"signal_before_end": 90, "checkpoint_signal": "SIGUSR1"}, r"checkpoint_signal: 'SIGUSR1'"),
    ({"signal_before_end": 90, "max_restarts": -1}, r"max_restarts: -1 must be an integer >= 0"),
    ({"signal_before_end": 90, "max_restarts": False}, r"max_restarts: False"),
    ({"max_restarts": 2}, r"max_restarts: 2 needs signal_before_end"),
])
def test_bad_restart_fields_name_the_field_and_value(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidValueError, match=message):
        _job(**kw)


def test_check_restart_fields_accepts_the_edges() -> None:
    check_restart_fields(None, "USR1", 0)
    check_restart_fields(1, "TERM", 0)
    check_restart_fields(65535, "HUP", 100)
    assert CHECKPOINT_SIGNALS == ("USR1", "USR2", "TERM", "INT", "HUP")


def test_directives() -> None:
    assert restart_directives(None, "USR1", 0) == []
    assert restart_directives(90, "USR2", 0) == ["--signal=USR2@90"]
    assert restart_directives(90, "USR1", 3) == ["--signal=USR1@90", "--requeue",
                                                 "--open-mode=append"]
    directives = _job(signal_before_end=90, max_restarts=3, time="1:00:00").sbatch_directives()
    assert directives[directives.index("--time=1:00:00") + 1:][:3] == [
        "--signal=USR1@90", "--requeue", "--open-mode=append"]
    assert not any(d.startswith(("--signal", "--requeue")) for d in _job().sbatch_directives())


def test_no_signal_no_restart_block() -> None:
    script = _job().to_bootstrap_script()
    assert "DISPATCH_RESTART" not in script
    assert script.rstrip().endswith("bash -c 'python train.py'")
    # Over SSH (is_slurm False) there is no Slurm to requeue: the plain command.
    ssh = _job(signal_before_end=60, max_restarts=1, is_slurm=False).to_bootstrap_script()
    assert "DISPATCH_RESTART" not in ssh


def test_restart_block_traps_the_signal_and_term() -> None:
    block = restart_command("echo 'a b'; exit 3", "USR2", 4)
    assert "DISPATCH_MAX_RESTARTS=4" in block and "DISPATCH_CHECKPOINT_SIGNAL=USR2" in block
    assert re.search(r"^trap '.*' USR2$", block, re.MULTILINE)
    assert re.search(r"^trap '.*' TERM$", block, re.MULTILINE)  # preemption (Slurm 22.05)
    assert "bash -c 'echo '\"'\"'a b'\"'\"'; exit 3' &" in block  # the command, quoted
    assert "PreemptTime=None" in block  # a SIGTERM restarts only a preemption
    assert "scontrol requeue" in block and "dispatch_resubmit" in block
    assert "{{" not in block
    script = _job(signal_before_end=90, max_restarts=2).to_bootstrap_script()
    assert restart_command("python train.py", "USR1", 2) in script


@pytest.mark.parametrize("kw", [
    {"signal_before_end": 90, "max_restarts": 2},
    {"signal_before_end": 30, "checkpoint_signal": "TERM", "max_restarts": 1},
    {"signal_before_end": 30, "array": "0-3"},
    {"signal_before_end": 30, "max_restarts": 2, "restart_by": "resubmit", "array": "0-3",
     "output": "/a b/%x-%A_%a.out", "error": "e'%5j.err"},
])
def test_rendered_scripts_pass_bash_n_and_shellcheck(
    kw: dict[str, object], tmp_path: pathlib.Path
) -> None:
    assert SHELLCHECK is not None, "shellcheck is required (Debian package 'shellcheck')"
    script = _job(**kw).to_bootstrap_script()
    path = tmp_path / "bootstrap.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)
    proc = subprocess.run([SHELLCHECK, "--shell=bash", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_restart_block_runs_the_command_and_keeps_its_status(tmp_path: pathlib.Path) -> None:
    """Outside Slurm (no SLURM_JOB_ID), no signal: the command's status and environment."""
    block = restart_command('echo "restart=$DISPATCH_RESTART max=$DISPATCH_MAX_RESTARTS"; '
                            "exit 7", "USR1", 2)
    script = "\n".join(['dispatch_log() { printf "%s\\n" "$*" >&2; }',
                        f'DISPATCH_WORK_DIR={tmp_path}', block])
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "restart=0 max=2\n"


def _restart_shell(
    tmp_path: pathlib.Path, shown: str, command: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the restart block around ``command`` with a stand-in scontrol that shows the
    job's record as ``shown``; the process and the scontrol calls it made."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    (bindir / "scontrol").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n'
        f'[ "$2" = show ] && echo "JobId=1 JobName=x {shown} SuspendTime=None"\nexit 0\n')
    (bindir / "scontrol").chmod(0o755)
    script = "\n".join(['dispatch_log() { printf "%s\\n" "$*" >&2; }',
                        f"DISPATCH_WORK_DIR={tmp_path}", restart_command(command, "USR1", 2)])
    proc = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=30,
        env={"PATH": f"{bindir}:/usr/bin:/bin", "SLURM_JOB_ID": "1", "SLURM_PROCID": "0"},
    )
    return proc, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize(("shown", "restarts"), [
    ("JobState=CANCELLED Reason=None PreemptTime=None", False),  # scancel
    ("JobState=TIMEOUT Reason=TimeLimit PreemptTime=None", False),  # out of time
    ("JobState=RUNNING Reason=None PreemptTime=None", False),  # someone's kill -TERM
    ("JobState=RUNNING Reason=None PreemptTime=2026-12-01T16:07:31", True),  # preempted
])
def test_restart_block_restarts_on_sigterm_only_when_preempted(
    shown: str, restarts: bool, tmp_path: pathlib.Path
) -> None:
    """The decision after a SIGTERM, with a stand-in scontrol showing the job's record."""
    # The command gets no signal here (only the restart shell does) and ends by itself.
    proc, calls = _restart_shell(
        tmp_path, shown, "kill -TERM $PPID; sleep 1 & wait $!; echo ended")
    assert proc.returncode == 0 and proc.stdout == "ended\n", proc.stderr
    expected = ["--oneliner show job 1"] + (["requeue 1"] if restarts else [])
    assert calls == expected
    if restarts:
        assert "got SIGTERM: restart 1 of 2" in proc.stderr
    else:
        assert "not preempted): not restarting" in proc.stderr


@pytest.mark.parametrize(("shown", "restarts"), [
    ("JobState=RUNNING Reason=None PreemptTime=None", False),  # the command just ended
    ("JobState=RUNNING Reason=None PreemptTime=2026-12-01T16:07:31", True),  # preempted
])
def test_a_command_that_ended_before_the_shell_saw_a_signal_restarts_if_preempted(
    shown: str, restarts: bool, tmp_path: pathlib.Path
) -> None:
    """Slurm signals a step's processes one by one: the command may checkpoint and exit on
    the preemption's SIGTERM before the restart shell gets its own. Then the shell asks
    scontrol once whether the job is being preempted."""
    proc, calls = _restart_shell(tmp_path, shown, "echo checkpointed")  # no signal to the shell
    assert proc.returncode == 0 and proc.stdout == "checkpointed\n", proc.stderr
    shows = ["--oneliner show job 1"] * (2 if restarts else 1)
    assert calls == shows + (["requeue 1"] if restarts else [])
    assert ("got SIGTERM: restart 1 of 2" in proc.stderr) is restarts, proc.stderr


# --- restart_by: "requeue" (Slurm requeues) or "resubmit" (a new job, the same token) ---


@pytest.mark.parametrize(("kw", "message"), [
    ({"restart_by": "cancel"}, r"SlurmJob.restart_by: 'cancel' must be one of requeue, resubmit"),
    ({"restart_by": "Resubmit"}, r"restart_by: 'Resubmit' must be one of"),
    ({"restart_by": None}, r"restart_by: None must be one of"),
    ({"restart_by": ["resubmit"]}, r"restart_by: \['resubmit'\] must be one of"),
    # Job ids and nodes the resubmitted job does not share: refused in its file names.
    ({"restart_by": "resubmit", "signal_before_end": 60, "max_restarts": 1,
      "output": "logs/%N-%j.out"},
     r"SlurmJob.output: 'logs/%N-%j.out' has %N, which a job resubmitted"),
    ({"restart_by": "resubmit", "signal_before_end": 60, "max_restarts": 1,
      "error": "e-%J.err"}, r"SlurmJob.error: 'e-%J.err' has %J"),
    ({"restart_by": "resubmit", "signal_before_end": 60, "max_restarts": 1,
      "extra_directives": ["--export=NONE"]},
     r"extra_directives\[0\]: '--export=NONE' cannot be combined with restart_by=\"resubmit\""),
])
def test_bad_restart_by_names_the_field_and_value(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidValueError, match=message):
        _job(**kw)


def test_restart_by_accepts_what_a_resubmission_can_keep() -> None:
    _job(restart_by="resubmit")  # no restarts: nothing to keep
    _job(restart_by="requeue", signal_before_end=60, max_restarts=1, output="%N-%J.out",
         extra_directives=["--export=NONE"])  # requeued: same id and environment
    _job(restart_by="resubmit", signal_before_end=60, max_restarts=1,
         output="a\\%N.out",  # a backslash: sbatch expands nothing
         error="logs/%x-%u-%5j-%%N.err", extra_directives=["--export=ALL,A=1"])
    with pytest.raises(InvalidValueError, match="restart_by: 'x'"):
        restart_command("true", "USR1", 1, "x")  # rendered into shell: checked here too


def test_directives_for_each_restart_by() -> None:
    assert restart_directives(90, "USR1", 3, "requeue") == [
        "--signal=USR1@90", "--requeue", "--open-mode=append"]
    assert restart_directives(90, "USR1", 3, "resubmit") == [
        "--signal=USR1@90", "--no-requeue", "--open-mode=append"]
    assert restart_directives(90, "USR2", 0, "resubmit") == ["--signal=USR2@90"]
    assert RESTART_BY == ("requeue", "resubmit")
    resubmit = _job(signal_before_end=90, max_restarts=2, restart_by="resubmit")
    d = resubmit.sbatch_directives()
    assert "--no-requeue" in d and "--requeue" not in d and "--open-mode=append" in d
    default = _job(signal_before_end=90, max_restarts=2).sbatch_directives()
    assert "--requeue" in default and "--no-requeue" not in default


@pytest.mark.parametrize(("pattern", "word"), [
    ("slurm-%j.out", 'slurm-"$SLURM_JOB_ID".out'),
    ("/a b/o-%A_%a %x.log", "'/a b/o-'\"${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}\"'_%a %x.log'"),
    # %% stays an escaped % for sbatch; "%%j" is a literal "%j", not the id.
    ("a%%b %j %%j 5%.log", "'a%%b '\"$SLURM_JOB_ID\"' %%j 5%.log'"),
    ("x%5j", 'x"$(printf %05d "$SLURM_JOB_ID")"'),
    ("it's%j", "'it'\"'\"'s'\"$SLURM_JOB_ID\""),
    ("a\\%j", "'a\\%j'"),  # a backslash: sbatch expands nothing, nor do we
    ("/dev/null", "/dev/null"),
])
def test_frozen_pattern_fixes_the_job_id_and_quotes_the_rest(pattern: str, word: str) -> None:
    assert frozen_pattern(pattern) == word


def test_frozen_pattern_expands_to_the_first_runs_names() -> None:
    """What bash makes of the word, with this run's ids: sbatch's pattern for the successor."""
    cases = {
        "slurm-%j.out": "slurm-77.out",
        "/a b/o-%A_%a %x.log": "/a b/o-70_%a %x.log",
        "a%%b %j %%j $HOME `x`": "a%%b 77 %%j $HOME `x`",
        "x%5j-%3A": "x00077-070",
    }
    for pattern, expected in cases.items():
        proc = subprocess.run(
            ["bash", "-c", f"printf '%s' {frozen_pattern(pattern)}"], capture_output=True,
            text=True, env={"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "70", "PATH": "/bin"},
        )
        assert proc.stdout == expected, (pattern, proc.stderr)


def test_resubmit_block_renders_the_mode_and_the_files() -> None:
    block = restart_command("train", "USR1", 2, "resubmit", output="o-%j.out", error=None)
    assert "DISPATCH_RESTART_BY=resubmit" in block
    assert "    out=o-\"$SLURM_JOB_ID\".out\n    err=''\n" in block
    assert "{{" not in block
    requeue = restart_command("train", "USR1", 2)
    assert "DISPATCH_RESTART_BY=requeue" in requeue
    assert "    out=slurm-\"$SLURM_JOB_ID\".out\n" in requeue  # sbatch's default
    # SlurmJob passes its own patterns (an array's default is per element).
    arr = _job(signal_before_end=90, max_restarts=2, restart_by="resubmit", array="0-3",
               error="/l/e-%j.err").to_bootstrap_script()
    assert "out=slurm-\"${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}\"_%a.out" in arr
    assert "err=/l/e-\"$SLURM_JOB_ID\".err" in arr


def _fields(record: str, *names: str) -> list[str]:
    """dispatch_field of the rendered block, run on a record."""
    block = restart_command("true", "USR1", 1)
    start = block.index("dispatch_field() {")
    func = block[start:block.index("\n}\n", start) + 3]
    script = func + "".join(f'dispatch_field "$R" {n}; echo "|"\n' for n in names)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          env={"R": record, "PATH": "/usr/bin:/bin"}, check=True)
    return [v for v in proc.stdout.split("|\n")][: len(names)]


def test_dispatch_field_reads_scontrol_records_with_spaces_in_paths() -> None:
    """On `scontrol --oneliner show job` text captured from the testbed."""
    fixture = pathlib.Path(__file__).parent.parent / "fixtures" / "slurm" / "restarts"
    record = (fixture / "scontrol_show_job.txt").read_text().strip("\n")
    assert _fields(record, "Command WorkDir",
                   "WorkDir AdminComment SystemComment Comment StdErr",
                   "Comment StdErr", "Nope WorkDir") == [
        "/home/dispatcher/.dispatch-tests/fx dir 50%/sbatch.sh",
        "/home/dispatcher/.dispatch-tests/fx dir 50%",
        "dispatch:0123456789abcdef",
        "",
    ]
