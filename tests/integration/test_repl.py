"""dispatch_repl / end_repl against real Jupyter on the testbed (plain host and SLURM).

Jupyter comes from the venv ``scripts/install-jupyter`` puts at /opt/dispatch-testbed/jupyter
(no download per test). Every check talks HTTP to the notebook through the tunnel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatch.jupyter import api as repl_api
from dispatch.jupyter.api import ReplResult, dispatch_repl, end_repl
from dispatch.placement import (
    ClusterConfig,
    DispatchConfig,
    PlainHostConfig,
    SlurmHostConfig,
)
from dispatch.placement.hardware import HardwareRequest, JobSpec
from dispatch.slurm.job import SlurmJob
from dispatch.slurm.query import cancel, status
from dispatch.slurm.submission import submit
from dispatch.ssh import Pool, close_tunnel, forward_port
from dispatch.ssh.commands import run

from ..conftest import Testbed
from ..support.local import commit_tree
from ..support.local import free_port as _free_port
from ..support.remote import until

JUPYTER_VENV = os.environ.get("DISPATCH_TESTBED_JUPYTER", "/opt/dispatch-testbed/jupyter")
JUPYTER = f"{JUPYTER_VENV}/bin/jupyter server --no-browser --port 0"


@pytest.fixture(scope="module", autouse=True)
def _jupyter_installed(testbed: Testbed) -> None:
    root = Path(__file__).resolve().parents[2]
    check = subprocess.run([str(root / "scripts" / "install-jupyter"), "--check"],
                           capture_output=True, check=False)
    assert check.returncode == 0, (
        f"Jupyter is not installed in {JUPYTER_VENV}: run scripts/install-jupyter "
        "(scripts/testbed up does)")


@pytest.fixture(scope="module")
async def remote_base(testbed: Testbed) -> AsyncIterator[str]:
    """A fresh directory in the test user's home (plain host and SLURM nodes see it)."""
    home = (await run("echo $HOME", testbed.plain)).stdout.strip()
    assert home.startswith("/"), home
    path = f"{home}/.dispatch-tests/repl-{uuid.uuid4().hex[:10]}"
    assert (await run(["mkdir", "-p", path], testbed.plain)).ok
    yield path
    await run(["rm", "-rf", path], testbed.plain)


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    return commit_tree(tmp_path / "repo", {"README.md": "hello\n", "pkg/mod.py": "VALUE = 1\n"})


def _plain_config(testbed: Testbed, base: str) -> DispatchConfig:
    return DispatchConfig(
        clusters={"tb": ClusterConfig(root=f"{base}/root", work=f"{base}/work",
                                      log=f"{base}/logs")},
        hosts={"box": PlainHostConfig(ssh=testbed.plain, cluster="tb")},
    )


def _slurm_config(testbed: Testbed, base: str) -> DispatchConfig:
    gpu_type = testbed.env.get("DISPATCH_TESTBED_GPU_TYPE", "h100")
    return DispatchConfig(
        clusters={"tbs": ClusterConfig(root=f"{base}/root", work=f"{base}/swork",
                                       log=f"{base}/slogs", share=f"{base}/share")},
        hosts={"cluster": SlurmHostConfig(
            ssh=testbed.slurm, cluster="tbs",
            partitions=[testbed.env.get("DISPATCH_TESTBED_GPU_PARTITION", "gpu")],
            cpu_partitions=[testbed.env.get("DISPATCH_TESTBED_CPU_PARTITION", "cpu")],
            mem="500M",
        )},
        gres_mapping={gpu_type: gpu_type},
    )


def _gpu_request(testbed: Testbed) -> HardwareRequest:
    return HardwareRequest(chip=testbed.env.get("DISPATCH_TESTBED_GPU_TYPE", "h100"),
                           min_chips=1)


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _api_status(res: ReplResult, token: str | None) -> int:
    assert res.local_url is not None
    base = res.local_url.split("?", 1)[0]
    root = base[: base.index("/", len("http://"))] if base.count("/") > 2 else base
    return _http_status(f"{root}/api/status" + (f"?token={token}" if token else ""))


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


async def _alive(host: str, pid: int) -> bool:
    return (await run(f"kill -0 {pid}", host, login_shell=False)).ok


async def _remote_cat(host: str, path: str) -> str | None:
    res = await run(["cat", path], host, login_shell=False)
    return res.stdout if res.ok else None


