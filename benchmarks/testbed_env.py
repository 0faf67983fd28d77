"""The testbed's environment for the benchmarks: what `scripts/testbed env` exports."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_testbed_env(needs: str = "DISPATCH_SSH_CONFIG") -> None:
    """Export `scripts/testbed env` into os.environ unless ``needs`` is already set
    (variables the caller set win)."""
    if "DISPATCH_SSH_CONFIG" in os.environ and needs in os.environ:
        return
    out = subprocess.run([str(ROOT / "scripts" / "testbed"), "env"], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            os.environ.setdefault(key, (shlex.split(value) or [""])[0])
