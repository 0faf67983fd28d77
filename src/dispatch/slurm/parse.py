"""Pure parsers for SLURM command output, each paired with the exact arguments that produce it.

Every ``*_ARGS`` constant is the argv the I/O layer runs (it appends the documented extra
arguments such as ``--jobs=ID`` or ``--partition=P``); the matching ``parse_*`` function turns
that command's stdout into result objects. Formats are delimited (``|``), never fixed-width,
and the one free-text field (the job name) comes last so names containing ``|`` or spaces
parse. Parsers never raise on malformed input: bad lines are skipped and logged at debug.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

from .arrays import split_array_id
from .models import JobInfo, JobStatus, NodeGres, NodeInfo, PartitionInfo
from .nodelist import expand_nodelist, split_top_level
from .sinfo_gres import SINFO_PARTITION_GRES_ARGS, parse_sinfo_gres, parse_sinfo_gres_counts
from .states import is_terminal, normalize_state
from .tokens import parse_comment

__all__ = [
    "SQUEUE_ARGS",
    "SQUEUE_COMMENT_ARGS",
    "SQUEUE_SUCCESSOR_ARGS",
    "SACCT_ARGS",
    "SACCT_COMMENT_ARGS",
    "SCONTROL_NODE_ARGS",
    "SINFO_PARTITION_ARGS",
    "SINFO_GPU_ARGS",
    "SINFO_GPU_USABLE_ARGS",
    "SINFO_NODES_ARGS",
    "SINFO_PARTITION_GRES_ARGS",
    "SqueueRow",
    "parse_sbatch_parsable",
    "parse_squeue",
    "parse_squeue_rows",
    "parse_squeue_comments",
    "parse_squeue_successors",
    "parse_sacct",
    "parse_sacct_comments",
    "parse_scontrol_nodes",
    "parse_sinfo_partitions",
    "parse_default_partition",
    "parse_available_gpus",
    "parse_partition_nodes",
    "parse_sinfo_gres",
    "parse_sinfo_gres_counts",
    "parse_gres",
    "parse_tres",
    "node_state_usable",
]

log = logging.getLogger(__name__)

# --- argv constants ------------------------------------------------------------------------

#: squeue, one job per line (THE squeue format: `status`, `queue` and the shared poller all
#: use it): restart count | raw wait status | reason | unique id | raw id (123_4,
#: 123_[1-5], 123+0) | partition | user | long state | elapsed | node count | nodelist or
#: (reason) | comment US name (both free text, last; US is the ASCII unit separator
#: ``\x1f``: a dispatch comment never holds one, a name may hold anything). ``--Format``
#: fields of width 0 (no truncation). The comment gives a resubmitted job's restarts
#: before it (`.tokens`). Caller appends e.g. ``--jobs=1,2,3`` or ``--user=NAME``.
SQUEUE_ARGS: list[str] = [
    "squeue",
    "--noheader",
    "--Format=RestartCnt:0|,exit_code:0|,Reason:0|,JobID:0|,JobArrayID:0|,Partition:0|,"
    "UserName:0|,State:0|,TimeUsed:0|,NumNodes:0|,ReasonList:0|,Comment:0\x1f,Name:0|",
]

#: squeue: unique job id | comment (last; free text). For recovering a submission by token.
SQUEUE_COMMENT_ARGS: list[str] = ["squeue", "--noheader", "--format=%A|%k"]

#: squeue for resubmitted successors: array job id (a plain job's own id) | array index
#: (``N/A`` for a plain job; ``3`` for a one-element array, pending or not; ``2-3`` for a
#: pending remainder) | comment (last; free text).
SQUEUE_SUCCESSOR_ARGS: list[str] = ["squeue", "--noheader", "--format=%F|%K|%k"]

#: sacct, one job or step per line, name last. Caller appends ``--jobs=ID``.
SACCT_ARGS: list[str] = [
    "sacct",
    "--noheader",
    "--parsable2",
    "--format=JobID,Partition,State,ExitCode,Elapsed,MaxRSS,NodeList,JobName",
]

#: sacct: job id | comment (last). Comments are stored only with
#: ``AccountingStoreFlags=job_comment``. Caller appends ``--starttime=...`` / ``--user=...``.
SACCT_COMMENT_ARGS: list[str] = [
    "sacct",
    "--noheader",
    "--parsable2",
    "--allocations",
    "--format=JobID,Comment",
]

#: scontrol, one line per node. Caller appends node names (comma-joined or a hostlist).
SCONTROL_NODE_ARGS: list[str] = ["scontrol", "--oneliner", "show", "node"]

#: sinfo, one line per partition and node-state group: name (``*`` marks the default) |
#: availability | node count | CPUs A/I/O/T | nodelist.
SINFO_PARTITION_ARGS: list[str] = ["sinfo", "--noheader", "--format=%P|%a|%D|%C|%N"]

#: sinfo, one line per node: node name | long state | configured GRES | used GRES.
#: ``--Format`` fields use width 0 (no padding, no truncation) and ``|`` as suffix so the
#: columns never run together. Caller appends ``--partition=P``.
SINFO_GPU_ARGS: list[str] = [
    "sinfo",
    "--noheader",
    "--Node",
    "--Format=NodeList:0|,StateLong:0|,Gres:0|,GresUsed:0",
]

#: `SINFO_GPU_ARGS` plus what decides whether a free GPU can be used: CPUs
#: allocated/idle/other/total | configured memory (MB) | allocated memory (MB). A node
#: whose CPUs or memory are all taken has no usable GPU. Caller appends ``--partition=P``.
SINFO_GPU_USABLE_ARGS: list[str] = [
    "sinfo",
    "--noheader",
    "--Node",
    "--Format=NodeList:0|,StateLong:0|,Gres:0|,GresUsed:0|,CPUsState:0|,Memory:0|,AllocMem:0",
]

#: sinfo, node names (``%N``, not hostnames ``%n``), one per line. Caller appends
#: ``--partition=P``.
SINFO_NODES_ARGS: list[str] = ["sinfo", "--noheader", "--Node", "--format=%N"]



# --- helpers -------------------------------------------------------------------------------

_JOB_ID_HEAD = re.compile(r"^(\d+)")
# What may follow a job id in squeue's %i: nothing, an element, a pending range.
_ARRAY_TAIL = re.compile(r"(_\d+|_\[[^\]]*\])?")
# An array index list as squeue's %K prints it (``3``, ``2-3``, ``1,3,5-9:2%2``).
_TASK_SPEC = re.compile(r"[0-9,:%\-\[\]]+")
_SIZE_SUFFIX = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
_COUNT = re.compile(r"^(\d+)([KMGTP]?)$", re.IGNORECASE)


def _lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if line.strip():
            yield line.rstrip("\r")


def _int(text: str) -> int | None:
    """A plain decimal integer, else None (not ``int()``: it reads ``"9686_3"`` as 96863)."""
    s = text.strip()
    digits = s[1:] if s.startswith("-") else s
    return int(s) if digits.isascii() and digits.isdigit() else None


def _count(text: str) -> int | None:
    m = _COUNT.match(text.strip())
    if m is None:
        return None
    return int(m.group(1)) * _SIZE_SUFFIX[m.group(2).upper()]


def _null(text: str) -> bool:
    return text.strip() in {"", "(null)", "N/A", "n/a", "none", "None"}


def parse_sbatch_parsable(text: str) -> int | None:
    """Job id from ``sbatch --parsable`` output (``123`` or ``123;cluster``), else None."""
    for line in _lines(text):
        head = line.strip().split(";", 1)[0]
        if head.isdigit():
            return int(head)
    return None


# --- squeue --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SqueueRow:
    """One squeue line: the parsed status plus the ids needed to match it to a waited job.

    ``status.job_id`` is the id ``sbatch --parsable`` returned (the array's base id for
    ``123_4``/``123_[1-5]``, the leader for heterogeneous ``123+1``); ``unique_id`` is
    ``%A`` (each array element's own id); ``raw_id`` is ``%i`` verbatim. ``exit_code``
    is ``"status:signal"`` once the job is over (else ``""``); ``reason`` is Slurm's
    reason (``None``, ``Priority``, ``JobHeldUser`` ...).
    """

    raw_id: str
    unique_id: int
    status: JobStatus
    exit_code: str = ""
    reason: str = ""

    @property
    def ids(self) -> frozenset[int]:
        """Ids a caller may have asked about that this row answers for."""
        return frozenset({self.unique_id, self.status.job_id})


def _exit_code(text: str, state: str) -> str:
    """squeue prints the raw wait status (``256`` for exit 1, ``15`` for SIGTERM); give
    sacct's ``"status:signal"`` once the job is over, else ``""``."""
    text = text.strip()
    if not is_terminal(state) or not text.isdigit():
        return ""
    raw = int(text)
    return f"{raw >> 8}:{raw & 0x7F}"


def _carried(comment: str) -> int:
    """Restarts before this job, from a resubmitted job's dispatch comment (else 0)."""
    found = parse_comment(comment)
    return found[1] if found else 0


def parse_squeue_rows(text: str) -> list[SqueueRow]:
    """Parse `SQUEUE_ARGS` output into rows (malformed lines skipped)."""
    rows: list[SqueueRow] = []
    for line in _lines(text):
        parts = line.split("|", 11)
        if len(parts) != 12 or not parts[-1].endswith("|"):
            log.debug("squeue: skipping malformed line %r", line)
            continue
        restarts_s, exit_s, reason, unique_s, raw_id, partition, user, state, elapsed, \
            nodes_s, nodelist, last = parts
        comment, us, name = last.partition("\x1f")
        restarts = _int(restarts_s) if restarts_s.strip().isdigit() and us else None
        unique = _int(unique_s)
        head = _JOB_ID_HEAD.match(raw_id.strip())
        nodes = _int(nodes_s)
        if restarts is None or unique is None or head is None or nodes is None:
            log.debug("squeue: skipping malformed line %r", line)
            continue
        array_job_id, array_task = split_array_id(raw_id)
        status = JobStatus(
            job_id=int(head.group(1)),
            partition=partition.strip(),
            name=name[:-1],  # the name's ``|`` suffix
            user=user.strip(),
            state=normalize_state(state),
            time_elapsed=elapsed.strip(),
            nodes=nodes,
            nodelist=nodelist.strip(),
            array_job_id=array_job_id,
            array_task=array_task,
            raw_id=raw_id.strip(),
            restarts=restarts + _carried(comment),
        )
        rows.append(SqueueRow(raw_id=raw_id.strip(), unique_id=unique, status=status,
                              exit_code=_exit_code(exit_s, status.state),
                              reason=reason.strip()))
    return rows


def parse_squeue(text: str) -> list[JobStatus]:
    """Parse `SQUEUE_ARGS` output into `JobStatus` (state normalized).

    Every array element is its own row (``job_id`` is the array's id; ``raw_id``,
    ``array_job_id`` and ``array_task`` tell the elements apart).
    """
    return [row.status for row in parse_squeue_rows(text)]


def parse_squeue_comments(text: str) -> list[tuple[int, str]]:
    """Parse `SQUEUE_COMMENT_ARGS` output into ``(job_id, comment)`` pairs (an array
    element's ``123_4`` gives its array's id, 123, as sbatch returned it)."""
    out: list[tuple[int, str]] = []
    for line in _lines(text):
        job_s, sep, comment = line.partition("|")
        head = _JOB_ID_HEAD.match(job_s.strip())
        if not sep or head is None or not _ARRAY_TAIL.fullmatch(job_s.strip()[head.end():]):
            log.debug("squeue comments: skipping malformed line %r", line)
            continue
        out.append((int(head.group(1)), comment))
    return out


# --- sacct ---------------------------------------------------------------------------------


def parse_squeue_successors(text: str) -> list[tuple[int, str | None, str]]:
    """Parse `SQUEUE_SUCCESSOR_ARGS` output into ``(array job id, index or None, comment)``
    (index None for a plain job's ``N/A``; malformed lines skipped)."""
    out: list[tuple[int, str | None, str]] = []
    for line in _lines(text):
        parts = line.split("|", 2)
        job = _int(parts[0]) if len(parts) == 3 else None
        task = parts[1].strip() if len(parts) == 3 else ""
        if job is None or not task or (task != "N/A" and not _TASK_SPEC.fullmatch(task)):
            log.debug("squeue successors: skipping malformed line %r", line)
            continue
        out.append((job, None if task == "N/A" else task, parts[2]))
    return out


def parse_sacct(text: str) -> list[JobInfo]:
    """Parse `SACCT_ARGS` output into `JobInfo` (one per job/step).

    ``state`` is normalized (``CANCELLED by 0`` -> ``CANCELLED``); ``job_id`` stays verbatim
    (``123``, ``123.batch``, ``123_4``, ``123+0.0``); array elements also get
    ``array_job_id``/``array_task``.
    """
    out: list[JobInfo] = []
    for line in _lines(text):
        parts = line.split("|", 7)
        if len(parts) != 8:
            log.debug("sacct: skipping malformed line %r", line)
            continue
        job_id, partition, state, exit_code, elapsed, max_rss, nodelist, name = parts
        if not _JOB_ID_HEAD.match(job_id.strip()) or not state.strip():
            log.debug("sacct: skipping malformed line %r", line)
            continue
        out.append(
            JobInfo(
                job_id=job_id.strip(),
                name=name,
                partition=partition.strip(),
                state=normalize_state(state),
                exit_code=exit_code.strip(),
                elapsed=elapsed.strip(),
                max_rss=max_rss.strip(),
                nodelist=nodelist.strip(),
            )
        )
    return out


def parse_sacct_comments(text: str) -> list[tuple[int, str]]:
    """Parse `SACCT_COMMENT_ARGS` output into ``(job_id, comment)`` pairs."""
    out: list[tuple[int, str]] = []
    for line in _lines(text):
        job_s, sep, comment = line.partition("|")
        head = _JOB_ID_HEAD.match(job_s.strip())
        if not sep or head is None:
            log.debug("sacct comments: skipping malformed line %r", line)
            continue
        out.append((int(head.group(1)), comment))
    return out


# --- GRES / TRES ---------------------------------------------------------------------------


def parse_gres(text: str) -> list[tuple[str, str | None, int]]:
    """``gpu:h100:4(S:0-1),shard:8`` -> ``[('gpu', 'h100', 4), ('shard', None, 8)]``.

    Also reads sinfo GresUsed (``gpu:h100:2(IDX:0-1)``, ``gpu:h100:0(IDX:N/A)``), counts with
    suffixes (``4K``) and ``no_consume`` flags. ``(null)`` and malformed items give nothing.
    """
    out: list[tuple[str, str | None, int]] = []
    if _null(text):
        return out
    for item in split_top_level(text.strip()):
        core = item.split("(", 1)[0].strip()
        if not core:
            continue
        fields = [f for f in core.split(":") if f != "no_consume"]
        count: int | None
        if len(fields) == 1:
            name, gtype, count = fields[0], None, 1
        elif len(fields) == 2:
            name, gtype, count = fields[0], None, _count(fields[1])
        elif len(fields) == 3:
            name, gtype, count = fields[0], fields[1] or None, _count(fields[2])
        else:
            count = None
            name, gtype = "", None
        if count is None or not name:
            log.debug("gres: skipping malformed item %r", item)
            continue
        out.append((name, gtype, count))
    return out


def parse_tres(text: str) -> dict[str, int]:
    """``cpu=2,mem=1000M,gres/gpu=4,gres/gpu:h100=2`` -> counts (mem in MB as printed)."""
    out: dict[str, int] = {}
    if _null(text):
        return out
    for item in text.strip().split(","):
        key, sep, value = item.partition("=")
        if not sep:
            continue
        value = value.strip()
        if key.strip() == "mem":
            m = re.match(r"^(\d+(?:\.\d+)?)([KMGT]?)$", value)
            if m:
                scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[m.group(2)]
                out["mem"] = int(float(m.group(1)) * scale)
            continue
        n = _count(value)
        if n is not None:
            out[key.strip()] = n
    return out


def _node_gres(gres_text: str, alloc_tres: dict[str, int]) -> list[NodeGres]:
    """Configured GRES from ``Gres=`` with allocations from ``AllocTRES``.

    Typed allocations (``gres/gpu:h100=2``) are used when present; otherwise the untyped
    total (``gres/gpu=2``) is assigned to the configured entries of that name in order.
    """
    configured = parse_gres(gres_text)
    untyped_left: dict[str, int] = {}
    for name, _, _ in configured:
        untyped_left.setdefault(name, alloc_tres.get(f"gres/{name}", 0))
    result: list[NodeGres] = []
    for name, gtype, count in configured:
        typed_key = f"gres/{name}:{gtype}" if gtype else None
        if typed_key is not None and typed_key in alloc_tres:
            allocated = alloc_tres[typed_key]
            untyped_left[name] = max(0, untyped_left[name] - allocated)
        else:
            allocated = min(count, untyped_left[name])
            untyped_left[name] -= allocated
        result.append(NodeGres(name=name, type=gtype, configured=count, allocated=allocated))
    return result


# --- scontrol show node --------------------------------------------------------------------

_KEY = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)=(.*)$", re.DOTALL)