# --- plain host ------------------------------------------------------------------------


async def test_plain_repl_serves_through_tunnel_and_ends_cleanly(
    testbed: Testbed, remote_base: str, git_repo: Path
) -> None:
    spec = JobSpec("nb", project="proj", group="grp")
    port = _free_port()
    res = await dispatch_repl(
        spec, HardwareRequest(min_chips=0), _plain_config(testbed, remote_base), port,
        jupyter_command=JUPYTER, repo_path=git_repo, startup_timeout=60,
    )
    try:
        assert res.ok, res.stderr
        assert not res.is_slurm and res.selected_host == "box" and res.ssh_host == testbed.plain
        assert res.work_dir == f"{remote_base}/work/proj/grp/nb"
        assert res.log_path == f"{remote_base}/logs/{spec.full_name}.log"
        assert res.cluster_name == "tb" and res.cluster_root == f"{remote_base}/root"
        assert res.mailbox_job_id == spec.id and res.job_id is None
        assert res.local_port == port and res.tunnel_pid == os.getpid()
        assert res.remote_port and res.remote_pid and res.token
        assert res.gpus == ()  # CPU-only: no GPU claimed or pinned
        assert res.local_url == f"http://localhost:{port}/?token={res.token}"
        assert res.remote_url is not None and f":{res.remote_port}/" in res.remote_url

        assert await asyncio.to_thread(_api_status, res, res.token) == 200
        assert await asyncio.to_thread(_api_status, res, "wrong" + res.token) == 403
        assert await asyncio.to_thread(_api_status, res, None) == 403

        # The code is in the work dir, and the server runs there.
        assert await _remote_cat(testbed.plain, f"{res.work_dir}/pkg/mod.py") == "VALUE = 1\n"
        cwd = await run(f"readlink /proc/{res.remote_pid}/cwd", testbed.plain)
        assert cwd.stdout.strip() == res.work_dir
        # remote_pid is the notebook server itself, listening on remote_port.
        args = await run(f"ps -o args= -p {res.remote_pid}", testbed.plain)
        assert "jupyter" in args.stdout, args.stdout
        log_text = await _remote_cat(testbed.plain, res.log_path)
        assert log_text is not None and f":{res.remote_port}/" in log_text
        assert res.token not in log_text  # given by env, never printed
    finally:
        ended = await end_repl(res)
    assert ended.ok, ended.stderr
    assert not await _alive(testbed.plain, res.remote_pid)
    assert not _port_open(port)
    # Nothing else from the session is left either (bootstrap, kernels).
    left = await run(["pgrep", "-f", spec.full_name], testbed.plain, login_shell=False)
    assert left.stdout.strip() == "", left.stdout
    # Ending twice is harmless.
    assert (await end_repl(res)).ok


async def test_plain_repl_start_failure_is_fast_with_log_tail(
    testbed: Testbed, remote_base: str, git_repo: Path
) -> None:
    spec = JobSpec("broken")
    port = _free_port()
    started = time.monotonic()
    res = await dispatch_repl(
        spec, HardwareRequest(min_chips=0), _plain_config(testbed, remote_base), port,
        jupyter_command=f"{JUPYTER} --notanoption", repo_path=git_repo, startup_timeout=120,
    )
    elapsed = time.monotonic() - started
    assert not res.ok
    assert elapsed < 60, f"failure took {elapsed:.1f}s: not detected before startup_timeout"
    assert "starting Jupyter failed" in res.stderr
    assert res.log_path in res.stderr
    assert "--notanoption" in res.stderr  # the log's tail
    assert res.local_url is None and res.tunnel_pid is None
    assert not _port_open(port)
    left = await run(["pgrep", "-f", spec.full_name], testbed.plain, login_shell=False)
    assert left.stdout.strip() == "", left.stdout


async def test_plain_repl_start_timeout_kills_the_session(
    testbed: Testbed, remote_base: str, git_repo: Path
) -> None:
    spec = JobSpec("silent")
    res = await dispatch_repl(
        spec, HardwareRequest(min_chips=0), _plain_config(testbed, remote_base), _free_port(),
        jupyter_command="echo waiting; sleep 600", repo_path=git_repo, startup_timeout=3,
    )
    assert not res.ok
    assert "did not print its URL within startup_timeout" in res.stderr
    assert "waiting" in res.stderr
    left = await run(["pgrep", "-f", spec.full_name], testbed.plain, login_shell=False)
    assert left.stdout.strip() == "", left.stdout


