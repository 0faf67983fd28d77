"""The ``dispatch`` command line, run as a subprocess against the testbed's sshd and SLURM."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from ..conftest import ROOT, Testbed

TESTBED_YAML = ROOT / "examples" / "testbed.yaml"


def bad_host(testbed: Testbed) -> str:
    """A host that refuses connections (the testbed's ssh config maps every name to loopback)."""
    return f"{testbed.plain}:1"


def cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dispatch.cli ARGS`` with the testbed's environment, stdout/err piped."""
    return subprocess.run(
        [sys.executable, "-m", "dispatch.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env or os.environ.copy(),
    )  # fmt: skip


def assert_one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --- SSH ------------------------------------------------------------------------------------


def test_hosts_lists_aliases(testbed: Testbed) -> None:
    proc = cli("hosts")
    assert proc.returncode == 0, proc.stderr
    names = proc.stdout.split()
    for alias in (testbed.plain, testbed.plain2, testbed.slurm, *testbed.fleet):
        assert alias in names
    assert not any("*" in n or n.startswith("!") for n in names)
    assert json.loads(cli("hosts", "--json").stdout) == names


def test_hosts_with_explicit_ssh_config(testbed: Testbed, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host only-this-one\n  HostName 127.0.0.1\nHost *\n  User x\n")
    proc = cli("--ssh-config", str(config), "hosts")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["only-this-one"]


def test_hosts_without_a_config_says_so(testbed: Testbed, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISPATCH_SSH_CONFIG"}
    env["HOME"] = str(tmp_path)  # no ~/.ssh/config
    proc = cli("hosts", env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    line = assert_one_error_line(proc)
    assert line.startswith(f"dispatch: error: no ssh config at {tmp_path}/.ssh/config")
    data = json.loads(cli("--json", "hosts", env=env).stdout)
    assert data["exit_code"] == 1 and data["error"] == line.removeprefix("dispatch: error: ")
    # A config with only patterns: nothing to list, said on stderr, not an error.
    config = tmp_path / "patterns"
    config.write_text("Host *\n  User x\n")
    proc = cli("--ssh-config", str(config), "hosts", env=env)
    assert (proc.returncode, proc.stdout) == (0, "")
    assert proc.stderr == f"dispatch: {config} defines no host aliases (only patterns, or none)\n"


def test_run_propagates_exit_code_and_streams(testbed: Testbed) -> None:
    assert cli("run", testbed.plain, "--", "exit", "3").returncode == 3
    proc = cli("run", testbed.plain, "--", "echo out; echo err >&2; exit 7")
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")
    proc = cli("run", testbed.plain, "--", "whoami")
    assert (proc.returncode, proc.stdout) == (0, f"{testbed.user}\n")


def test_run_words_are_joined_like_ssh(testbed: Testbed) -> None:
    # `$HOME` expands remotely, as with `ssh host 'echo $HOME'`.
    proc = cli("run", testbed.plain, "--", "echo", "$HOME")
    assert proc.returncode == 0 and proc.stdout.strip().startswith("/")


def test_run_json(testbed: Testbed) -> None:
    proc = cli("--json", "run", testbed.plain, "--", "echo hi; exit 2")
    assert proc.returncode == 2
    data = json.loads(proc.stdout)
    assert data["returncode"] == 2 and data["stdout"] == "hi\n" and data["may_have_run"] is False


def test_run_timeout_exits_124(testbed: Testbed) -> None:
    proc = cli("run", testbed.plain, "--timeout", "1", "--", "sleep", "30", timeout=60)
    assert proc.returncode == 124
    assert "timed out" in proc.stderr.lower()


def test_run_bad_host_is_one_line_without_traceback(testbed: Testbed) -> None:
    proc = cli("run", bad_host(testbed), "--", "true", timeout=90)
    assert proc.returncode == 255
    assert_one_error_line(proc)


def test_run_malformed_host_is_one_line_naming_it(testbed: Testbed) -> None:
    # `plain:abc` is no host:port; the wildcard testbed config must not make it "work"
    proc = cli("run", f"{testbed.plain}:abc", "--", "true", timeout=60)
    assert proc.returncode == 255
    assert f"invalid SSH host '{testbed.plain}:abc'" in assert_one_error_line(proc)


def test_ctrl_c_during_run_exits_130_and_kills_the_remote_command(testbed: Testbed) -> None:
    marker = f"{uuid.uuid4().int % 900000 + 100000}.25"

    def remote_sleeps() -> str:
        check = cli("run", testbed.plain, "--", f"pgrep -a -x sleep | grep -F -- '{marker}'")
        return check.stdout

    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatch.cli", "run", testbed.plain, "--", "sleep", marker],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not remote_sleeps():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err == "dispatch: error: interrupted\n"
    assert remote_sleeps() == ""


def test_run_many(testbed: Testbed) -> None:
    proc = cli("run-many", testbed.plain, testbed.plain2, "--", "whoami")
    assert proc.returncode == 0, proc.stderr
    lines = sorted(proc.stdout.splitlines())
    width = max(len(testbed.plain), len(testbed.plain2))
    assert lines == sorted([
        f"{testbed.plain.ljust(width)}: {testbed.user}",
        f"{testbed.plain2.ljust(width)}: {testbed.user2}",
    ])  # fmt: skip


def test_run_many_patterns_and_json(testbed: Testbed) -> None:
    proc = cli("--json", "run-many", "fleet0*", "--", "echo ok")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    expected = [h for h in testbed.fleet if h.startswith("fleet0")]
    assert sorted(data) == sorted(expected) and len(expected) == 9
    assert all(r["stdout"] == "ok\n" and r["returncode"] == 0 for r in data.values())


def test_run_many_one_bad_host_spoils_nothing(testbed: Testbed) -> None:
    proc = cli("run-many", testbed.plain, bad_host(testbed), "--", "echo alive", timeout=90)
    assert proc.returncode == 1
    assert f"{testbed.plain}" in proc.stdout and "alive" in proc.stdout
    assert f"1 of 2 hosts failed: {bad_host(testbed)} (exit 255)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_copy_both_ways(testbed: Testbed, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    remote = f"dispatch-cli-{uuid.uuid4().hex[:8]}.bin"
    try:
        up = cli("copy", str(src), f"{testbed.plain}:{remote}")
        assert up.returncode == 0, up.stderr
        assert up.stderr == ""  # piped: no progress bar
        back = tmp_path / "back.bin"
        down = cli("copy", f"{testbed.plain}:{remote}", str(back))
        assert down.returncode == 0, down.stderr
        assert back.read_bytes() == data
    finally:
        cli("run", testbed.plain, "--", "rm", "-f", remote)


def test_copy_missing_remote_file_is_one_line(testbed: Testbed, tmp_path: Path) -> None:
    proc = cli("copy", f"{testbed.plain}:/nonexistent/dispatch-nope", str(tmp_path / "x"))
    line = assert_one_error_line(proc)
    assert line.startswith("dispatch: error: copy on")


def test_copy_shows_progress_on_a_terminal(testbed: Testbed, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(2_000_000))
    remote = f"dispatch-cli-{uuid.uuid4().hex[:8]}.bin"
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dispatch.cli", "copy", str(src), f"{testbed.plain}:{remote}"],
            stdout=subprocess.PIPE, stderr=slave, timeout=120, env=os.environ.copy(),
        )  # fmt: skip
        os.close(slave)
        tty_err = _read_pty(master)
    finally:
        os.close(master)
        cli("run", testbed.plain, "--", "rm", "-f", remote)
    assert proc.returncode == 0, tty_err
    assert "100%" in tty_err and "big.bin" in tty_err


# --- errors ---------------------------------------------------------------------------------


def test_slurm_command_on_bad_host_is_one_line(testbed: Testbed) -> None:
    proc = cli("queue", bad_host(testbed), timeout=90)
    line = assert_one_error_line(proc)
    assert line.startswith("dispatch: error: ") and bad_host(testbed) in line


def test_json_errors_are_objects_on_stdout(testbed: Testbed) -> None:
    proc = cli("--json", "queue", bad_host(testbed), timeout=90)
    data = json.loads(proc.stdout)
    assert data["exit_code"] == proc.returncode == 1
    assert bad_host(testbed) in data["error"]
    assert assert_one_error_line(proc) == f"dispatch: error: {data['error']}"
    usage = cli("--json", "status", testbed.slurm, "abc")
    assert usage.returncode == 2
    assert json.loads(usage.stdout)["exit_code"] == 2


def test_debug_shows_traceback(testbed: Testbed) -> None:
    proc = cli("--debug", "queue", bad_host(testbed), timeout=90)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr


# --- SLURM ----------------------------------------------------------------------------------


def _submit(testbed: Testbed, *extra: str) -> int:
    proc = cli("--json", "submit", testbed.slurm, "--name", "cli-test", *extra)
    assert proc.returncode == 0, proc.stderr
    job_id = json.loads(proc.stdout)["job_id"]
    assert isinstance(job_id, int)
    return job_id


def test_submit_and_wait_completed(testbed: Testbed) -> None:
    proc = cli(
        "submit", testbed.slurm, "--command", "echo hello from $SLURM_JOB_ID", "--time", "2:00",
        "--env", "GREETING=hi there", "--wait", "--poll", "1", "--wait-timeout", "180",
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("submitted job ") and "COMPLETED" in proc.stdout


def test_submit_wait_json_has_the_job_report(testbed: Testbed) -> None:
    proc = cli(
        "--json", "submit", testbed.slurm, "--command", "true", "--time", "2:00",
        "--wait", "--poll", "1", "--wait-timeout", "180", timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert isinstance(report["job_id"], int) and report["host"] == testbed.slurm
    assert report["state"] == "COMPLETED"
    assert report["steps"] and all(s["job_id"] == report["job_id"] for s in report["steps"])
    assert str(report["job_id"]) in [s["step_id"] for s in report["steps"]]
    waited = json.loads(cli("--json", "wait", testbed.slurm, str(report["job_id"])).stdout)
    assert set(waited) == set(report) and waited["job_id"] == report["job_id"]


def test_ctrl_c_during_submit_wait_says_the_job_keeps_running(testbed: Testbed) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatch.cli", "submit", testbed.slurm, "--command", "sleep 300",
         "--time", "5:00", "--name", "cli-ctrl-c", "--wait", "--poll", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    job = None
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed (and flushed) before the wait starts
        assert first.startswith("submitted job "), first + proc.communicate()[1]
        job = int(first.split()[2])
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert err == (
            f"dispatch: error: interrupted; job {job} keeps running on {testbed.slurm} "
            f"(cancel it with: dispatch cancel {testbed.slurm} {job})\n"
        )
        status = json.loads(cli("--json", "status", testbed.slurm, str(job)).stdout)
        assert status["job_id"] == job and status["state"] in ("PENDING", "RUNNING", "CONFIGURING")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if job is not None:
            cli("cancel", testbed.slurm, str(job))


def test_submit_sbcast_two_nodes(testbed: Testbed) -> None:
    proc = cli(
        "submit", testbed.slurm, "--command", "echo on $SLURMD_NODENAME", "--nodes", "2",
        "--partition", testbed.env.get("DISPATCH_TESTBED_CPU_PARTITION", "cpu"),
        "--time", "2:00", "--sbcast", "--wait", "--poll", "1", "--wait-timeout", "180",
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "COMPLETED" in proc.stdout


def test_queue_status_cancel_wait(testbed: Testbed) -> None:
    job = _submit(testbed, "--command", "sleep 300", "--time", "5:00")
    try:
        queue = cli("queue", testbed.slurm, "--user", testbed.user)
        assert queue.returncode == 0, queue.stderr
        assert queue.stdout.splitlines()[0].split()[:2] == ["JOBID", "PARTITION"]
        assert any(line.split()[0] == str(job) for line in queue.stdout.splitlines()[1:])
        jobs = json.loads(cli("--json", "queue", testbed.slurm).stdout)
        assert job in [j["job_id"] for j in jobs]

        status = cli("--json", "status", testbed.slurm, str(job))
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["job"]["state"] in ("PENDING", "RUNNING", "CONFIGURING")
        assert json.loads(status.stdout)["job_id"] == job
        # requeued once (cancelled, then requeued by hand): the text status counts it
        again = cli("run", testbed.slurm, "--", f"scancel {job} && scontrol requeue {job}")
        assert again.returncode == 0, again.stderr
        text = cli("status", testbed.slurm, str(job))
        assert text.returncode == 0, text.stderr
        assert ["restarts", "1"] in [ln.split() for ln in text.stdout.splitlines()], text.stdout
        assert json.loads(cli("--json", "status", testbed.slurm, str(job)).stdout)["job"][
            "restarts"] == 1
    finally:
        cancel = cli("--json", "cancel", testbed.slurm, str(job))
    assert cancel.returncode == 0, cancel.stderr
    cancelled = json.loads(cancel.stdout)
    assert (cancelled["job_id"], cancelled["cancelled"]) == (job, True)
    waited = cli("wait", testbed.slurm, str(job), "--poll", "1", "--timeout", "120", timeout=180)
    assert waited.returncode == 1  # not COMPLETED
    assert "CANCELLED" in waited.stdout
    assert waited.stderr == ""  # piped: no spinner
    after = cli("status", testbed.slurm, str(job))
    assert after.returncode == 0 and "CANCELLED" in after.stdout
    # Once it left squeue the report comes from sacct: the same shape, the same job_id type.
    report = json.loads(cli("--json", "status", testbed.slurm, str(job)).stdout)
    assert report["job_id"] == job and report["state"].startswith("CANCELLED")
    assert all(isinstance(s["job_id"], int) for s in report["steps"])


def test_array_elements_by_id_in_queue_status_and_cancel(testbed: Testbed) -> None:
    """Elements of an array are shown and addressed as SLURM does: ``123_4``."""
    import dispatch

    sub = dispatch.submit(dispatch.SlurmJob(name=f"cli-arr-{uuid.uuid4().hex[:6]}",
                                            command="sleep 300", time="5:00", array="0-2"),
                          testbed.slurm)
    assert sub.ok and sub.job_id is not None, sub
    job = sub.job_id
    try:
        queue = cli("queue", testbed.slurm, "--user", testbed.user)
        ids = [line.split()[0] for line in queue.stdout.splitlines()[1:]]
        assert f"{job}_2" in ids or f"{job}_[0-2]" in ids or f"{job}_[1-2]" in ids, ids
        status = json.loads(cli("--json", "status", testbed.slurm, f"{job}_1").stdout)
        assert (status["job_id"], status["raw_id"]) == (job, f"{job}_1")
        cancelled = json.loads(cli("--json", "cancel", testbed.slurm, f"{job}_1").stdout)
        assert (cancelled["job_id"], cancelled["raw_id"], cancelled["cancelled"]) == (
            job, f"{job}_1", True)
        bad = cli("status", testbed.slurm, f"{job}_x")
        assert bad.returncode == 2 and bad.stderr.rstrip().endswith(f"got '{job}_x'")
    finally:
        dispatch.cancel(job, testbed.slurm)


def test_wait_timeout_exits_124(testbed: Testbed) -> None:
    job = _submit(testbed, "--command", "sleep 300", "--time", "5:00")
    try:
        proc = cli("wait", testbed.slurm, str(job), "--poll", "1", "--timeout", "2", timeout=60)
        assert proc.returncode == 124
        assert_one_error_line(proc)
        assert "timed out" in proc.stderr
    finally:
        cli("cancel", testbed.slurm, str(job))


def test_status_of_unknown_job_is_one_line(testbed: Testbed) -> None:
    proc = cli("status", testbed.slurm, "999999")
    line = assert_one_error_line(proc)
    assert "999999" in line


def test_wait_on_unknown_job_prints_the_library_message(testbed: Testbed) -> None:
    proc = cli("wait", testbed.slurm, "999999", "--poll", "1", timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    line = assert_one_error_line(proc)  # no WARNING line before it
    assert line == (
        f"dispatch: error: no final state for job 999999 on {testbed.slurm}: "
        "neither squeue nor sacct knows it (wrong job id, or long gone)"
    )
    assert "UNKNOWN" not in proc.stdout + proc.stderr


def test_partitions(testbed: Testbed) -> None:
    proc = cli("partitions", testbed.slurm)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["PARTITION", "STATE", "NODES", "CPUS", "NODELIST"]
    expected = testbed.env["DISPATCH_TESTBED_PARTITIONS"].split()
    assert sorted(line.split()[0].rstrip("*") for line in lines[1:]) == sorted(expected)
    parts = json.loads(cli("--json", "partitions", testbed.slurm).stdout)
    data = {p["name"].rstrip("*"): p for p in parts}
    gpu = data[testbed.env["DISPATCH_TESTBED_GPU_PARTITION"]]
    assert sorted(gpu["nodes"]) == sorted(testbed.env["DISPATCH_TESTBED_GPU_NODES"].split())
    bad = cli("partitions", bad_host(testbed), timeout=90)
    line = assert_one_error_line(bad)  # the reason, without a WARNING line before it
    assert line.startswith(f"dispatch: error: sinfo on {bad_host(testbed)} failed: ")


def test_gpus_on_a_failing_host_is_an_error_not_no_gpus(testbed: Testbed) -> None:
    proc = cli("gpus", bad_host(testbed), "gpu", timeout=90)
    assert proc.returncode == 1 and proc.stdout == ""
    assert assert_one_error_line(proc).startswith("dispatch: error: sinfo on ")


def test_nodes(testbed: Testbed) -> None:
    proc = cli("nodes", testbed.slurm)
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()[1:]]
    assert names == testbed.env["DISPATCH_TESTBED_NODES"].split()
    gpu_part = testbed.env["DISPATCH_TESTBED_GPU_PARTITION"]
    data = json.loads(cli("--json", "nodes", testbed.slurm, "--partition", gpu_part).stdout)
    assert sorted(data) == sorted(testbed.env["DISPATCH_TESTBED_GPU_NODES"].split())
    node = next(iter(data.values()))
    assert node["cpus_total"] == int(testbed.env["DISPATCH_TESTBED_NODE_CPUS"])
    assert any(g["name"] == "gpu" for g in node["gres"])


def test_gpus(testbed: Testbed) -> None:
    part = testbed.env["DISPATCH_TESTBED_GPU_PARTITION"]
    gpu_type = testbed.env["DISPATCH_TESTBED_GPU_TYPE"]
    data = json.loads(cli("--json", "gpus", testbed.slurm, part, "--type", gpu_type).stdout)
    per_node = int(testbed.env["DISPATCH_TESTBED_GPUS_PER_NODE"])
    gpu_nodes = set(testbed.env["DISPATCH_TESTBED_GPU_NODES"].split())
    assert {d["node"] for d in data} <= gpu_nodes
    assert all(0 < d["available"] <= per_node for d in data)
    none = cli("gpus", testbed.slurm, part, "--type", "no-such-gpu")
    assert none.returncode == 0 and none.stdout.startswith("no free no-such-gpu GPUs")


# --- config, solver, repl ---------------------------------------------------------------


def test_solve_testbed_config(testbed: Testbed) -> None:
    proc = cli("--json", "solve", str(TESTBED_YAML), "--chip", "h100", "--chips", "4")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["host_name"] and data["result"]["count"] >= 4
    human = cli("solve", str(TESTBED_YAML), "--chip", "h100", "--chips", "4")
    assert human.returncode == 0 and "host" in human.stdout and "h100" in human.stdout


def test_solve_impossible_request_is_one_line(testbed: Testbed) -> None:
    proc = cli("solve", str(TESTBED_YAML), "--chip", "h100", "--chips", "100000")
    assert_one_error_line(proc)


def test_solve_missing_config_is_one_line(testbed: Testbed, tmp_path: Path) -> None:
    proc = cli("solve", str(tmp_path / "nope.yaml"), "--chip", "h100", "--chips", "4")
    assert assert_one_error_line(proc).endswith("does not exist")


def test_repl_help_lists_its_options(testbed: Testbed) -> None:
    proc = cli("repl", "--help")
    assert proc.returncode == 0 and "--port" in proc.stdout and "--detach" in proc.stdout


def _read_pty(master: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_wait_shows_spinner_on_a_terminal(testbed: Testbed) -> None:
    job = _submit(testbed, "--command", "sleep 2", "--time", "2:00")
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dispatch.cli", "wait", testbed.slurm, str(job), "--poll", "1"],
            stdout=subprocess.PIPE, stderr=slave, text=True, timeout=120, env=os.environ.copy(),
        )  # fmt: skip
        os.close(slave)
        tty_err = _read_pty(master)
    finally:
        os.close(master)
    assert proc.returncode == 0, tty_err
    assert f"waiting for job {job} on {testbed.slurm}" in tty_err
    assert "COMPLETED" in proc.stdout


def test_submit_packed_runs_in_the_shipped_code(testbed: Testbed, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    marker = uuid.uuid4().hex
    (repo / "hello.txt").write_text(f"packed {marker}\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "hello.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    home = cli("run", testbed.slurm, "--", "pwd").stdout.strip()
    out = f"{home}/dispatch-cli-packed-{marker}.out"
    try:
        proc = cli(
            "submit", testbed.slurm, "--command", "cat hello.txt", "--packed", "--repo",
            str(repo), "--output", out, "--time", "2:00", "--wait", "--poll", "1",
            "--wait-timeout", "180", timeout=240,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert cli("run", testbed.slurm, "--", "cat", out).stdout == f"packed {marker}\n"
    finally:
        cli("run", testbed.slurm, "--", "rm", "-f", out)


def test_repl_holds_the_tunnel_until_ctrl_c(testbed: Testbed, tmp_path: Path) -> None:
    import signal
    import socket
    import time
    import urllib.request

    jupyter_venv = os.environ.get("DISPATCH_TESTBED_JUPYTER", "/opt/dispatch-testbed/jupyter")
    check = subprocess.run([str(ROOT / "scripts" / "install-jupyter"), "--check"], check=False)
    assert check.returncode == 0, "run scripts/install-jupyter (scripts/testbed up does)"
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "mod.py").write_text("VALUE = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "mod.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    home = cli("run", testbed.plain, "--", "pwd").stdout.strip()
    base = f"{home}/.dispatch-tests/cli-repl-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "repl.yaml"
    config.write_text(
        f"clusters:\n  tb: {{root: {base}/root, work: {base}/work}}\n"
        f"hosts:\n  box: {{type: plain, ssh: {testbed.plain}, cluster: tb}}\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatch.cli", "repl", str(config), "--chip", "cpu",
         "--chips", "0", "--port", str(port), "--repo", str(repo), "--name", "clinb",
         "--jupyter-command", f"{jupyter_venv}/bin/jupyter server --no-browser --port 0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
        cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        local_url = None
        deadline = time.monotonic() + 120
        while local_url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("local_url"):
                local_url = line.split()[1]
        assert local_url, proc.stderr.read() if proc.poll() is not None else "no local_url"
        token = local_url.split("token=")[1]
        status_url = f"http://127.0.0.1:{port}/api/status?token={token}"
        with urllib.request.urlopen(status_url, timeout=10) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "session ended" in err and "Traceback" not in err
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # the tunnel is closed
        left = cli("run", testbed.plain, "--", "pgrep", "-f", "'[c]linb'")
        assert left.stdout.strip() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cli("run", testbed.plain, "--", "rm", "-rf", base)
