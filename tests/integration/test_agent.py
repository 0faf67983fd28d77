"""``dispatch agent``: one per-user process owning the pool, against the testbed's sshd.

Every test starts its own agent in a private runtime dir (``XDG_RUNTIME_DIR`` set to a
fresh directory under /tmp, short enough for a Unix socket path) and the fixture makes
sure no agent outlives the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch.agent import client, paths, server

from ..conftest import ROOT, Testbed
from ..support.faults import kill_all, sshd_pids_serving

PY = sys.executable


class AgentEnv:
    """A private runtime dir and the environment that points clients at it."""

    def __init__(self, run_dir: Path, env: dict[str, str]) -> None:
        self.run_dir = run_dir
        self.env = env
        self.pids: set[int] = set()

    @property
    def dir(self) -> Path:
        return self.run_dir / "dispatch"

    @property
    def sock(self) -> Path:
        return self.dir / "agent.sock"

    def cli(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [PY, "-m", "dispatch.cli", *args], capture_output=True, text=True,
            timeout=timeout, env={**self.env, **env},
        )  # fmt: skip
        return proc

    def start(self, *extra: str) -> int:
        proc = self.cli("--json", "agent", "start", *extra)
        assert proc.returncode == 0, proc.stderr
        pid = int(json.loads(proc.stdout)["pid"])
        self.pids.add(pid)
        return pid

    def status(self) -> dict[str, Any]:
        proc = self.cli("--json", "agent", "status")
        assert proc.returncode == 0, proc.stderr
        st: dict[str, Any] = json.loads(proc.stdout)
        return st

    def host_stats(self, host: str) -> dict[str, Any]:
        rows = [h for p in self.status()["pools"] for h in p["hosts"] if h["host"] == host]
        assert len(rows) == 1, rows
        row: dict[str, Any] = rows[0]
        return row

    def script(self, code: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PY, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**self.env, **env},
        )  # fmt: skip


def alive(pid: int) -> bool:
    return client._alive(pid)


def wait_for(condition: Any, what: str, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def agent(testbed: Testbed, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentEnv]:
    with agent_env(monkeypatch) as a:
        yield a


@contextlib.contextmanager
def agent_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentEnv]:
    """A private runtime dir for agents (this process's and its children's); every agent
    started there is stopped (or killed, failing the test) when the block ends."""
    run_dir = Path(tempfile.mkdtemp(prefix="dag-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run_dir))
    monkeypatch.delenv("DISPATCH_AGENT", raising=False)
    env = os.environ.copy()
    a = AgentEnv(run_dir, env)
    try:
        yield a
    finally:
        pid_file = a.dir / "agent.pid"
        with contextlib.suppress(OSError, ValueError):
            a.pids.add(int(pid_file.read_text()))
        a.cli("agent", "stop", timeout=60)
        leftover = [p for p in a.pids if alive(p)]
        for p in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        shutil.rmtree(run_dir, ignore_errors=True)
        assert not leftover, f"agents left running: {leftover}"


def remote_procs(a: AgentEnv, testbed: Testbed, marker: str) -> str:
    """Processes on the testbed whose command line has ``marker`` (checked in process)."""
    check = a.cli("run", testbed.plain, "--", f"pgrep -a -x sleep | grep -F -- '{marker}' || true",
                  DISPATCH_AGENT="off")
    assert check.returncode == 0, check.stderr
    return check.stdout


def agent_tcp_ports(pid: int, port: int) -> list[int]:
    """Local ports of the established TCP connections process ``pid`` has to ``port``."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( dport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    ports = []
    for line in out.splitlines():
        if f"pid={pid}," in line:
            local = line.split()[2]
            ports.append(int(local.rsplit(":", 1)[1]))
    return ports


# --- lifecycle ------------------------------------------------------------------------------


