"""The guides' ```python blocks run as written, against the testbed.

Each page's blocks run in order in one fresh interpreter (as a reader would paste them).
The guides use the placeholder aliases ``gpu-box`` (a plain host) and ``cluster`` (a SLURM
login node); they are replaced by the testbed's ``plain`` and ``slurm``. Blocks fenced as
``py`` (instead of ``python``) are illustrations that are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT, Testbed

GUIDES = ROOT / "docs" / "guides"
RUNNABLE = [
    "getting-started.md",
    "blocking.md",
    "async.md",
    "slurm.md",
    "config-solver.md",
]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def page_script(page: str, testbed: Testbed) -> str:
    text = (GUIDES / page).read_text()
    blocks = BLOCK.findall(text)
    assert blocks, f"{page} has no python blocks"
    script = "\n\n".join(blocks)
    script = script.replace('"gpu-box"', repr(testbed.plain))
    script = script.replace('"cluster"', repr(testbed.slurm))
    return script.replace('"examples/testbed.yaml"', repr(str(ROOT / "examples" / "testbed.yaml")))


@pytest.mark.parametrize("page", RUNNABLE)
def test_guide_python_blocks_run(page: str, testbed: Testbed, tmp_path: Path) -> None:
    script = tmp_path / f"{page}.py"
    script.write_text(page_script(page, testbed))
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=os.environ.copy(),
    )  # fmt: skip
    assert proc.returncode == 0, f"{page}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
