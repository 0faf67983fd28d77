"""What a training script's `logging.basicConfig(level=INFO)` shows: no command text, no
secrets, from asyncssh or from dispatch; DEBUG lines name host, status and duration."""

from __future__ import annotations

import os
import subprocess
import sys

from ..conftest import Testbed

_SCRIPT = """
import logging, sys, dispatch
logging.basicConfig(level=getattr(logging, sys.argv[2]), stream=sys.stdout,
                    format="%(name)s %(levelname)s %(message)s")
for i in range(3):
    assert dispatch.run(["sh", "-c", "echo $0 >/dev/null", "TOPSECRET-VALUE"], sys.argv[1]).ok
print("done")
"""


def _run(testbed: Testbed, level: str) -> str:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, testbed.plain, level],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_info_logging_shows_no_command_lines(testbed: Testbed) -> None:
    out = _run(testbed, "INFO")
    assert "TOPSECRET" not in out
    assert [line for line in out.splitlines() if line.startswith("asyncssh")] == []
    assert out.endswith("done\n")


def test_debug_logging_never_shows_command_text(testbed: Testbed) -> None:
    out = _run(testbed, "DEBUG")
    dispatch_lines = [line for line in out.splitlines() if line.startswith("dispatch")]
    assert "TOPSECRET" not in "\n".join(dispatch_lines)
    assert "TOPSECRET" not in "\n".join(
        line for line in out.splitlines() if line.startswith("asyncssh"))