def test_start_status_stop_and_the_files_are_private(agent: AgentEnv, testbed: Testbed) -> None:
    assert agent.cli("agent", "status").returncode == 1  # nothing runs yet
    pid = agent.start("--idle-timeout", "600")
    st_dir = os.lstat(agent.dir)
    assert stat.S_ISDIR(st_dir.st_mode) and stat.S_IMODE(st_dir.st_mode) == 0o700
    st_sock = os.lstat(agent.sock)
    assert stat.S_ISSOCK(st_sock.st_mode) and stat.S_IMODE(st_sock.st_mode) == 0o600
    assert st_sock.st_uid == os.getuid()
    status = agent.status()
    assert status["pid"] == pid and status["running"] and status["idle_timeout"] == 600
    again = agent.cli("--json", "agent", "start")
    assert json.loads(again.stdout) == {"pid": pid, "started": False, "socket": str(agent.sock)}

    proc = agent.cli("run", testbed.plain, "--", "echo via-agent; exit 3")
    assert (proc.returncode, proc.stdout) == (3, "via-agent\n"), proc.stderr
    row = agent.host_stats(testbed.plain)
    assert row["open_connections"] == 1 and row["connects"] == 1
    text = agent.cli("agent", "status").stdout
    assert f"pid {pid}" in text and re.search(rf"^{re.escape(testbed.plain)}\s+1\s+0\s+1\s", text,
                                              re.M), text
    stop = agent.cli("agent", "stop")
    assert stop.returncode == 0 and f"stopped (pid {pid}" in stop.stdout, stop.stderr
    assert not alive(pid) and not agent.sock.exists()
    assert agent.cli("agent", "status").returncode == 1


def test_a_runtime_dir_of_the_wrong_mode_is_refused(agent: AgentEnv) -> None:
    agent.dir.mkdir(mode=0o755)
    os.chmod(agent.dir, 0o755)
    proc = agent.cli("agent", "start")
    assert proc.returncode == 1
    assert f"{agent.dir} has mode 0755; it must be 0700" in proc.stderr


def test_idle_agent_exits_by_itself(agent: AgentEnv, testbed: Testbed) -> None:
    pid = agent.start("--idle-timeout", "1")
    assert agent.cli("run", testbed.plain, "--", "true").returncode == 0
    wait_for(lambda: not alive(pid), "the idle agent to exit", 30)
    assert not agent.sock.exists()


def test_stale_socket_is_replaced(agent: AgentEnv, testbed: Testbed) -> None:
    paths.ensure_runtime_dir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(agent.sock))
    dead.close()  # the file stays, nobody listens
    assert agent.sock.exists()
    # a client treats it as "no agent" and runs in process
    proc = agent.cli("run", testbed.plain, "--", "echo local")
    assert (proc.returncode, proc.stdout) == (0, "local\n"), proc.stderr
    pid = agent.start()
    assert agent.status()["pid"] == pid
    assert agent.cli("run", testbed.plain, "--", "true").returncode == 0
    assert agent.status()["calls_served"] == 1


