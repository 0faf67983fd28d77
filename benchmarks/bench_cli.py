"""CLI start-up benchmark: `dispatch run plain -- true` as a whole process, side by side.

    python benchmarks/bench_cli.py [--repeat 15]      # needs the testbed (scripts/testbed up)

Measures (median wall time of a whole process, warm: one call first, not counted):
``dispatch run plain -- true`` served by a running agent (started here in a private
runtime dir, stopped at the end) and without one (in process: import, connect, run);
``ssh -F config plain`` running the same login-shell ``true`` over a ControlMaster and as
a plain new connection; ``python -c pass`` (the floor: the interpreter alone) and
``python -c 'import dispatch'`` (and whether asyncssh got imported). Targets (issue 15):
with the agent <= 3x the ControlMaster and >= 5x faster than plain ssh.

``dispatch`` is the installed console script (``python -m dispatch.cli`` when there is
none). Warm includes bytecode: an installed package has its ``.pyc`` files, so the
measured processes write theirs to a private ``PYTHONPYCACHEPREFIX`` (never into the
tree) even when ``PYTHONDONTWRITEBYTECODE`` is set; ``--no-bytecode`` measures without.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
LOGIN_TRUE = 'exec "$SHELL" -l -c true'  # what `dispatch run HOST -- true` runs remotely


def _testbed_env() -> dict[str, str]:
    env = os.environ.copy()
    if "DISPATCH_SSH_CONFIG" in env:
        return env
    out = subprocess.run(
        [str(ROOT / "scripts" / "testbed"), "env"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            parsed = shlex.split(value)
            env[key] = parsed[0] if parsed else ""
    return env


def median_ms(argv: Sequence[str], env: dict[str, str], n: int) -> float:
    """Median wall time of running ``argv`` to completion (one warm-up run first)."""
    times = []
    for i in range(n + 1):
        t = time.perf_counter()
        proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        dt = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.decode().strip()}")
        if i:
            times.append(dt)
    return statistics.median(times) * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs per measurement")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--no-bytecode", action="store_true",
                        help="compile dispatch's modules in every process (no .pyc cache)")
    args = parser.parse_args(argv)
    env = _testbed_env()
    env.pop("DISPATCH_AGENT", None)
    pyc = tempfile.mkdtemp(prefix="dbench-pyc-", dir="/tmp")
    if args.no_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pyc
    host = env.get("DISPATCH_TESTBED_PLAIN", "plain")
    config = env["DISPATCH_SSH_CONFIG"]
    n = args.repeat
    res: dict[str, float | bool] = {}
    run_dir = tempfile.mkdtemp(prefix="dbench-", dir="/tmp")
    agent_env = {**env, "XDG_RUNTIME_DIR": run_dir}
    script = Path(PY).parent / "dispatch"
    entry = [str(script)] if script.is_file() else [PY, "-m", "dispatch.cli"]
    cli = [*entry, "run", host, "--", "true"]
    subprocess.run([PY, "-m", "dispatch.cli", "agent", "start"], env=agent_env, check=True,
                   stdout=subprocess.DEVNULL)
    try:
        res["agent_ms"] = median_ms(cli, agent_env, n)
    finally:
        subprocess.run([PY, "-m", "dispatch.cli", "agent", "stop"], env=agent_env,
                       stdout=subprocess.DEVNULL)
    res["no_agent_ms"] = median_ms(cli, {**agent_env, "DISPATCH_AGENT": "off"}, n)
    ssh = ["ssh", "-F", config]
    res["ssh_ms"] = median_ms([*ssh, host, LOGIN_TRUE], env, n)
    with tempfile.TemporaryDirectory(prefix="dbench-cm-", dir="/tmp") as tmp:
        cm = ["-o", "ControlMaster=auto", "-o", f"ControlPath={tmp}/cm-%C",
              "-o", "ControlPersist=120"]
        try:
            res["controlmaster_ms"] = median_ms([*ssh, *cm, host, LOGIN_TRUE], env, n)
        finally:
            subprocess.run([*ssh, *cm, "-O", "exit", host], env=env, capture_output=True)
    res["python_ms"] = median_ms([PY, "-c", "pass"], env, n)
    res["import_ms"] = median_ms([PY, "-c", "import dispatch"], env, n)
    probe = subprocess.run(
        [PY, "-c", "import sys, dispatch; print('asyncssh' in sys.modules)"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    res["import_loads_asyncssh"] = probe.stdout.strip() == "True"
    os.rmdir(run_dir) if os.path.isdir(run_dir) and not os.listdir(run_dir) else None
    shutil.rmtree(pyc, ignore_errors=True)

    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    agent, cmm, plain = res["agent_ms"], res["controlmaster_ms"], res["ssh_ms"]
    assert isinstance(agent, float) and isinstance(cmm, float) and isinstance(plain, float)
    rows = [
        ("dispatch run (agent running)", f"{agent:.1f} ms",
         f"{agent / cmm:.2f}x ControlMaster, {plain / agent:.1f}x faster than ssh",
         "<= 3x CM, >= 5x faster than ssh"),
        ("dispatch run (no agent)", f"{res['no_agent_ms']:.1f} ms", "", "report"),
        ("ssh over a ControlMaster", f"{cmm:.1f} ms", "", ""),
        ("ssh (new connection)", f"{plain:.1f} ms", "", ""),
        ("python -c pass", f"{res['python_ms']:.1f} ms", "", "the floor"),
        ("python -c 'import dispatch'", f"{res['import_ms']:.1f} ms",
         f"asyncssh imported: {res['import_loads_asyncssh']}", "asyncssh not imported"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    how = "no bytecode cache" if args.no_bytecode else "warm, bytecode cached"
    print(f"`dispatch run {host} -- true` as a whole process, median of {n} ({how})")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
