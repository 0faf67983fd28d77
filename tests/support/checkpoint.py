"""The checkpointing job the restart tests (requeue, resubmit) submit, and reading its output."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Checkpoints on SIGUSR1 (the signal before the time limit) and on SIGTERM (what Slurm
# 22.05 sends a preempted step): writes its state, exits 0; a restarted run resumes and ends.
CHECKPOINTING = r"""
echo "run $DISPATCH_RESTART task ${SLURM_ARRAY_TASK_ID:-none}"
if [ -f "$DISPATCH_CHECKPOINT_DIR/state" ]; then
    echo "resumed from $(cat "$DISPATCH_CHECKPOINT_DIR/state")"
    echo done
    exit 0
fi
trap 'echo 41 > "$DISPATCH_CHECKPOINT_DIR/state"; echo checkpointed; exit 0' USR1 TERM
echo started
for i in $(seq 1 900); do sleep 1 & wait $!; done
echo "no signal came"
exit 3
"""


def cpu_partition(env: Mapping[str, str]) -> str:
    """The testbed's preemptible CPU partition."""
    return env.get("DISPATCH_TESTBED_CPU_PARTITION", "cpu")


def payload_lines(lines: Iterable[str]) -> list[str]:
    """The command's own lines (without srun's, slurmstepd's and the bootstrap's)."""
    noise = ("dispatch-bootstrap:", "srun:", "slurmstepd")
    return [line for line in lines if not line.startswith(noise)]
