"""Why a SLURM job is pending, in words: a pure table of squeue's reason codes (``%r``).

Each entry says what the reason means and what would change it. The many limit reasons
(``AssocGrpGRES``, ``QOSMaxCpuPerUserLimit``, ``AssocGrpBillingMinutes`` ...) are built
from their parts: who the limit belongs to (association or QOS), whether it caps a group
(``Grp``: everyone under it together) or one job/user/account (``Max``), and which
resource. Unknown codes get a generic explanation pointing at ``scontrol show job``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PendingReason", "explain_reason", "REASONS"]


@dataclass(frozen=True)
class PendingReason:
    """A pending job's reason code explained.

    ``code`` is squeue's reason (``Resources``); ``detail`` what SLURM printed after it
    (``UnavailableNodes:node3`` for ``ReqNodeNotAvail, UnavailableNodes:node3``), else "".
    ``meaning`` says what holds the job; ``remedy`` what would let it start.
    """

    code: str
    detail: str
    meaning: str
    remedy: str
    known: bool = True

    def describe(self) -> str:
        """One paragraph: ``Code (detail): meaning. remedy``.

        Returns:
            The explanation as one line of text.
        """
        head = f"{self.code} ({self.detail})" if self.detail else self.code
        return f"{head}: {self.meaning} {self.remedy}"


#: Reason code -> (what it means, what would change it).
REASONS: dict[str, tuple[str, str]] = {
    "None": ("The scheduler has not looked at the job yet.",
             "Nothing to do: it is evaluated at the next scheduling pass (seconds)."),
    "Priority": ("Jobs with a higher priority are queued for the same resources ahead of "
                 "this one.",
                 "Wait; a shorter --time lets backfill start it in a gap, and fewer "
                 "resources or another partition may start it sooner."),
    "Resources": ("The job is next in line but the nodes it needs are busy (GPUs, CPUs or "
                  "memory).",
                  "Wait for running jobs to end (squeue --start shows the estimate), or "
                  "ask for fewer GPUs/CPUs/memory or another partition."),
    "Dependency": ("The job waits for the jobs named in its --dependency.",
                   "It starts when they reach the required state; cancel and resubmit "
                   "without the dependency to run it now."),
    "DependencyNeverSatisfied": (
        "A job it depends on ended in a state that can never satisfy the dependency "
        "(e.g. afterok on a failed job).",
        "It will never start: cancel it (or resubmit with a different dependency); "
        "--kill-on-invalid-dep=yes cancels such jobs automatically."),
    "JobHeldUser": ("The job is held by its owner (sbatch --hold or scontrol hold).",
                    "Release it: scontrol release JOBID."),
    "JobHeldAdmin": ("An administrator holds the job.",
                     "Only an administrator can release it; ask your site's support."),
    "BeginTime": ("The job asked not to start before its --begin time.",
                  "Wait for that time, or change it: scontrol update JobId=JOBID "
                  "StartTime=now."),
    "ReqNodeNotAvail": ("A node the job needs is unavailable (down, drained, reserved, or "
                        "listed in --nodelist but busy).",
                        "Wait for the node to return, or drop it from --nodelist / add it "
                        "to --exclude; the detail names the unavailable nodes."),
    "NodeDown": ("A node the job needs is down.",
                 "Wait for an administrator to return it, or request other nodes."),
    "BadConstraints": ("No node can satisfy the job's constraints (--constraint, memory, "
                       "GPUs per node ...).",
                       "Relax the constraints: check the partition's nodes with sinfo / "
                       "scontrol show node."),
    "PartitionDown": ("The partition is down.",
                      "Wait until an administrator brings it up, or use another "
                      "partition."),
    "PartitionInactive": ("The partition is inactive: it accepts no jobs now.",
                          "Use another partition or ask the administrators."),
    "PartitionNodeLimit": ("The job asks for more (or fewer) nodes than the partition "
                           "allows.",
                           "Change --nodes to fit the partition's MinNodes/MaxNodes."),
    "PartitionTimeLimit": ("The job's --time exceeds the partition's MaxTime.",
                           "Lower --time (scontrol update JobId=JOBID TimeLimit=...)."),
    "PartitionConfig": ("The job's request does not fit the partition's configuration "
                        "(e.g. allowed accounts or QOS).",
                        "Use a partition that allows it."),
    "Reservation": ("The job waits for its advanced reservation to start.",
                    "Wait for the reservation, or submit without --reservation."),
    "Licenses": ("The licenses the job asked for (--licenses) are all in use.",
                 "Wait for other jobs to release them, or ask for fewer."),
    "InvalidAccount": ("The job's account is invalid or not allowed on this partition.",
                       "Cancel and resubmit with a valid --account."),
    "InvalidQOS": ("The job's QOS is invalid for its account or partition.",
                   "Cancel and resubmit with a valid --qos."),
    "QOSNotAllowed": ("The QOS is not allowed in this partition.",
                      "Resubmit with a QOS the partition allows."),
    "AccountNotAllowed": ("The account may not use this partition.",
                          "Resubmit with another --account or --partition."),
    "Cleaning": ("The job is being requeued and SLURM is still cleaning up its previous "
                 "run.", "Wait a few seconds."),
    "launch failed requeued held": ("Launching the job failed; it was requeued and held.",
                                    "Check the node, then scontrol release JOBID."),
    "JobArrayTaskLimit": ("The array's throttle (%N in --array) already has that many "
                          "elements running.",
                          "Wait for elements to finish, or raise it: scontrol update "
                          "JobId=JOBID ArrayTaskThrottle=N."),
    "FrontEndDown": ("No front-end node is available to run the job.",
                     "Wait for the administrators."),
    "SystemFailure": ("A SLURM or file system failure holds the job.",
                      "Wait for the administrators."),
    "TimeLimit": ("The job exceeded its time limit.", "Nothing can restart it as is."),
    "BurstBufferResources": ("Burst buffer space is not available.",
                             "Wait, or ask for less burst buffer."),
    "BurstBufferStageIn": ("The burst buffer is staging data in.", "Wait."),
    "Prolog": ("The job's PrologSlurmctld is running.", "Wait."),
    "MaxRequeue": ("The job was requeued too many times.",
                   "Resubmit it; find out why its runs failed."),
}

_RESOURCES: dict[str, str] = {
    "Cpu": "CPUs",
    "GRES": "GPUs or other generic resources (GRES)",
    "Mem": "memory",
    "Node": "nodes",
    "Billing": "billing units (the site's weighted count of CPUs, memory and GPUs)",
    "Energy": "energy",
    "License": "licenses",
    "Jobs": "running jobs",
    "SubmitJob": "queued and running jobs",
    "Wall": "wall-clock time",
    "Unknown": "an unknown resource",
}

_LIMIT = re.compile(
    r"^(?P<owner>Assoc|QOS)(?P<kind>Grp|Max)(?P<res>Cpu|GRES|Mem|Node|Billing|Energy|License"
    r"|Jobs|SubmitJob|Wall|Unknown)(?P<rest>[A-Za-z]*)$"
)


def _limit(code: str) -> tuple[str, str] | None:
    """Meaning and remedy for an ``Assoc``/``QOS`` ``Grp``/``Max`` limit reason."""
    m = _LIMIT.match(code)
    if m is None:
        return None
    owner = "your association (account/user)" if m["owner"] == "Assoc" else "the job's QOS"
    res = _RESOURCES[m["res"]]
    rest = m["rest"].removesuffix("Limit")
    minutes = "RunMinutes" in rest or rest.startswith("Minutes") or "Minutes" in rest
    per = re.search(r"Per(User|Account|Job|Node)", rest)
    who = {"User": "per user", "Account": "per account", "Job": "per job",
           "Node": "per node"}.get(per.group(1) if per else "", "")
    if m["kind"] == "Grp":
        scope = f"the total that all jobs under {owner} may use together"
    else:
        scope = f"the most {who or 'per job'} that {owner} allows"
    what = f"{res} x minutes (running jobs' remaining time)" if minutes else res
    meaning = f"Starting it would exceed a limit on {what}: {scope}."
    if m["kind"] == "Grp" or who in ("per user", "per account"):
        remedy = ("It starts when jobs counted against the limit finish (yours or your "
                  "group's); or ask for less, or use another account/QOS "
                  "(sacctmgr show assoc / show qos lists the limits).")
    else:
        remedy = ("It can never start as requested: ask for less, or use another QOS/"
                  "account (sacctmgr show qos lists the limits).")
    return meaning, remedy


def explain_reason(reason: str) -> PendingReason:
    """Explain a pending reason as squeue prints it (``%r``), with what would change it.

    Args:
        reason: The reason text, e.g. ``"Resources"``, ``"(Priority)"`` or
            ``"ReqNodeNotAvail, UnavailableNodes:node3"``.

    Returns:
        The `PendingReason`; ``known`` is False for a code not in the table.
    """
    text = reason.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    code, _, detail = text.partition(",")
    code, detail = code.strip(), detail.strip()
    if not code:
        code = "None"
    if code in REASONS:
        meaning, remedy = REASONS[code]
        return PendingReason(code, detail, meaning, remedy)
    limit = _limit(code)
    if limit is not None:
        return PendingReason(code, detail, *limit)
    return PendingReason(
        code, detail, "SLURM gave a reason dispatch has no explanation for.",
        "See `scontrol show job JOBID` and the squeue manual's JOB REASON CODES.",
        known=False)
