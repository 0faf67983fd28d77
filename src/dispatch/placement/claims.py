"""GPU claims on a plain host: two dispatches to one box must not pick the same GPUs.

A claim is an exclusive ``flock`` on ``~/.dispatch/gpu-claims/<GPU uuid>.lock`` held by
the launched process (and inherited by what it starts), so the kernel releases it when
the last of them exits or dies: no stale claims to clean up. Pure shell rendering and
parsing only; the launch (jupyter) runs `claim_gpus_script` at the top of its bash
bootstrap, and the availability probe (`SshAvailability`) runs `held_claims_command` in
the same round trip as nvidia-smi and counts a claimed GPU as busy.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from ..errors import InvalidValueError
from .hardware import GPU_UUID_RE, GpuRef

__all__ = [
    "CLAIMS_DIR",
    "CLAIM_FAILED_EXIT",
    "CLAIMED_PREFIX",
    "claim_gpus_script",
    "held_claims_command",
    "parse_held_claims",
    "parse_claimed",
]

#: Where the lock files live, relative to the remote user's home.
CLAIMS_DIR = ".dispatch/gpu-claims"
#: Exit status of `claim_gpus_script` when it cannot claim enough GPUs (EX_TEMPFAIL).
CLAIM_FAILED_EXIT = 75
#: `claim_gpus_script` prints this, then the claimed UUIDs comma-separated, on stdout.
CLAIMED_PREFIX = "dispatch-gpu-claimed: "


def _uuid(gpu: GpuRef | str) -> str:
    uuid = gpu.uuid if isinstance(gpu, GpuRef) else gpu
    if not isinstance(uuid, str) or not GPU_UUID_RE.match(uuid):
        raise InvalidValueError(f"not a GPU uuid: {uuid!r}")
    return uuid


def claim_gpus_script(candidates: Sequence[GpuRef | str], count: int) -> str:
    """Bash lines that claim `count` of `candidates` (in order) for the running script.

    Put them at the top of the bash script that the launch runs (the process that lives
    as long as the work): each claimed GPU's lock stays held by an open file descriptor
    of that script and everything it starts, so it is released when they have all exited
    or died. The script then has `CUDA_VISIBLE_DEVICES` set to the claimed UUIDs
    (comma-separated, the order of `candidates`) and prints `CLAIMED_PREFIX` + that list.
    A candidate already claimed by another session is skipped; with fewer than `count`
    claimable (or no `flock` on the host) it prints one line on stderr and exits
    `CLAIM_FAILED_EXIT`, which releases what it had claimed.

    Args:
        candidates: The GPUs found free (`HardwareResult.free_gpus`), or their UUIDs.
        count: How many to claim (at least 1, at most `len(candidates)`).

    Returns:
        Bash source (uses `exec {fd}>>file`, so bash, not sh), ending with a newline.

    Raises:
        InvalidValueError: `count` is out of range, or a candidate is not a GPU uuid.
    """
    uuids = [_uuid(g) for g in candidates]
    if len(set(uuids)) != len(uuids):
        raise InvalidValueError(f"duplicate GPU uuids in {uuids!r}")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(uuids):
        raise InvalidValueError(
            f"count must be an int from 1 to {len(uuids)} (the candidates), got {count!r}")
    listed = " ".join(shlex.quote(u) for u in uuids)
    fail = CLAIM_FAILED_EXIT
    return "\n".join([
        f"# dispatch: claim {count} GPU(s) for this script and what it starts (flock locks,",
        "# released when the last of them exits).",
        "if ! command -v flock >/dev/null 2>&1; then",
        f"  echo 'dispatch: cannot claim GPUs: no flock on this host' >&2; exit {fail}",
        "fi",
        f'__dispatch_dir="$HOME"/{shlex.quote(CLAIMS_DIR)}',
        f'mkdir -p "$__dispatch_dir" || exit {fail}',
        "__dispatch_got=",
        "__dispatch_n=0",
        f"for __dispatch_uuid in {listed}; do",
        f'  [ "$__dispatch_n" -ge {count} ] && break',
        f'  exec {{__dispatch_fd}}>>"$__dispatch_dir/$__dispatch_uuid.lock" || exit {fail}',
        '  if flock -n "$__dispatch_fd"; then',
        '    __dispatch_got="${__dispatch_got:+$__dispatch_got,}$__dispatch_uuid"',
        "    __dispatch_n=$((__dispatch_n + 1))",
        "  else",
        "    exec {__dispatch_fd}>&-",
        "  fi",
        "done",
        f'if [ "$__dispatch_n" -lt {count} ]; then',
        f'  echo "dispatch: cannot claim {count} GPU(s): only $__dispatch_n of {len(uuids)} '
        f'free GPU(s) unclaimed (another dispatch session holds the rest)" >&2',
        f"  exit {fail}",
        "fi",
        'export CUDA_VISIBLE_DEVICES="$__dispatch_got"',
        f'echo "{CLAIMED_PREFIX}$CUDA_VISIBLE_DEVICES"',
        "unset __dispatch_dir __dispatch_got __dispatch_n __dispatch_uuid __dispatch_fd",
        "",
    ])


# Lists the UUIDs whose lock is held now: `flock -n` exits 1 exactly when another process
# holds the lock (other failures, such as an unreadable file, are not claims).
_HELD = (
    'command -v flock >/dev/null 2>&1 || exit 0; '
    f'for f in "$HOME"/{CLAIMS_DIR}/*.lock; do '
    '[ -e "$f" ] || continue; '
    'flock -n "$f" true 2>/dev/null; '
    'if [ $? -eq 1 ]; then basename "$f" .lock; fi; '
    'done; exit 0'
)


def held_claims_command() -> str:
    """Shell (any login shell: it runs `sh -c`) printing the UUIDs claimed now, one a line.

    Always exits 0; prints nothing when there is no claims directory or no `flock`.

    Returns:
        The command line.
    """
    return f"sh -c {shlex.quote(_HELD)}"


def parse_held_claims(text: str) -> frozenset[str]:
    """The GPU UUIDs in `held_claims_command`'s output (other lines are ignored).

    Args:
        text: The command's standard output.

    Returns:
        The claimed UUIDs.
    """
    return frozenset(line.strip() for line in text.splitlines()
                     if GPU_UUID_RE.match(line.strip()))


def parse_claimed(log_text: str) -> list[str] | None:
    """The UUIDs `claim_gpus_script` claimed, from the script's output (its log).

    Args:
        log_text: Standard output of the script (or the log it was written to).

    Returns:
        The claimed UUIDs in `CUDA_VISIBLE_DEVICES` order; None when no claim line is there.
    """
    for line in log_text.splitlines():
        if line.startswith(CLAIMED_PREFIX):
            return [u for u in line[len(CLAIMED_PREFIX):].strip().split(",") if u]
    return None
