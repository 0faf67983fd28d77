"""Survey the GPUs of a fleet of SSH hosts with one concurrent ``run_many`` call.

Usage::

    python examples/fleet_gpu_survey.py                 # hosts from DISPATCH_TESTBED_FLEET,
                                                        # else every alias in your ssh config
    python examples/fleet_gpu_survey.py gpu1 gpu2 ...   # these hosts
    python examples/fleet_gpu_survey.py --json          # one JSON object per host

Each host answers with ``nvidia-smi``'s CSV (one line per GPU), or says it has no
``nvidia-smi``; a host that cannot be reached shows up as such. One slow or broken host
never holds up or spoils the others' answers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field

import dispatch

NO_GPU = "__dispatch_no_nvidia_smi__"
FIELDS = ("index", "uuid", "name", "memory_total_mib", "memory_used_mib", "util_pct")
# One line per GPU: index, uuid, name, total MiB, used MiB, utilisation %. Hosts without
# nvidia-smi print a marker instead, so "no GPU" is an answer, not an error.
QUERY = (
    "if command -v nvidia-smi >/dev/null 2>&1; then "
    "nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu "
    "--format=csv,noheader,nounits; "
    f"else echo {NO_GPU}; fi"
)


@dataclass
class HostReport:
    host: str
    status: str  # "gpus", "no GPU", "nvidia-smi failed", "unreachable"
    gpus: list[dict[str, object]] = field(default_factory=list)
    detail: str = ""


def parse_report(host: str, result: dispatch.RunResult) -> HostReport:
    """Turn one host's RunResult into a report (pure: no I/O)."""
    if result.returncode == 255 and not result.stdout:
        first = (result.stderr.strip().splitlines() or ["connection failed"])[0]
        return HostReport(host, "unreachable", detail=first)
    if NO_GPU in result.stdout:
        return HostReport(host, "no GPU", detail="nvidia-smi not installed")
    if not result.ok:
        first = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[0]
        return HostReport(host, "nvidia-smi failed", detail=first)
    gpus: list[dict[str, object]] = []
    for line in result.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[2]:
            continue
        gpus.append(
            {k: int(v) if v.isdigit() else v for k, v in zip(FIELDS, parts, strict=False)}
        )
    if not gpus:
        return HostReport(host, "no GPU", detail="nvidia-smi lists no GPU")
    return HostReport(host, "gpus", gpus=gpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hosts", nargs="*", help="SSH aliases (default: the testbed fleet)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-host timeout (s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    hosts = args.hosts or os.environ.get("DISPATCH_TESTBED_FLEET", "").split() or dispatch.hosts()
    results = dispatch.run_many(QUERY, hosts, timeout=args.timeout)
    reports = [parse_report(h, results[h]) for h in hosts]

    if args.json:
        print(json.dumps([asdict(r) for r in reports], indent=2))
    else:
        width = max(len(h) for h in hosts)
        for r in reports:
            if r.gpus:
                models = Counter(str(g["name"]) for g in r.gpus)
                what = ", ".join(f"{n} x {m}" for m, n in models.items())
            else:
                what = r.detail
            print(f"{r.host.ljust(width)}  {r.status:<17}  {what}")
    by_status = Counter(r.status for r in reports)
    total = sum(len(r.gpus) for r in reports)
    summary = (
        f"{len(hosts)} hosts: {by_status['gpus']} with GPUs ({total} GPUs), "
        f"{by_status['no GPU']} without, {by_status['nvidia-smi failed']} with a failing "
        f"nvidia-smi, {by_status['unreachable']} unreachable"
    )
    # With --json, stdout stays pure JSON; the summary goes to stderr.
    print(summary, file=sys.stderr if args.json else sys.stdout)
    return 0 if by_status["unreachable"] < len(hosts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
