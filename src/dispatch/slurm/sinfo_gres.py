"""Which GPU GRES types each partition carries (``sinfo -o %P|%G``), for the placement probes.

Split from `dispatch.slurm.parse` (which re-exports these names) to keep modules small.
"""

from __future__ import annotations

__all__ = ["SINFO_PARTITION_GRES_ARGS", "parse_sinfo_gres", "parse_sinfo_gres_counts"]

#: sinfo, ``partition|gres`` per line (one line per distinct GRES of a partition; the
#: default partition has a ``*``). For the placement probes (`parse_sinfo_gres`).
SINFO_PARTITION_GRES_ARGS: list[str] = ["sinfo", "--noheader", "--format=%P|%G"]


def parse_sinfo_gres(text: str) -> dict[str, set[str]]:
    """Parse `SINFO_PARTITION_GRES_ARGS` output: partition -> GPU GRES types its nodes carry.

    ``gpu:h100:4(S:0-1)`` gives ``h100``; an untyped ``gpu:4`` gives ``""``; ``(null)``
    gives nothing.
    """
    return {part: set(types) for part, types in parse_sinfo_gres_counts(text).items()}


def parse_sinfo_gres_counts(text: str) -> dict[str, dict[str, int]]:
    """Parse `SINFO_PARTITION_GRES_ARGS` output: partition -> GPU GRES type -> most on a node.

    Like `parse_sinfo_gres`, with the largest per-node count seen for each type (sinfo
    prints one line per distinct GRES, so a mixed partition has several lines); 0 when
    the count cannot be read.
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
    """Split on commas outside parentheses: ``gpu:a:2(S:0,1),gpu:b:1``; ``(null)`` dropped."""
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