def _key_values(line: str) -> dict[str, str]:
    """``A=1 OS=Linux 6.1 #1 SMP Reason=x y`` -> dict; words without ``=`` continue a value."""
    out: dict[str, str] = {}
    last: str | None = None
    for word in line.split():
        m = _KEY.match(word)
        if m is not None and m.group(1) not in out:
            last = m.group(1)
            out[last] = m.group(2)
        elif last is not None:
            out[last] += " " + word
    return out


def _list_field(text: str | None) -> list[str]:
    if text is None or _null(text):
        return []
    return [part for part in text.split(",") if part]


def parse_scontrol_nodes(text: str) -> dict[str, NodeInfo]:
    """Parse `SCONTROL_NODE_ARGS` output (``scontrol -o show node``) by node name."""
    out: dict[str, NodeInfo] = {}
    for line in _lines(text):
        kv = _key_values(line)
        name = kv.get("NodeName", "").strip()
        if not name:
            log.debug("scontrol: skipping line without NodeName %r", line[:200])
            continue
        alloc = parse_tres(kv.get("AllocTRES", ""))
        out[name] = NodeInfo(
            name=name,
            state=kv.get("State", "").strip(),
            cpus_total=_int(kv.get("CPUTot", "")) or 0,
            cpus_allocated=_int(kv.get("CPUAlloc", "")) or 0,
            memory_total=_int(kv.get("RealMemory", "")) or 0,
            memory_allocated=_int(kv.get("AllocMem", "")) or alloc.get("mem", 0),
            gres=_node_gres(kv.get("Gres", ""), alloc),
            partitions=_list_field(kv.get("Partitions")),
            features=_list_field(kv.get("AvailableFeatures") or kv.get("Features")),
        )
    return out