async def test_plain_repl_sync_ships_local_edits(
    testbed: Testbed, remote_base: str, git_repo: Path
) -> None:
    spec = JobSpec("synced")
    res = await dispatch_repl(
        spec, HardwareRequest(min_chips=0), _plain_config(testbed, remote_base), _free_port(),
        jupyter_command=JUPYTER, repo_path=git_repo, sync_enabled=True, sync_interval=0.3,
    )
    try:
        assert res.ok, res.stderr
        target = f"{res.work_dir}/pkg/mod.py"
        (git_repo / "pkg" / "mod.py").write_text("VALUE = 2\n")
        (git_repo / "untracked.py").write_text("X = 1\n")

        async def edited() -> bool:
            return await _remote_cat(testbed.plain, target) == "VALUE = 2\n"

        await until(edited, timeout=20)
        # Untracked files are not synced (the same round saw them and skipped them).
        assert await _remote_cat(testbed.plain, f"{res.work_dir}/untracked.py") is None
        # Once tracked they are.
        subprocess.run(["git", "add", "untracked.py"], cwd=git_repo, check=True)

        async def added() -> bool:
            return await _remote_cat(testbed.plain, f"{res.work_dir}/untracked.py") == "X = 1\n"

        await until(added, timeout=20)
    finally:
        assert (await end_repl(res)).ok


async def test_sessions_with_equal_results_end_only_their_own_tunnel(testbed: Testbed) -> None:
    """Two sessions whose results agree on every documented field (the old registry, keyed
    by the result's value, let the second overwrite the first) each keep their own tunnel:
    ending one closes its tunnel only, however often it is ended."""
    p1, p2 = _free_port(), _free_port()
    t1 = await forward_port(testbed.plain, p1, testbed.ssh_port, remote_host="127.0.0.1")
    t2 = await forward_port(testbed.plain, p2, testbed.ssh_port, remote_host="127.0.0.1")
    assert t1.ok and t2.ok, t1.stderr + t2.stderr
    same = dict(ok=True, is_slurm=False, selected_host="box", ssh_host=testbed.plain,
                log_path="/nonexistent/nb.log", local_port=p1, tunnel_pid=os.getpid())
    first = ReplResult(**same, session_id="first")  # type: ignore[arg-type]
    second = ReplResult(**same, session_id="second")  # type: ignore[arg-type]
    assert dataclasses.replace(first, session_id=None) == dataclasses.replace(
        second, session_id=None)
    repl_api._remember(first, t1)
    repl_api._remember(second, t2)
    try:
        assert (await end_repl(first)).ok
        assert not _port_open(p1)
        assert _port_open(p2)  # the other session's tunnel is untouched
        assert (await end_repl(first)).ok  # ending again: still only its own (gone) tunnel
        assert _port_open(p2)
        assert (await end_repl(second)).ok
        assert not _port_open(p2)
    finally:
        await close_tunnel(t1)
        await close_tunnel(t2)


async def test_closing_the_pool_stops_its_sessions(
    testbed: Testbed, remote_base: str, git_repo: Path
) -> None:
    """A session's state lives on the pool it started in: closing the pool stops the file
    sync and the tunnel (nothing left behind in a module global); end_repl still stops the
    notebook afterwards."""
    port = _free_port()
    async with Pool() as pool:
        res = await dispatch_repl(
            JobSpec("pooled"), HardwareRequest(min_chips=0), _plain_config(testbed, remote_base),
            port, jupyter_command=JUPYTER, repo_path=git_repo, sync_enabled=True,
            sync_interval=0.3,
        )
        try:
            assert res.ok, res.stderr
            assert res.session_id
            live = pool.registry.peek(repl_api._SESSIONS)
            assert live is not None and set(live) == {res.session_id}
            syncer = live[res.session_id].syncer
            assert syncer is not None and syncer.running
            assert _port_open(port)
        except BaseException:
            await end_repl(res)
            raise
    assert not syncer.running
    assert pool.registry.peek(repl_api._SESSIONS) is None
    assert not _port_open(port)
    ended = await end_repl(res)
    assert ended.ok, ended.stderr
    assert res.remote_pid is not None
    assert not await _alive(testbed.plain, res.remote_pid)


# --- SLURM ------------------------------------------------------------------------------


