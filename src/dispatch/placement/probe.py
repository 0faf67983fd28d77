"""Discover what a host offers: GPUs via ``nvidia-smi``, SLURM partitions via ``sinfo``.

Unknown GPUs are not dropped silently: each is logged as a WARNING naming the host and
the GPU, and ``strict=True`` turns them into an error. The pure parsing is in
`dispatch.gpu` and `parse_sinfo_partitions` here.
"""

from __future__ import annotations

import logging
import shlex
from typing import TYPE_CHECKING

from ..errors import DispatchError
from .nvidia_smi import GPU_NAME_QUERY, count_chips

if TYPE_CHECKING:
    from ..results import RunResult
    from .config import PartitionConfig

__all__ = [
    "discover_plain_host",
    "discover_slurm_partitions",
    "parse_sinfo_partitions",
    "parse_sinfo_gres",
    "parse_sinfo_gres_counts",
    "SINFO_PARTITION_GRES_ARGS",
]

log = logging.getLogger(__name__)

#: ``sinfo`` arguments printing ``partition|gres`` per line (default partition has a ``*``).
SINFO_PARTITION_GRES_ARGS = ["sinfo", "--noheader", "--format=%P|%G"]


async def _run(cmd: str | list[str], host: str, timeout: float | None) -> RunResult:
    # Read-only queries: one retry when the connection broke is safe.
    from ..ssh.commands import run

    return await run(cmd, host, timeout=timeout, retries=1)


def _nvidia_smi_argv(nvidia_smi: str, args: list[str]) -> str:
    # A path like ~/bin/nvidia-smi must keep its ~ unquoted so the remote shell expands it.
    if nvidia_smi.startswith("~/"):
        exe = "~/" + shlex.quote(nvidia_smi[2:])
    else:
        exe = shlex.quote(nvidia_smi)
    return " ".join([exe, *(shlex.quote(a) for a in args)])


async def discover_plain_host(ssh_alias: str, timeout: float = 30.0, *,
                              nvidia_smi: str = "nvidia-smi",
                              strict: bool = False) -> dict[str, int]:
    """Discover chips on a plain SSH host by querying nvidia-smi.

    A GPU that no rule recognises is logged as a warning and not counted (an error if
    `strict`). The query is read-only, so one retry after a broken connection is safe.

    Args:
        ssh_alias: SSH config alias of the host.
        timeout: Seconds allowed for the SSH command.
        nvidia_smi: The nvidia-smi executable, when it is not on the login PATH (a leading
            `~/` is expanded by the remote shell).
        strict: Raise instead of warning when a GPU is not in `SUPPORTED_CHIPS`.

    Returns:
        Chip name -> count, e.g. `{"h100": 8}`; `{}` when the host has no nvidia-smi.

    Raises:
        DispatchError: The SSH command or nvidia-smi failed (with its stderr), its output
            could not be parsed, or (with `strict`) a GPU is unknown.
    """
    cmd = _nvidia_smi_argv(nvidia_smi, GPU_NAME_QUERY)
    result = await _run(cmd, ssh_alias, timeout)
    if result.returncode == 127:
        log.info("%s: no nvidia-smi on the login PATH; no GPUs", ssh_alias)
        return {}
    if not result.ok:
        raise DispatchError(
            f"{ssh_alias}: nvidia-smi failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[:500]}"
        )
    try:
        found = count_chips(result.stdout)
    except ValueError as exc:
        raise DispatchError(f"{ssh_alias}: cannot parse nvidia-smi output: {exc}") from exc
    for name, count in found.unknown.items():
        log.warning("%s: %d GPU(s) %r not in SUPPORTED_CHIPS; not counted", ssh_alias,
                    count, name)
    if found.unknown and strict:
        raise DispatchError(
            f"{ssh_alias}: unknown GPU(s): "
            + ", ".join(f"{n!r} x{c}" for n, c in found.unknown.items())
        )
    return found.chips


def parse_sinfo_partitions(text: str) -> list[PartitionConfig]:
    """Parse `sinfo -h -o %P` (or `%P|...`) lines: one PartitionConfig per partition.

    sinfo prints a partition once per node-state group; the default one ends with `*`.

    Args:
        text: sinfo's standard output.

    Returns:
        One `PartitionConfig` per distinct partition, first-seen order.
    """
    from .config import PartitionConfig

    seen: dict[str, bool] = {}
    for line in text.splitlines():
        name = line.split("|", 1)[0].strip()
        if not name:
            continue
        default = name.endswith("*")
        name = name.rstrip("*")
        seen[name] = seen.get(name, False) or default
    return [PartitionConfig(name=n, default=d) for n, d in seen.items()]


def parse_sinfo_gres(text: str) -> dict[str, set[str]]:
    """Parse `sinfo -h -o '%P|%G'`: partition -> GPU GRES types its nodes carry.

    `gpu:h100:4(S:0-1)` gives `h100`; an untyped `gpu:4` gives `""`; `(null)` gives nothing.

    Args:
        text: sinfo's standard output.

    Returns:
        Partition name -> set of GPU GRES types.
    """
    return {part: set(types) for part, types in parse_sinfo_gres_counts(text).items()}


def parse_sinfo_gres_counts(text: str) -> dict[str, dict[str, int]]:
    """Parse `sinfo -h -o '%P|%G'`: partition -> GPU GRES type -> most GPUs on one node.

    Like `parse_sinfo_gres`, with the largest per-node count seen for each type (sinfo
    prints one line per distinct GRES, so a mixed partition has several lines); 0 when
    the count cannot be read.

    Args:
        text: sinfo's standard output.

    Returns:
        Partition name -> {GPU GRES type: most of it on one node}.
    """
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        part, gres = line.split("|", 1)
        part = part.strip().rstrip("*")
        if not part:
            continue
        types = out.setdefault(part, {})
        for item in _split_gres(gres.strip()):
            fields = item.split("(", 1)[0].split(":")
            if fields[0] != "gpu":
                continue
            if len(fields) >= 3 or (len(fields) == 2 and not fields[1].isdigit()):
                kind, count = fields[1], fields[2] if len(fields) >= 3 else ""
            else:
                kind, count = "", fields[1] if len(fields) == 2 else ""
            n = int(count) if count.isdigit() else 0
            types[kind] = max(types.get(kind, 0), n)
    return out


def _split_gres(gres: str) -> list[str]:
    # Split on commas outside parentheses: "gpu:a:2(S:0,1),gpu:b:1".
    items, depth, cur = [], 0, ""
    for ch in gres:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return [i.strip() for i in items if i.strip() and i.strip() != "(null)"]


async def discover_slurm_partitions(ssh_alias: str,
                                    timeout: float = 30.0,
                                    ) -> list[PartitionConfig]:
    """Discover SLURM partitions on a host.

    Runs `sinfo` on the login host; the partition sinfo marks with `*` gets
    `default=True`.

    Args:
        ssh_alias: SSH config alias of the SLURM login host.
        timeout: Seconds allowed for the SSH command.

    Returns:
        One `PartitionConfig` per partition, in sinfo's order.

    Raises:
        DispatchError: sinfo could not be run (with its stderr).
    """
    result = await _run(["sinfo", "--noheader", "--format=%P"], ssh_alias, timeout)
    if not result.ok:
        raise DispatchError(
            f"{ssh_alias}: sinfo failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[:500]}"
        )
    return parse_sinfo_partitions(result.stdout)