# --- sinfo ---------------------------------------------------------------------------------

_UNUSABLE_WORDS = (
    "down",
    "drain",
    "fail",
    "maint",
    "inval",
    "unknown",
    "reboot",
    "future",
    "not_responding",
    "power_down",
    "powering_down",
    "no_respond",
)


def node_state_usable(state: str) -> bool:
    """False for nodes whose GPUs can't be used now: down, drain(ed/ing), fail, not responding.

    Accepts sinfo long states (``drained``, ``down*``, ``mixed-``) and scontrol states
    (``IDLE+DRAIN``, ``DOWN+NOT_RESPONDING``). Powered-down cloud nodes (``idle~``) count
    as usable because SLURM resumes them on demand.
    """
    s = state.strip().lower()
    if not s or "*" in s or s.endswith(("%", "!")):
        return False
    return not any(word in s for word in _UNUSABLE_WORDS)


def parse_sinfo_partitions(text: str) -> list[PartitionInfo]:
    """Parse `SINFO_PARTITION_ARGS` output, merging the per-state lines of a partition.

    The default-partition ``*`` is stripped (see `parse_default_partition`).
    """
    order: list[str] = []
    state: dict[str, str] = {}
    nodes: dict[str, list[str]] = {}
    cpus: dict[str, int] = {}
    count: dict[str, int] = {}
    for line in _lines(text):
        parts = line.split("|")
        if len(parts) != 5:
            log.debug("sinfo partitions: skipping malformed line %r", line)
            continue
        raw_name, avail, nodes_s, cpus_s, nodelist = (p.strip() for p in parts)
        name = raw_name.rstrip("*")
        n_nodes = _int(nodes_s)
        cpu_fields = cpus_s.split("/")
        total_cpus = _int(cpu_fields[-1]) if len(cpu_fields) == 4 else None
        if not name or n_nodes is None or total_cpus is None:
            log.debug("sinfo partitions: skipping malformed line %r", line)
            continue
        if name not in state:
            order.append(name)
            state[name] = avail
            nodes[name] = []
            cpus[name] = 0
            count[name] = 0
        seen = set(nodes[name])
        nodes[name].extend(n for n in expand_nodelist(nodelist) if n not in seen)
        cpus[name] += total_cpus
        count[name] += n_nodes
    return [
        PartitionInfo(
            name=name,
            state=state[name],
            nodes=nodes[name],
            total_cpus=cpus[name],
            total_nodes=count[name],
        )
        for name in order
    ]


