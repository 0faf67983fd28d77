"""Pure parts of dispatch.jupyter (plan, scripts, slurm, api): work dirs, launch/stop
scripts, picking the server PID, and the Ctrl-C path of a SLURM submission."""

from __future__ import annotations

import asyncio
import shlex
import subprocess

import pytest

from dispatch.errors import InvalidValueError
from dispatch.jupyter import api as repl
from dispatch.jupyter import plan, scripts
from dispatch.jupyter import slurm as jslurm
from dispatch.placement.hardware import Cluster, JobSpec
from dispatch.results import RunResult
from dispatch.slurm.models import SlurmResult


def test_work_dir_layout() -> None:
    cluster = Cluster("c", root="/r", work="/w/")
    assert plan.work_dir_for(cluster, JobSpec("nb", project="p", group="g")) == "/w/p/g/nb"
    assert plan.work_dir_for(cluster, JobSpec("nb", project="p")) == "/w/p/nb"
    assert plan.work_dir_for(cluster, JobSpec("nb")) == "/w/nb"


def test_result_fields_and_order() -> None:
    fields = [f.name for f in repl.ReplResult.__dataclass_fields__.values()]
    assert fields == [
        "ok", "is_slurm", "selected_host", "ssh_host", "log_path", "job_id",
        "allocated_hostname", "remote_pid", "remote_port", "token", "remote_url", "local_port",
        "local_url", "tunnel_pid", "cluster_name", "cluster_root", "cluster_mount", "work_dir",
        "mailbox_job_id", "stderr", "session_id", "gpus",
    ]
    r = repl.ReplResult(False, False, "h", "ssh", "/log")
    assert r.stderr == "" and r.job_id is None
    with pytest.raises(AttributeError):
        r.ok = True  # type: ignore[misc]


PS_SS = """\
ss LISTEN 0 128 127.0.0.1:22022 0.0.0.0:* users:(("sshd",pid=3741,fd=3))
ss LISTEN 0 128 127.0.0.1:40765 0.0.0.0:* users:(("jupyter-server",pid=502,fd=6))
ps   500 bash -l /logs/nb-1.bootstrap.sh
ps   501 bash -c /opt/j/bin/jupyter server --port 0
ps   502 /opt/j/bin/python /opt/j/bin/jupyter-server --port 0
"""


def test_pick_server_pid() -> None:
    assert scripts.pick_server_pid(PS_SS, 40765, 500) == 502
    # ss unavailable: the last Jupyter-looking process of the session that is not a shell
    no_ss = "\n".join(line for line in PS_SS.splitlines() if line.startswith("ps"))
    assert scripts.pick_server_pid(no_ss, 40765, 500) == 502
    # a listener outside the session is never picked
    foreign = PS_SS.replace("pid=502", "pid=999")
    assert scripts.pick_server_pid(foreign, 40765, 500) == 502
    assert scripts.pick_server_pid("", 40765, 500) == 500


def test_scripts_quote_paths_and_parse_in_bash() -> None:
    launch = scripts.launch_command("/w/a b", "/l/x'y.bootstrap.sh", "/l/x'y.log")
    assert "'/w/a b'" in launch and "setsid nohup bash -l" in launch
    assert launch.endswith("& echo $!")
    stop = scripts.stop_script(123, "x'y.bootstrap.sh", 1.0)
    for script in (launch, stop, scripts.pid_probe(77)):
        subprocess.run(["bash", "-n", "-c", script], check=True)
    assert shlex.quote("x'y.bootstrap.sh") in stop


def test_probe_and_poll_scripts_parse_in_bash() -> None:
    for script in (scripts.log_poll_command("/l/x'y.log", 12, scripts.slurm_alive_check(7)),
                   scripts.plain_alive_check(77), scripts.node_address_command("n'1"),
                   scripts.make_dir_command("~/a b")):
        subprocess.run(["bash", "-n", "-c", script], check=True)
    assert shlex.quote("n'1") in scripts.node_address_command("n'1")
    assert scripts.make_dir_command("~/a b") == "mkdir -p \"$HOME\"'/a b'"


