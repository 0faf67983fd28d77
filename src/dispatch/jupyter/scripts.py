"""Shell a Jupyter session runs remotely: launch, stop, probe and log-poll scripts (pure).

Every path goes through ``shell_path`` (quoted, ``~``/``$VAR`` prefixes expanded) and every
other value is an int or ``shlex.quote``d, so nothing here runs what it was not meant to.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Sequence

from ..placement import claim_gpus_script
from ..slurm.job import shell_path
from . import parse as rp

__all__ = [
    "LOG_MARKER",
    "NODE_MARKER",
    "claiming_bootstrap",
    "launch_command",
    "make_dir_command",
    "log_poll_command",
    "node_address_command",
    "pick_server_pid",
    "pid_probe",
    "plain_alive_check",
    "slurm_alive_check",
    "stop_script",
]

#: Separates the new log text from the trailer (size, liveness) in a log poll's output.
LOG_MARKER = "@@dispatch-repl@@"
#: Separates getent's answer from scontrol's in the node-address probe.
NODE_MARKER = "@@scontrol@@"


def make_dir_command(path: str) -> str:
    """Shell creating directory ``path`` and its parents."""
    return f"mkdir -p {shell_path(path)}"


def log_poll_command(path: str, offset: int, alive_check: str) -> str:
    """Shell printing ``path`` from byte ``offset`` on, then ``LOG_MARKER``, its size and
    the output of ``alive_check`` (one round trip per poll)."""
    return (
        f"f={shell_path(path)}; o={offset}; "
        'n=$(wc -c 2>/dev/null < "$f" || echo 0); n=$((n + 0)); '
        'if [ "$n" -gt "$o" ]; then tail -c +$((o + 1)) "$f" | head -c $((n - o)); fi; '
        f"printf '\\n{LOG_MARKER} %s %s\\n' \"$n\" \"$({alive_check})\""
    )


def plain_alive_check(session: int) -> str:
    """Shell printing ``alive`` while the bootstrap session leader runs, else ``exited``."""
    return f"kill -0 {session} 2>/dev/null && echo alive || echo exited"


def slurm_alive_check(job_id: int) -> str:
    """Shell printing ``alive`` while job ``job_id`` runs, ``ended`` when squeue no longer
    knows it, else its state. squeue failing (slurmctld busy) counts as alive."""
    return (f"if s=$(squeue -h -j {job_id} -o %T 2>/dev/null); then "
            'case "$s" in RUNNING|COMPLETING|CONFIGURING) echo alive;; '
            '"") echo ended;; *) echo "$s";; esac; else echo alive; fi')


def node_address_command(node: str) -> str:
    """Shell asking the login node how it resolves ``node`` (getent, then scontrol)."""
    q = shlex.quote(node)
    return (f"getent hosts {q} || true; echo {NODE_MARKER}; "
            f"scontrol show node -o {q} 2>/dev/null || true")


def launch_command(work_dir: str, bootstrap: str, log_path: str) -> str:
    """Start the bootstrap detached in its own session (survives the SSH channel); echo PID.

    ``DISPATCH_RUN_ID`` is dropped so the launching command's timeout handling never
    mistakes the session for part of the launch.
    """
    log_dir = posixpath.dirname(log_path)
    return (
        f"mkdir -p {shell_path(log_dir)} {shell_path(work_dir)} && "
        f"cd {shell_path(work_dir)} || exit 1; "
        f"env -u DISPATCH_RUN_ID setsid nohup bash -l {shell_path(bootstrap)} "
        f"> {shell_path(log_path)} 2>&1 < /dev/null & echo $!"
    )


def claiming_bootstrap(bootstrap: str, claim_from: Sequence[str], count: int) -> str:
    """``bootstrap`` with GPU claim lines (`claim_gpus_script`) right after its ``#!`` line.

    They run before anything else in the script: ``count`` of ``claim_from`` are locked
    for the bootstrap and everything it starts, ``CUDA_VISIBLE_DEVICES`` is exported to
    their UUIDs and the claim line is logged; too few claimable: exit 75 at once.

    Raises:
        InvalidValueError: ``count`` is not 1..len(claim_from), or a UUID is invalid.
    """
    first, newline, rest = bootstrap.partition("\n")
    if not first.startswith("#!"):
        first, newline, rest = "#!/bin/bash", "\n", bootstrap
    return first + newline + claim_gpus_script(claim_from, count) + rest


def pid_probe(session: int) -> str:
    """Shell listing TCP listeners (ss) and the processes of ``session`` (ps)."""
    return (
        "(ss -Hltnp 2>/dev/null || true) | sed 's/^/ss /'; "
        f"ps -o pid=,args= -s {session} 2>/dev/null | sed 's/^/ps /'"
    )


def pick_server_pid(text: str, port: int, session: int) -> int:
    """The notebook server's PID from ``pid_probe``'s output: the session's process
    listening on ``port``, else its last process that looks like Jupyter, else the
    session leader."""
    ss = "\n".join(line[3:] for line in text.splitlines() if line.startswith("ss "))
    procs: list[tuple[int, str]] = []
    for line in text.splitlines():
        if line.startswith("ps "):
            pid_s, _, args = line[3:].strip().partition(" ")
            if pid_s.isdigit():
                procs.append((int(pid_s), args))
    mine = {pid for pid, _ in procs}
    for pid in rp.parse_listener_pids(ss, port):
        if pid in mine:
            return pid
    jupyter = [pid for pid, args in procs
               if "jupyter" in args and not args.startswith(("uv ", "bash ", "/bin/bash "))]
    return jupyter[-1] if jupyter else session


def stop_script(pid: int, marker: str, grace: float) -> str:
    """Shell that stops the notebook ``pid`` and everything in its session.

    It only acts when the session leader's command line contains ``marker`` (the
    bootstrap's file name) or, with the leader gone, ``pid``'s contains ``jupyter``: a
    reused PID is never signalled. SIGTERM to the server first (it shuts its kernels
    down), then the session, then SIGKILL after ``grace`` seconds.
    """
    rounds = max(1, int(grace * 10))
    m = shlex.quote(marker)
    return f"""
p={pid}
sid=$(ps -o sid= -p "$p" 2>/dev/null | tr -d ' ')
[ -n "$sid" ] || {{ echo gone; exit 0; }}
leader=$(ps -o args= -p "$sid" 2>/dev/null || true)
case "$leader" in
  *{m}*) ;;
  '') case "$(ps -o args= -p "$p" 2>/dev/null)" in *jupyter*) ;; *) echo foreign; exit 3;; esac ;;
  *) echo foreign; exit 3 ;;
esac
[ "$sid" -gt 1 ] || exit 3
# live (non-zombie) members of the session
live() {{ ps -o stat= -s "$sid" 2>/dev/null | grep -qv '^Z'; }}
kill -TERM "$p" 2>/dev/null
i=0; while kill -0 "$p" 2>/dev/null && [ $i -lt {rounds} ]; do sleep 0.1; i=$((i+1)); done
pkill -TERM -s "$sid" 2>/dev/null
i=0; while live && [ $i -lt {rounds} ]; do sleep 0.1; i=$((i+1)); done
pkill -KILL -s "$sid" 2>/dev/null; kill -KILL "$p" 2>/dev/null
i=0; while live && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
live && {{ echo survivors; exit 4; }}
echo stopped
"""
