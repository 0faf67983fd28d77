"""Ask once, not in sequence: several read-only commands in ONE remote command (one `run`).

Each command's stdout and stderr are followed by a marker line holding a random token
(and, on stdout, the command's exit status), so the joint output splits back into one
`RunResult` per command exactly as if each had been run alone. The commands run in order
under ``sh -c`` (POSIX whatever the login shell is; the login shell still sets PATH).
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Sequence

from ..results import RunResult
from ..ssh import run

__all__ = ["together_command", "split_together", "run_together"]

#: Read-only commands are retried once when the connection broke (as `query.query`).
RETRIES = 1


def _marker(token: str) -> str:
    return f"--dispatch-{token}--"


def together_command(argvs: Sequence[Sequence[str]], token: str) -> list[str]:
    """The argv (``sh -c SCRIPT``) running every ``argv`` in turn, each followed by marker
    lines: ``\\n<marker> <exit status>`` on stdout and ``\\n<marker>`` on stderr.

    Args:
        argvs: The commands, each an argv (quoted item by item).
        token: A random hex token that the commands' output cannot contain by chance.

    Returns:
        The argv to give to `run`.
    """
    if not re.fullmatch(r"[0-9a-f]{8,64}", token):
        raise ValueError(f"token must be 8-64 lowercase hex digits, not {token!r}")
    mark = _marker(token)
    steps = [
        f"{shlex.join(list(argv))}; printf '\\n{mark} %s\\n' \"$?\"; printf '\\n{mark}\\n' >&2"
        for argv in argvs
    ]
    return ["sh", "-c", "\n".join(steps)]


def split_together(result: RunResult, count: int, token: str) -> list[RunResult]:
    """Split the result of `together_command` back into ``count`` per-command results.

    A command whose marker is missing (the connection broke, the call timed out, the
    shell failed) gets the joint result's returncode (1 if that was 0) and whatever
    output is left; the commands after it get the same returncode and no output.

    Args:
        result: What `run` returned for the joint command.
        count: How many commands were joined.
        token: The token given to `together_command`.

    Returns:
        One `RunResult` per command, in order.
    """
    mark = re.escape(_marker(token))
    out_marks = list(re.finditer(rf"\n{mark} (\d+)\n", result.stdout))
    err_marks = list(re.finditer(rf"\n{mark}\n", result.stderr))
    failed_rc = result.returncode if result.returncode != 0 else 1
    results: list[RunResult] = []
    out_pos = err_pos = 0
    for i in range(count):
        if i < len(out_marks):
            m = out_marks[i]
            stdout, out_pos, rc = result.stdout[out_pos:m.start()], m.end(), int(m.group(1))
            if i < len(err_marks):
                e = err_marks[i]
                stderr, err_pos = result.stderr[err_pos:e.start()], e.end()
            else:
                stderr, err_pos = result.stderr[err_pos:], len(result.stderr)
            results.append(RunResult(rc, stdout, stderr))
            continue
        rest_out, rest_err = result.stdout[out_pos:], result.stderr[err_pos:]
        out_pos, err_pos = len(result.stdout), len(result.stderr)
        if not rest_err and i == len(out_marks) and result.returncode == 0:
            rest_err = "dispatch: the joint SLURM query ended before this command answered\n"
        results.append(RunResult(failed_rc, rest_out, rest_err,
                                 may_have_run=result.may_have_run))
    return results


async def run_together(
    argvs: Sequence[Sequence[str]], host: str, timeout: float | None
) -> list[RunResult]:
    """Run read-only commands in one round of `run` (retried once if the connection broke).

    Args:
        argvs: The commands, each an argv.
        host: SSH host alias.
        timeout: Seconds for the whole joint call (None: no limit).

    Returns:
        One `RunResult` per command, in order, as if each had been run alone.
    """
    token = secrets.token_hex(8)
    joint = await run(together_command(argvs, token), host, timeout=timeout, retries=RETRIES)
    return split_together(joint, len(argvs), token)
