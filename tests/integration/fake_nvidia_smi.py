"""A fake ``nvidia-smi`` for the testbed that prints the real H200 capture.

``install(host)`` puts it at ``~/bin/nvidia-smi`` (on the login PATH through ~/.profile)
printing the capture's idle answers, and a busy variant (a process holding 20 GiB, as in
the second half of the capture) at :data:`BUSY_PATH`, used by absolute path only.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from dispatch.ssh.commands import run

CAPTURE = Path(__file__).resolve().parent.parent / "fixtures" / "nvidia-smi" / "h200_capture.txt"
IDLE_PATH = "~/bin/nvidia-smi"
BUSY_PATH = "~/.dispatch-test-fake-gpu/busy/nvidia-smi"


def _sections() -> list[tuple[str, str]]:
    """(arguments after ``nvidia-smi``, output) for every nvidia-smi section, in order."""
    out: list[tuple[str, str]] = []
    cmd: str | None = None
    lines: list[str] = []
    for line in CAPTURE.read_text().splitlines():
        if line.startswith("=== "):
            cmd, lines = line[4:], []
        elif line.startswith("--- rc="):
            if cmd is not None and cmd.startswith("nvidia-smi"):
                out.append((cmd[len("nvidia-smi"):].strip(), "\n".join(lines)))
            cmd = None
        elif cmd is not None:
            lines.append(line)
    return out


def answers(busy: bool) -> dict[str, str]:
    """Arguments -> output; the busy variant takes the later capture of a repeated query."""
    table: dict[str, str] = {}
    for args, output in _sections():
        if busy or args not in table:
            table[args] = output
    # The solver asks for gpu_uuid,used_memory; derive it from the gpu_uuid,pid,used_memory
    # capture by dropping the pid column.
    three = table["--query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits"]
    two = "\n".join(", ".join(c for i, c in enumerate(line.split(", ")) if i != 1)
                    for line in three.splitlines())
    table["--query-compute-apps=gpu_uuid,used_memory --format=csv,noheader,nounits"] = two
    return table


def script(busy: bool) -> str:
    parts = ["#!/bin/sh",
             "# Fake nvidia-smi installed by dispatch's integration tests: prints a real",
             "# capture from one NVIDIA H200 (tests/fixtures/nvidia-smi/h200_capture.txt).",
             'case "$*" in']
    for args, output in answers(busy).items():
        parts.append(f"{shlex.quote(args)})")
        if output:
            parts += ["cat <<'EOF_FAKE_NVIDIA_SMI'", output, "EOF_FAKE_NVIDIA_SMI"]
        else:
            parts.append(":")
        parts.append(";;")
    parts += ['*) echo "fake nvidia-smi: unsupported arguments: $*" >&2; exit 2;;', "esac", ""]
    return "\n".join(parts)


async def _put(host: str, path: str, text: str) -> None:
    assert path.startswith("~/")
    rel = shlex.quote(path[2:])
    cmd = (f'p="$HOME"/{rel}; mkdir -p "$(dirname "$p")" && cat > "$p.tmp.$$" '
           f'&& chmod 755 "$p.tmp.$$" && mv -f "$p.tmp.$$" "$p"')
    res = await run(["sh", "-c", cmd], host, timeout=30, input=text.encode())
    assert res.ok, res


async def install(host: str) -> None:
    """Install both fakes for the user of ``host`` (idempotent, atomic)."""
    await _put(host, IDLE_PATH, script(busy=False))
    await _put(host, BUSY_PATH, script(busy=True))