async def _job_gone(host: str, job_id: int) -> bool:
    st = await status(job_id, host)
    return st.ssh_result.ok and (st.job is None or st.job.state not in ("RUNNING", "PENDING",
                                                                        "CONFIGURING"))


async def test_slurm_repl_tunnels_to_the_compute_node_and_cancels(
    testbed: Testbed, remote_base: str, git_repo: Path
) -> None:
    spec = JobSpec("snb", project="p")
    port = _free_port()
    res = await dispatch_repl(
        spec, _gpu_request(testbed), _slurm_config(testbed, remote_base), port,
        check_availability=False, jupyter_command=f"{JUPYTER} --ip 0.0.0.0",
        repo_path=git_repo, startup_timeout=90, slurm_wait_timeout=120,
        slurm_poll_interval=0.5, time_limit="30:00", sync_enabled=True, sync_interval=0.3,
    )
    try:
        assert res.ok, res.stderr
        assert res.is_slurm and res.job_id is not None
        nodes = testbed.env.get("DISPATCH_TESTBED_GPU_NODES", "node1 node2").split()
        assert res.allocated_hostname in nodes
        assert res.remote_url == (
            f"http://{res.allocated_hostname}:{res.remote_port}/?token={res.token}")
        assert res.local_url == f"http://localhost:{port}/?token={res.token}"
        assert res.work_dir == f"{remote_base}/swork/p/snb"
        assert await asyncio.to_thread(_api_status, res, res.token) == 200
        assert await asyncio.to_thread(_api_status, res, "bad") == 403
        st = await status(res.job_id, testbed.slurm)
        assert st.job is not None and st.job.state == "RUNNING"
        # The job got the solved partition and a GPU.
        show = await run(["scontrol", "show", "job", str(res.job_id)], testbed.slurm)
        assert "Partition=gpu" in show.stdout and "gres/gpu" in show.stdout, show.stdout
        target = f"{res.work_dir}/pkg/mod.py"
        assert await _remote_cat(testbed.slurm, target) == "VALUE = 1\n"
        # sync_enabled: the job's work dir (shared with the login node) follows local edits.
        (git_repo / "pkg" / "mod.py").write_text("VALUE = 3\n")

        async def edited() -> bool:
            return await _remote_cat(testbed.slurm, target) == "VALUE = 3\n"

        await until(edited, timeout=20)
    finally:
        ended = await end_repl(res)
    assert ended.ok, ended.stderr
    assert not _port_open(port)
    assert res.job_id is not None and res.remote_port is not None
    await until(lambda: _job_gone(testbed.slurm, res.job_id), timeout=60)  # type: ignore[arg-type]

    async def server_down() -> bool:
        return not await asyncio.to_thread(_port_open, res.remote_port)  # type: ignore[arg-type]

    await until(server_down, timeout=30)
    # Ending twice is harmless: the job is already gone.
    again = await end_repl(res)
    assert again.ok, again.stderr


async def test_slurm_repl_start_failure_cancels_job(
    testbed: Testbed, remote_base: str, git_repo: Path
) -> None:
    res = await dispatch_repl(
        JobSpec("sbroken"), _gpu_request(testbed), _slurm_config(testbed, remote_base),
        _free_port(), check_availability=False, jupyter_command=f"{JUPYTER} --notanoption",
        repo_path=git_repo, startup_timeout=90, slurm_wait_timeout=120,
        slurm_poll_interval=0.5, time_limit="10:00",
    )
    assert not res.ok
    assert "--notanoption" in res.stderr and res.log_path in res.stderr
    assert res.job_id is not None and res.allocated_hostname is not None
    job_id = res.job_id
    await until(lambda: _job_gone(testbed.slurm, job_id), timeout=30)


async def _blockers(testbed: Testbed, base: str) -> list[int]:
    """Jobs holding every GPU of the GPU partition (so a GPU request has to queue)."""
    gpu_type = testbed.env.get("DISPATCH_TESTBED_GPU_TYPE", "h100")
    per_node = int(testbed.env.get("DISPATCH_TESTBED_GPUS_PER_NODE", "4"))
    nodes = testbed.env.get("DISPATCH_TESTBED_GPU_NODES", "node1 node2").split()
    ids = []
    for i, _ in enumerate(nodes):
        job = SlurmJob(name=f"repl-blocker-{i}", command="sleep 300",
                       partition=testbed.env.get("DISPATCH_TESTBED_GPU_PARTITION", "gpu"),
                       gpus_per_node=per_node, gpu_type=gpu_type, mem="100M", time="10:00",
                       output=f"{base}/blocker-%j.out")
        res = await submit(job, testbed.slurm)
        assert res.job_id is not None, res.ssh_result.stderr
        ids.append(res.job_id)
    return ids