def test_stop_script_refuses_foreign_process() -> None:
    # A process in its own session whose leader is no bootstrap and not Jupyter: untouched.
    victim = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        proc = subprocess.run(
            ["bash", "-c", scripts.stop_script(victim.pid, "nb.bootstrap.sh", 0.1)],
            capture_output=True, text=True, check=False, timeout=30)
        assert (proc.returncode, proc.stdout.strip()) == (3, "foreign"), proc
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_stop_script_stops_a_bootstrap_session() -> None:
    leader = subprocess.Popen(
        ["bash", "-c", "sleep 30 & wait", "x.bootstrap.sh"], start_new_session=True)
    try:
        proc = subprocess.run(
            ["bash", "-c", scripts.stop_script(leader.pid, "x.bootstrap.sh", 0.5)],
            capture_output=True, text=True, check=False, timeout=30)
        assert proc.stdout.strip() == "stopped", proc
        assert leader.wait(timeout=10) is not None
        left = subprocess.run(["ps", "-o", "stat=", "-s", str(leader.pid)],
                              capture_output=True, text=True, check=False)
        assert [s for s in left.stdout.split() if not s.startswith("Z")] == []
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()


async def test_interrupted_submission_cancels_its_job(monkeypatch: pytest.MonkeyPatch) -> None:
    cancelled: list[int] = []
    started = asyncio.Event()

    async def slow_submit() -> SlurmResult:
        started.set()
        await asyncio.sleep(0.2)
        return SlurmResult(42, RunResult(0, "42\n", ""))

    async def fake_cancel(job_id: int, host: str, timeout: float | None = None) -> RunResult:
        cancelled.append(job_id)
        return RunResult(0, "", "")

    monkeypatch.setattr(jslurm, "cancel", fake_cancel)
    task = asyncio.ensure_future(jslurm._submit_or_cancel(slow_submit(), "h", 5.0))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == [42]


@pytest.mark.parametrize("port", [0, 70000, "8888", True])
async def test_bad_local_port_raises(port: object) -> None:
    from dispatch.placement import ClusterConfig, DispatchConfig, PlainHostConfig
    from dispatch.placement.hardware import HardwareRequest

    cfg = DispatchConfig(clusters={"c": ClusterConfig(root="/r", work="/w")},
                         hosts={"h": PlainHostConfig(ssh="h", cluster="c")})
    with pytest.raises(InvalidValueError, match="local_port"):
        await repl.dispatch_repl(JobSpec("x"), HardwareRequest(min_chips=0), cfg, port)  # type: ignore[arg-type]


async def test_local_port_in_use_fails_before_any_remote_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from dispatch.placement import ClusterConfig, DispatchConfig, PlainHostConfig
    from dispatch.placement.hardware import HardwareRequest

    calls: list[str] = []

    async def no_solve(*args: object, **kwargs: object) -> None:
        calls.append("solve")
        raise AssertionError("solve must not run when the local port is taken")

    monkeypatch.setattr(repl, "solve_or_raise", no_solve)
    cfg = DispatchConfig(clusters={"c": ClusterConfig("/r", "/w")},
                         hosts={"h": PlainHostConfig("h", "c", chips={"h100": 1})})
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InvalidValueError, match=f"local_port {port} is already in use"):
            await repl.dispatch_repl(JobSpec("nb"), HardwareRequest("h100"), cfg, port,
                                     sync_enabled=True)
    assert calls == []


def test_port_in_time_wait_counts_as_free() -> None:
    """Re-running a session on the same local port right after ending one must work."""
    import socket

    from dispatch.jupyter.plan import local_port_free as _local_port_free

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    server_side, _ = listener.accept()
    assert not _local_port_free(port)  # listening: in use
    server_side.close()  # the server closes first: its end goes to TIME_WAIT
    client.close()
    listener.close()
    assert _local_port_free(port)
