"""Shared fixtures: the testbed (real sshd + SLURM on loopback) and its settings."""

from __future__ import annotations

import ast
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _serialize_ast_parse() -> None:
    """Work around CPython gh-106905 (3.11, 3.12.1): the AST constructor's recursion counter
    is shared by all threads, so two threads in ``ast.parse`` at once can fail with
    "SystemError: AST constructor recursion depth mismatch". pytest parses source to show a
    failure while dispatch's loop thread may be formatting a logged traceback (which in 3.11
    parses the failing line for its carets); that crashed whole runs with INTERNALERROR.
    One lock around ``ast.parse`` makes the two take turns."""
    if sys.version_info >= (3, 13):
        return
    lock = threading.RLock()
    original = ast.parse

    def parse(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return original(*args, **kwargs)

    ast.parse = parse  # type: ignore[assignment]


_serialize_ast_parse()


def _interruptible_children() -> None:
    """Let child processes get Ctrl-C: a shell that starts pytest in the background hands it
    SIGINT ignored, and an ignored signal stays ignored across exec, so the tests that send
    SIGINT to a child would wait forever. A handled signal is reset to default at exec."""
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_interruptible_children()
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@dataclass(frozen=True)
class Testbed:
    """What `scripts/testbed env` exports, as typed fields."""

    __test__ = False  # not a test class, though test modules import it

    env: dict[str, str]
    ssh_config: Path
    known_hosts: Path
    state_dir: Path
    ssh_port: int
    user: str
    user2: str
    plain: str
    plain2: str
    root_host: str
    slurm: str
    fleet: list[str] = field(default_factory=list)

    @property
    def client_key(self) -> Path:
        return Path(self.env["DISPATCH_TESTBED_KEY"])

    @property
    def wrong_key(self) -> Path:
        return Path(self.env["DISPATCH_TESTBED_WRONG_KEY"])

    def ssh_argv(self, host: str) -> list[str]:
        """An OpenSSH client command line for ``host`` (for comparisons in tests)."""
        return ["ssh", "-F", str(self.ssh_config), host]

    # --- the SLURM cluster (see `scripts/testbed env`) ---------------------------------
    def _words(self, key: str, default: str) -> list[str]:
        return self.env.get(key, default).split()

    @property
    def slurm_conf(self) -> Path:
        default = str(self.state_dir / "slurm" / "slurm.conf")
        return Path(self.env.get("DISPATCH_TESTBED_SLURM_CONF", default))

    @property
    def partitions(self) -> list[str]:
        return self._words("DISPATCH_TESTBED_PARTITIONS", "gpu cpu")

    @property
    def gpu_partition(self) -> str:
        return self.env.get("DISPATCH_TESTBED_GPU_PARTITION", "gpu")

    @property
    def cpu_partition(self) -> str:
        return self.env.get("DISPATCH_TESTBED_CPU_PARTITION", "cpu")

    @property
    def default_partition(self) -> str:
        return self.env.get("DISPATCH_TESTBED_DEFAULT_PARTITION", self.cpu_partition)

    @property
    def nodes(self) -> list[str]:
        return self._words("DISPATCH_TESTBED_NODES", "node1 node2 node3 node4")

    @property
    def gpu_nodes(self) -> list[str]:
        return self._words("DISPATCH_TESTBED_GPU_NODES", "node1 node2")

    @property
    def cpu_nodes(self) -> list[str]:
        return self._words("DISPATCH_TESTBED_CPU_NODES", "node3 node4")

    @property
    def gpu_type(self) -> str:
        return self.env.get("DISPATCH_TESTBED_GPU_TYPE", "h100")

    @property
    def gpus_per_node(self) -> int:
        return int(self.env.get("DISPATCH_TESTBED_GPUS_PER_NODE", "4"))


def _read_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith("DISPATCH_")}
    if "DISPATCH_SSH_CONFIG" in env and "DISPATCH_TESTBED_DIR" in env:
        return env
    try:
        out = subprocess.run(
            [str(ROOT / "scripts" / "testbed"), "env"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return env
    for line in out.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            parsed = shlex.split(value)
            env[key] = parsed[0] if parsed else ""
    return env


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _unavailable(reason: str) -> None:
    if os.environ.get("DISPATCH_REQUIRE_TESTBED") == "1":
        pytest.fail(f"testbed required (DISPATCH_REQUIRE_TESTBED=1) but {reason}", pytrace=False)
    pytest.skip(f"testbed not available: {reason} (run `scripts/testbed up`)")


@pytest.fixture(scope="session")
def testbed() -> Testbed:
    """The running testbed; fails under DISPATCH_REQUIRE_TESTBED=1 when it is not up."""
    env = _read_env()
    config = env.get("DISPATCH_SSH_CONFIG")
    if not config or not Path(config).is_file():
        _unavailable("no ssh config from `scripts/testbed env`")
    port = int(env.get("DISPATCH_TESTBED_SSH_PORT", "0"))
    if not _port_open(port):
        _unavailable(f"nothing listens on 127.0.0.1:{port}")
    # The library reads these; tests never touch ~/.ssh.
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return Testbed(
        env=env,
        ssh_config=Path(env["DISPATCH_SSH_CONFIG"]),
        known_hosts=Path(env["DISPATCH_KNOWN_HOSTS"]),
        state_dir=Path(env["DISPATCH_TESTBED_DIR"]),
        ssh_port=port,
        user=env["DISPATCH_TESTBED_USER"],
        user2=env["DISPATCH_TESTBED_USER2"],
        plain=env["DISPATCH_TESTBED_PLAIN"],
        plain2=env["DISPATCH_TESTBED_PLAIN2"],
        root_host=env["DISPATCH_TESTBED_ROOT_HOST"],
        slurm=env["DISPATCH_TESTBED_SLURM"],
        fleet=env.get("DISPATCH_TESTBED_FLEET", "").split(),
    )


def _slurm_answer(testbed: Testbed) -> tuple[bool, str]:
    """Ask the SLURM login host, as the test user over the testbed's sshd, for node states."""
    argv = [*testbed.ssh_argv(testbed.slurm), "sinfo -h -N -o '%N %t'"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    if proc.returncode != 0:
        return False, (proc.stderr or proc.stdout).strip()
    states = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
    unready = {
        n: st for n, st in states.items()
        if st.endswith("*") or st.startswith(("unk", "down", "fail", "drain", "drng"))
    }  # fmt: skip
    if not states or unready:
        return False, f"nodes not ready: {unready or 'none listed'}"
    return True, ""


@pytest.fixture(scope="session")
def slurm_ready(testbed: Testbed) -> Testbed:
    """The testbed with SLURM answering `sinfo` and every node usable (polled, bounded).

    Fails under DISPATCH_REQUIRE_TESTBED=1 when SLURM is not up, skips otherwise.
    """
    deadline = time.monotonic() + float(os.environ.get("DISPATCH_SLURM_READY_TIMEOUT", "30"))
    while True:
        ok, why = _slurm_answer(testbed)
        if ok:
            return testbed
        if time.monotonic() >= deadline:
            _unavailable(f"SLURM is not ready: {why}")
        time.sleep(0.5)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures tests recorded (tests/support/report.py), once, at the end."""
    from .support import report

    figures = report.lines()
    if figures:
        terminalreporter.section("measured figures")
        for line in figures:
            terminalreporter.write_line(line)