async def test_slurm_repl_cancelled_while_queued_cancels_job(
    testbed: Testbed, remote_base: str, git_repo: Path
) -> None:
    blockers = await _blockers(testbed, remote_base)
    spec = JobSpec("squeued")
    try:
        per_node = int(testbed.env.get("DISPATCH_TESTBED_GPUS_PER_NODE", "4"))
        request = HardwareRequest(chip=testbed.env.get("DISPATCH_TESTBED_GPU_TYPE", "h100"),
                                  min_chips=per_node)
        task = asyncio.ensure_future(dispatch_repl(
            spec, request, _slurm_config(testbed, remote_base), _free_port(),
            check_availability=False, jupyter_command=JUPYTER, repo_path=git_repo,
            slurm_poll_interval=0.5, time_limit="10:00",
        ))

        async def queued() -> int | None:
            q = await run(["squeue", "-h", "-n", spec.full_name, "-o", "%i %T"], testbed.slurm)
            fields = q.stdout.split()
            return int(fields[0]) if fields and fields[1] == "PENDING" else None

        job_id = await until(queued, timeout=60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: _job_gone(testbed.slurm, job_id), timeout=30)
        st = await status(job_id, testbed.slurm)
        assert st.job is None or st.job.state == "CANCELLED", st
    finally:
        for job_id in blockers:
            await cancel(job_id, testbed.slurm)


async def test_slurm_wait_timeout_cancels_job(
    testbed: Testbed, remote_base: str, git_repo: Path
) -> None:
    blockers = await _blockers(testbed, remote_base)
    try:
        per_node = int(testbed.env.get("DISPATCH_TESTBED_GPUS_PER_NODE", "4"))
        request = HardwareRequest(chip=testbed.env.get("DISPATCH_TESTBED_GPU_TYPE", "h100"),
                                  min_chips=per_node)
        res = await dispatch_repl(
            JobSpec("stimeout"), request, _slurm_config(testbed, remote_base), _free_port(),
            check_availability=False, jupyter_command=JUPYTER, repo_path=git_repo,
            slurm_wait_timeout=3, slurm_poll_interval=0.5, time_limit="10:00",
        )
        assert not res.ok
        assert "waiting for the allocation failed" in res.stderr, res.stderr
        assert "timed out" in res.stderr
        assert res.job_id is not None and res.allocated_hostname is None
        job_id = res.job_id
        await until(lambda: _job_gone(testbed.slurm, job_id), timeout=30)
    finally:
        for job_id in blockers:
            await cancel(job_id, testbed.slurm)



async def test_plain_repl_detached_tunnel_ended_from_another_process(
    testbed: Testbed, remote_base: str, git_repo: Path
) -> None:
    """A session outlives its caller (detached tunnel) and can be ended from a fresh process
    that only has the result's fields (what a CLI would do)."""
    port = _free_port()
    (git_repo / "notes.txt").write_text("uncommitted\n")
    res = await dispatch_repl(
        JobSpec("detached"), HardwareRequest(min_chips=0), _plain_config(testbed, remote_base),
        port, jupyter_command=JUPYTER, repo_path=git_repo, detached_tunnel=True, dirty=True,
    )
    assert res.ok, res.stderr
    # dirty=True shipped the uncommitted file too
    assert await _remote_cat(testbed.plain, f"{res.work_dir}/notes.txt") == "uncommitted\n"
    assert res.tunnel_pid is not None and res.tunnel_pid != os.getpid()
    assert await asyncio.to_thread(_api_status, res, res.token) == 200
    fields = dataclasses.asdict(res)
    script = (
        "import json, sys\n"
        "from dispatch._blocking import run_blocking\n"
        "from dispatch.jupyter.api import ReplResult, end_repl\n"
        "r = run_blocking(end_repl(ReplResult(**json.loads(sys.argv[1]))))\n"
        "print(r.returncode, r.stderr)\n"
        "sys.exit(r.returncode)\n"
    )
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script, json.dumps(fields)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not _port_open(port)
    assert res.remote_pid is not None
    assert not await _alive(testbed.plain, res.remote_pid)