def test_two_clients_starting_at_once_leave_one_agent(agent: AgentEnv) -> None:
    procs = [
        subprocess.Popen([PY, "-m", "dispatch.cli", "--json", "agent", "start"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=agent.env)
        for _ in range(3)
    ]
    answers = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        answers.append(json.loads(out))
    pids = {a["pid"] for a in answers}
    agent.pids |= pids
    assert len(pids) == 1, answers
    assert sorted(a["started"] for a in answers) == [False, False, True]


def test_auto_start_by_environment(agent: AgentEnv, testbed: Testbed) -> None:
    proc = agent.cli("run", testbed.plain, "--", "echo auto", DISPATCH_AGENT="auto")
    assert (proc.returncode, proc.stdout) == (0, "auto\n"), proc.stderr
    status = agent.status()
    agent.pids.add(status["pid"])
    assert status["calls_served"] == 1


# --- what crosses the boundary ---------------------------------------------------------------


def test_cli_run_through_the_agent_imports_no_api(agent: AgentEnv, testbed: Testbed) -> None:
    agent.start()
    proc = subprocess.run(
        [PY, "-X", "importtime", "-m", "dispatch.cli", "run", testbed.plain, "--", "echo fast"],
        capture_output=True, text=True, timeout=60, env=agent.env,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "fast\n"), proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "dispatch.agent.client" in imported
    heavy = {m for m in imported if m.split(".")[0] in ("asyncssh", "omegaconf", "anyio")
             or m.startswith(("dispatch.ssh", "dispatch.slurm", "dispatch.aio", "asyncio"))}
    assert not heavy, sorted(heavy)
    # nor what only an error, --json or a login prompt needs (trimmed from the fast path),
    # nor typing (TYPE_CHECKING idiom) or the dataclass machinery (the plain result form)
    trimmed = {"logging", "json", "pathlib", "traceback", "argparse", "typing", "dataclasses",
               "inspect", "dispatch.results"}  # fmt: skip
    assert not imported & trimmed, sorted(imported & trimmed)
    assert agent.status()["calls_served"] == 1


def test_same_results_through_the_agent(
    agent: AgentEnv, testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dispatch
    from dispatch.errors import InvalidValueError

    agent.start()
    host = testbed.plain
    cmd = "echo out; echo err >&2; printf 'é'; exit 7"
    monkeypatch.setenv("DISPATCH_AGENT", "off")
    local = dispatch.run(cmd, host)
    monkeypatch.delenv("DISPATCH_AGENT")
    served = dispatch.run(cmd, host)
    assert served == local and served.returncode == 7 and served.stderr == "err\n"
    assert dispatch.run("cat", host, input="from stdin").stdout == "from stdin"
    with pytest.raises(InvalidValueError, match="command is empty"):
        dispatch.run("  ", host)
    assert dispatch.is_reachable(host) is True
    many = dispatch.run_many("hostname >/dev/null; echo $((1+1))", [host, testbed.plain2])
    assert {h: r.stdout for h, r in many.items()} == {host: "2\n", testbed.plain2: "2\n"}
    # a large output arrives whole (20 MB)
    big = dispatch.run("head -c 20000000 /dev/zero | tr '\\0' x", host)
    assert big.ok and len(big.stdout) == 20_000_000 and set(big.stdout) == {"x"}
    # relative local paths mean the client's cwd, progress is relayed
    monkeypatch.chdir(tmp_path)
    Path("up.bin").write_bytes(os.urandom(300_000))
    seen: list[tuple[int, int]] = []
    remote = f"/tmp/dispatch-agent-{uuid.uuid4().hex}.bin"
    up = dispatch.copy_to("up.bin", host, remote, progress=lambda d, t: seen.append((d, t)))
    assert up.ok, up.stderr
    assert seen and seen[-1] == (300_000, 300_000)
    down = dispatch.copy_from(host, remote, "down.bin")
    assert down.ok and Path("down.bin").read_bytes() == Path("up.bin").read_bytes()
    dispatch.run(f"rm -f {remote}", host)
    assert agent.status()["calls_served"] >= 9


def test_timeout_kills_the_remote_process_through_the_agent(
    agent: AgentEnv, testbed: Testbed, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dispatch

    agent.start()
    marker = f"{uuid.uuid4().int % 900000 + 100000}.5"
    result = dispatch.run(f"sleep {marker}", testbed.plain, timeout=2)
    assert result.returncode == -1
    assert "timed out after 2s (command)" in result.stderr
    assert "the remote process was killed" in result.stderr
    assert remote_procs(agent, testbed, marker) == ""
    assert agent.status()["calls_served"] == 1


def test_ctrl_c_cancels_in_the_agent_and_the_remote_command_is_gone(
    agent: AgentEnv, testbed: Testbed
) -> None:
    agent.start()
    marker = f"{uuid.uuid4().int % 900000 + 100000}.25"
    proc = subprocess.Popen(
        [PY, "-m", "dispatch.cli", "run", testbed.plain, "--", "sleep", marker],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=agent.env,
    )  # fmt: skip
    try:
        wait_for(lambda: remote_procs(agent, testbed, marker) != "", "the remote sleep")
        assert agent.status()["calls_in_flight"] == 1
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert remote_procs(agent, testbed, marker) == ""  # gone before the client exited
    st = agent.status()
    assert st["calls_in_flight"] == 0 and st["calls_served"] == 1


def test_agent_killed_mid_call_gives_a_failed_result_and_the_next_call_works(
    agent: AgentEnv, testbed: Testbed
) -> None:
    pid = agent.start()
    marker = f"{uuid.uuid4().int % 900000 + 100000}.75"
    code = (
        "import dispatch, sys\n"
        f"r = dispatch.run('sleep {marker}; echo late', {testbed.plain!r})\n"
        "print(r.returncode, r.may_have_run, r.stdout == '', file=sys.stdout)\n"
        "print(r.stderr, file=sys.stderr)\n"
    )
    proc = agent.script(code)
    try:
        wait_for(lambda: remote_procs(agent, testbed, marker) != "", "the remote sleep")
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.split() == ["255", "True", "True"], err
    assert f"dispatch agent (pid {pid}) was lost during run on {testbed.plain}" in err
    assert "it may have run (it was not re-run)" in err
    assert agent.sock.exists()  # stale now
    nxt = agent.cli("run", testbed.plain, "--", "echo next")  # in process
    assert (nxt.returncode, nxt.stdout) == (0, "next\n"), nxt.stderr
    auto = agent.cli("run", testbed.plain, "--", "echo again", DISPATCH_AGENT="auto")
    assert (auto.returncode, auto.stdout) == (0, "again\n"), auto.stderr
    new = agent.status()["pid"]
    agent.pids.add(new)
    assert new != pid and agent.status()["calls_served"] == 1


# --- sharing -------------------------------------------------------------------------------


def test_two_processes_share_one_connection(agent: AgentEnv, testbed: Testbed) -> None:
    pid = agent.start()
    code = (
        "import dispatch\n"
        f"for _ in range(3): assert dispatch.run('true', {testbed.plain!r}).ok\n"
    )
    procs = [agent.script(code) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    row = agent.host_stats(testbed.plain)
    assert row["connects"] == 1 and row["open_connections"] == 1
    assert len(agent_tcp_ports(pid, testbed.ssh_port)) == 1
    assert agent.status()["calls_served"] == 6


def test_connection_dropped_by_the_server_is_replaced(agent: AgentEnv, testbed: Testbed) -> None:
    pid = agent.start()
    assert agent.cli("run", testbed.plain, "--", "true").returncode == 0
    (local_port,) = agent_tcp_ports(pid, testbed.ssh_port)
    # the sshd processes serving that connection (the server side of it)
    sshd_pids = sshd_pids_serving(local_port, testbed.ssh_port)
    assert sshd_pids and pid not in sshd_pids, sshd_pids
    kill_all(sshd_pids)
    wait_for(lambda: not agent_tcp_ports(pid, testbed.ssh_port), "the connection to drop")
    proc = agent.cli("run", testbed.plain, "--", "echo back")
    assert (proc.returncode, proc.stdout) == (0, "back\n"), proc.stderr
    row = agent.host_stats(testbed.plain)
    assert row["connects"] == 2 and row["open_connections"] == 1


# --- trust -----------------------------------------------------------------------------------


def test_another_user_is_refused(agent: AgentEnv, testbed: Testbed) -> None:
    other = testbed.user2
    pid = agent.start()
    probe = (
        "import pickle, socket, struct, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(agent.sock)!r})\n"
        "except PermissionError:\n"
        "    print('permission-denied'); sys.exit(0)\n"
        "p = pickle.dumps(('hello', 1, '0'))\n"
        "try:\n"
        "    s.sendall(struct.pack('>I', len(p)) + p)\n"
        "    print('closed' if s.recv(100) == b'' else 'answered')\n"
        "except (ConnectionResetError, BrokenPipeError):\n"
        "    print('closed')\n"
    )
    argv = ["runuser", "-u", other, "--", "/usr/bin/python3", "-c", probe]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert first.stdout.strip() == "permission-denied", first.stderr  # the 0700 dir
    # open the path up on purpose: SO_PEERCRED still refuses the other uid
    for path, mode in ((agent.run_dir, 0o711), (agent.dir, 0o711), (agent.sock, 0o666)):
        os.chmod(path, mode)
    second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    os.chmod(agent.dir, 0o700)
    assert second.stdout.strip() == "closed", second.stderr
    log = (agent.dir / "agent.log").read_text()
    assert re.search(r"refused a connection from uid \d+ \(we are 0\)", log), log
    assert agent.status()["pid"] == pid


def test_version_skew_falls_back_in_process_and_says_so_once(
    agent: AgentEnv, testbed: Testbed, tmp_path: Path
) -> None:
    other = tmp_path / "other-install"
    shutil.copytree(ROOT / "src" / "dispatch", other / "dispatch")
    version = other / "dispatch" / "_version.py"
    text = version.read_text()
    assert '__version__ = "' in text
    version.write_text(text.replace('__version__ = "', '__version__ = "9.9.9-skew-', 1))
    start = agent.cli("--json", "agent", "start", PYTHONPATH=str(other))
    assert start.returncode == 0, start.stderr
    agent.pids.add(json.loads(start.stdout)["pid"])
    code = (
        "import logging, dispatch\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        f"for _ in range(3): print(dispatch.run('echo ok', {testbed.plain!r}).stdout.strip())\n"
    )
    proc = agent.script(code)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == ["ok", "ok", "ok"]
    assert err.count("version skew") == 1, err
    assert "dispatch 9.9.9-skew-" in err and "running in process" in err
    assert agent.status()["calls_served"] == 0  # nothing ran in the other install's agent


# --- one-time-password prompts: relayed to the client whose call caused the login ----------


def test_login_prompt_is_relayed_to_the_calling_client(
    agent: AgentEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[Any, ...]] = []

    def my_handler(
        host: str, name: str, instructions: str, prompts: Any
    ) -> tuple[list[str], None]:
        asked.append((host, name, instructions, list(prompts)))
        return ["424242"], None

    monkeypatch.setattr("dispatch.agent.answer.answer", my_handler)  # the client's answerer
    paths.ensure_runtime_dir()
    sock = server._bind(str(agent.sock))
    loop = asyncio.new_event_loop()
    the_agent: list[server.Agent] = []
    tasks: list[asyncio.Task[None]] = []
    ready = threading.Event()

    async def serve() -> None:
        a = server.Agent(idle_timeout=60, keepalive=None)
        the_agent.append(a)
        srv = await asyncio.start_unix_server(a.serve_connection, sock=sock)
        ready.set()
        await a.stopping.wait()
        srv.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        conn = client._connect()
        assert conn is not None
        wait_for(lambda: len(the_agent[0].clients) == 1, "the agent to see the client")
        (peer,) = the_agent[0].clients
        # nobody's call: no one to ask, and the login is told so (it fails, never hangs)
        none = asyncio.run_coroutine_threadsafe(
            server.relay_kbdint("mfa", "", "", [("code: ", False)]), loop)
        with pytest.raises(server.ClientCannotAnswer, match="no client's call is waiting"):
            none.result(30)

        async def login_during_call() -> None:
            answers = await server.relay_kbdint(
                "mfa", "", "Use your token", [("One-time password: ", False)]
            )
            peer.write(("result", answers))

        def start() -> None:
            ctx = contextvars.copy_context()
            ctx.run(server._caller.set, peer)
            tasks.append(loop.create_task(login_during_call(), context=ctx))

        loop.call_soon_threadsafe(start)
        assert client._converse(conn, None) == ["424242"]
        assert asked == [("mfa", "", "Use your token", [("One-time password: ", False)])]
        conn.close()
    finally:
        def stop() -> None:
            if the_agent:
                the_agent[0].stopping.set()

        loop.call_soon_threadsafe(stop)
        thread.join(30)
        with contextlib.suppress(OSError):
            os.unlink(agent.sock)

