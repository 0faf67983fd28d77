# Checkpoint and restart (SlurmJob.signal_before_end / max_restarts). Slurm sends
# SIG{{signal}} to every process of the job step -- this shell and the command alike --
# signal_before_end seconds before the time limit. On preemption Slurm 22.05 sends the
# step SIGTERM instead (within a second, then GraceTime before the kill), so SIGTERM is
# trapped too. Either way the command saves its state (in $DISPATCH_CHECKPOINT_DIR) and
# exits; this shell only notes the signal. Once the command has exited, task 0 asks
# Slurm to requeue the job (up to max_restarts times) or, where the site refuses, submits
# the same script again with the same token. A SIGTERM restarts the job only when Slurm
# is preempting it (PreemptTime set): a plain `scancel` also sends SIGTERM and must end
# the job. The command sees DISPATCH_RESTART (0 on the first run), DISPATCH_MAX_RESTARTS,
# DISPATCH_CHECKPOINT_SIGNAL and DISPATCH_CHECKPOINT_DIR (kept across restarts).
DISPATCH_RESTART=$(( ${SLURM_RESTART_COUNT:-0} + ${DISPATCH_RESUBMITS:-0} ))
DISPATCH_MAX_RESTARTS={{max_restarts}}
DISPATCH_CHECKPOINT_SIGNAL={{signal}}
dispatch_ckpt_id="${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-$$}}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}"
DISPATCH_CHECKPOINT_DIR="${DISPATCH_CHECKPOINT_DIR:-$DISPATCH_WORK_DIR/.dispatch-checkpoint/$dispatch_ckpt_id}"
export DISPATCH_RESTART DISPATCH_MAX_RESTARTS DISPATCH_CHECKPOINT_SIGNAL DISPATCH_CHECKPOINT_DIR
(umask 077 && mkdir -p "$DISPATCH_CHECKPOINT_DIR")
dispatch_signalled=""
trap 'dispatch_signalled=${dispatch_signalled:-{{signal}}}; dispatch_woken=1' {{signal}}
trap 'dispatch_signalled=${dispatch_signalled:-TERM}; dispatch_woken=1' TERM
bash -c {{command}} &
dispatch_child=$!
# A trapped signal ends `wait` early (status 128+N): wait again for the command's status.
while :; do
    dispatch_woken=0
    wait "$dispatch_child"
    dispatch_rc=$?
    if [ "$dispatch_woken" != 1 ] || [ "$dispatch_rc" -le 128 ]; then break; fi
done
dispatch_preempted() {
    # SIGTERM also comes with scancel and the time limit: restart only a preemption.
    local info
    info=$(scontrol --oneliner show job "$SLURM_JOB_ID") || return 1
    case " $info " in
        *" JobState=RUNNING "*) ;;
        *) return 1 ;;
    esac
    case " $info " in
        *" PreemptTime=None "* | *" PreemptTime=Unknown "*) return 1 ;;
        *" PreemptTime="*) return 0 ;;
    esac
    return 1
}
dispatch_resubmit() {
    # The site would not requeue: submit the same wrapper again, with the same token.
    local info script comment
    info=$(scontrol --oneliner show job "$SLURM_JOB_ID") || return 1
    script=$(printf '%s\n' "$info" | sed -n 's/.* Command=\(.*\) WorkDir=.*/\1/p')
    comment=$(printf '%s\n' "$info" | sed -n 's/.* Comment=\(dispatch:[A-Za-z0-9_-]*\).*/\1/p')
    [ -n "$script" ] && [ -f "$script" ] || return 1
    DISPATCH_RESUBMITS=$((DISPATCH_RESTART + 1)) sbatch --parsable \
        ${comment:+"--comment=$comment"} "$script" >&2
}
if [ "$dispatch_signalled" = TERM ] && [ "$DISPATCH_CHECKPOINT_SIGNAL" != TERM ] \
        && ! dispatch_preempted; then
    dispatch_log "got SIGTERM (cancelled or out of time, not preempted): not restarting"
    dispatch_signalled=""
fi
if [ -n "$dispatch_signalled" ] && [ "${SLURM_PROCID:-0}" = 0 ] \
        && [ "$DISPATCH_RESTART" -lt "$DISPATCH_MAX_RESTARTS" ]; then
    dispatch_log "got SIG$dispatch_signalled: restart $((DISPATCH_RESTART + 1)) of $DISPATCH_MAX_RESTARTS"
    scontrol requeue "$SLURM_JOB_ID" || dispatch_resubmit \
        || dispatch_log "could not requeue or resubmit job $SLURM_JOB_ID"
fi
exit "$dispatch_rc"