def parse_default_partition(text: str) -> str | None:
    """Name of the default partition (marked ``*``) in `SINFO_PARTITION_ARGS` output."""
    for line in _lines(text):
        name = line.split("|", 1)[0].strip()
        if name.endswith("*") and name.rstrip("*"):
            return name.rstrip("*")
    return None


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    return [(1, int(tok)) if tok.isdigit() else (0, tok) for tok in re.split(r"(\d+)", name)]


def _idle_cpus_and_free_mem(cpus_s: str, mem_s: str, alloc_s: str) -> tuple[int, int] | None:
    """Idle CPUs (``I`` of sinfo's ``A/I/O/T``) and unallocated MB, or None if unreadable."""
    cpu_fields = cpus_s.split("/")
    idle = _int(cpu_fields[1]) if len(cpu_fields) == 4 else None
    mem, alloc = _int(mem_s), _int(alloc_s)
    if idle is None or mem is None or alloc is None:
        return None
    return idle, max(0, mem - alloc)


def parse_available_gpus(
    text: str, gpu_type: str | None = None, *, min_cpus: int = 1, min_mem_mb: int = 1
) -> list[tuple[str, int]]:
    """Free GPUs per node from `SINFO_GPU_USABLE_ARGS` (or `SINFO_GPU_ARGS`) output.

    Returns ``(node, free_gpus)`` for nodes with at least one free GPU (of ``gpu_type`` when
    given, case-insensitive), most free first. Nodes that are down, drained, draining,
    failed or not responding are left out: their GPUs don't count. With the CPU and memory
    columns of `SINFO_GPU_USABLE_ARGS`, so are nodes with fewer than ``min_cpus`` idle CPUs
    or ``min_mem_mb`` unallocated MB: a job could not start there (a CPU-only job holding
    every CPU leaves the GPUs free but unusable). Lines in the shorter `SINFO_GPU_ARGS`
    format are not checked for CPUs and memory.
    """
    free: dict[str, int] = {}
    for line in _lines(text):
        parts = [p.strip() for p in line.split("|")]
        if len(parts) not in (4, 7):
            log.debug("sinfo gpus: skipping malformed line %r", line)
            continue
        node, state, gres_s, used_s = parts[:4]
        if not node or node in free:
            continue
        if not node_state_usable(state):
            continue
        if len(parts) == 7:
            room = _idle_cpus_and_free_mem(*parts[4:])
            if room is None:
                log.debug("sinfo gpus: skipping line with unreadable CPUs/memory %r", line)
                continue
            if room[0] < min_cpus or room[1] < min_mem_mb:
                log.debug("sinfo gpus: %s has %d idle CPUs and %d MB free: GPUs unusable",
                          node, room[0], room[1])
                continue

        def _gpus(text: str) -> int:
            return sum(
                n
                for name, gtype, n in parse_gres(text)
                if name == "gpu"
                and (gpu_type is None or (gtype or "").lower() == gpu_type.lower())
            )

        available = max(0, _gpus(gres_s) - _gpus(used_s))
        if available > 0:
            free[node] = available
    return sorted(free.items(), key=lambda item: (-item[1], _natural_key(item[0])))


def parse_partition_nodes(text: str) -> list[str]:
    """Parse `SINFO_NODES_ARGS` output into node names (order kept, duplicates dropped)."""
    out: list[str] = []
    seen: set[str] = set()
    for line in _lines(text):
        for name in expand_nodelist(line.strip()):
            if name not in seen:
                seen.add(name)
                out.append(name)
    return out
