# Checkpoint and restart (SlurmJob.signal_before_end / max_restarts / restart_by). Slurm
# sends SIG{{signal}} to every process of the job step -- this shell and the command
# alike -- signal_before_end seconds before the time limit. On preemption Slurm 22.05
# sends the step SIGTERM instead (within a second, then GraceTime before the kill), so
# SIGTERM is trapped too. Either way the command saves its state (in
# $DISPATCH_CHECKPOINT_DIR) and exits; this shell only notes the signal. Once the command
# has exited, task 0 brings the job back (up to max_restarts times): restart_by=requeue
# asks Slurm to requeue it (same job id) and, where Slurm refuses, resubmits it;
# restart_by=resubmit (the job has --no-requeue: the site cancels it) submits the same
# wrapper again as a new job with the same token, before the grace time ends. A SIGTERM
# restarts the job only when Slurm is preempting it (PreemptTime set): a plain `scancel`
# also sends SIGTERM and must end the job. The command sees DISPATCH_RESTART (0 on the
# first run), DISPATCH_MAX_RESTARTS, DISPATCH_CHECKPOINT_SIGNAL and DISPATCH_CHECKPOINT_DIR
# (kept across restarts: a resubmitted job gets its predecessor's).
DISPATCH_RESTART=$(( ${SLURM_RESTART_COUNT:-0} + ${DISPATCH_RESUBMITS:-0} ))
DISPATCH_MAX_RESTARTS={{max_restarts}}
DISPATCH_CHECKPOINT_SIGNAL={{signal}}
DISPATCH_RESTART_BY={{restart_by}}
dispatch_ckpt_id="${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-$$}}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}"
DISPATCH_CHECKPOINT_DIR="${DISPATCH_CHECKPOINT_DIR:-$DISPATCH_WORK_DIR/.dispatch-checkpoint/$dispatch_ckpt_id}"
export DISPATCH_RESTART DISPATCH_MAX_RESTARTS DISPATCH_CHECKPOINT_SIGNAL DISPATCH_CHECKPOINT_DIR
export DISPATCH_RESTART_BY
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
dispatch_field() {
    # Field $2 of scontrol's one-line record $1: its text up to the first of the fields
    # named after it (values may hold spaces: paths).
    local record=$1 name=$2 value next
    value=${record#* "$name"=}
    [ "$value" != "$record" ] || return 1
    shift 2
    for next in "$@"; do value=${value%% "$next"=*}; done
    printf '%s' "${value% }"
}
dispatch_resubmit() {
    # Submit the wrapper this job ran again, as a new job with the same token (comment),
    # job name (the wrapper's), work dir and output files (appended: the job's patterns
    # with %j and %A frozen to this run's ids; scontrol's StdOut mangles %%); an array
    # element resubmits only itself. The successor sees DISPATCH_RESTART one higher and
    # the same checkpoint dir.
    # Slurm's variables of this job and step are not passed on (stale values: srun and
    # the restart count would read them); everything else is, as sbatch does by default.
    # Then this job cancels itself: it ends CANCELLED (or PREEMPTED), never COMPLETED,
    # so neither `afterok` dependents nor a waiter take the hand-over for success.
    local info script copy="" workdir comment out err new self
    local -a opts
    info=$(scontrol --oneliner show job "$SLURM_JOB_ID") || return 1
    script=$(dispatch_field "$info" Command WorkDir)
    if [ -z "$script" ] || [ ! -f "$script" ] || [ ! -r "$script" ]; then
        # This node does not see where submit put it (sbcast=True without a shared
        # dir): slurmctld keeps every job's script; a private copy for sbatch to read.
        copy=$(umask 077 && mktemp "${TMPDIR:-/tmp}/dispatch-resubmit.XXXXXX") || return 1
        if ! scontrol write batch_script "$SLURM_JOB_ID" - >"$copy" || [ ! -s "$copy" ]; then
            dispatch_log "job $SLURM_JOB_ID: its batch script ${script:-(none)} is not" \
                "readable here and slurmctld did not give it"
            rm -f -- "$copy"
            return 1
        fi
        script=$copy
    fi
    workdir=$(dispatch_field "$info" WorkDir AdminComment SystemComment Comment StdErr)
    comment=$(dispatch_field "$info" Comment StdErr)
    out={{output}}
    err={{error}}
    opts=(--parsable --open-mode=append)
    [ -n "$workdir" ] && opts+=("--chdir=$workdir")
    [ -n "$out" ] && opts+=("--output=$out")
    [ -n "$err" ] && opts+=("--error=$err")
    [ -n "${SLURM_ARRAY_TASK_ID:-}" ] && opts+=("--array=$SLURM_ARRAY_TASK_ID")
    # The token goes on; "/N" after it: the restarts before the successor (squeue shows
    # them in its status; dispatch.slurm.tokens reads them).
    case $comment in
        dispatch:*/*) comment=${comment%/*} ;;
    esac
    case $comment in
        dispatch:*[!A-Za-z0-9_-]* | dispatch:) comment="" ;;
        dispatch:*)
            comment="$comment/$((DISPATCH_RESTART + 1))"
            opts+=("--comment=$comment")
            ;;
        *) comment="" ;;
    esac
    local submitted=0
    new=$(
        for dispatch_var in $(compgen -e); do
            case $dispatch_var in
                SLURM_CONF) ;;
                SLURM_* | SLURMD_*) unset "$dispatch_var" ;;
            esac
        done
        DISPATCH_RESUBMITS=$((DISPATCH_RESTART + 1)) \
            DISPATCH_CHECKPOINT_DIR=$DISPATCH_CHECKPOINT_DIR sbatch "${opts[@]}" "$script"
    ) || submitted=1
    [ -z "$copy" ] || rm -f -- "$copy"
    [ "$submitted" = 0 ] || return 1
    dispatch_log "resubmitted job $SLURM_JOB_ID as job ${new%%;*}${comment:+ ($comment)}"
    # An element by its array id: an element's own id may be the whole array's.
    self=${SLURM_ARRAY_TASK_ID:+${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID}
    scancel "${self:-$SLURM_JOB_ID}" || dispatch_log "could not cancel job ${self:-$SLURM_JOB_ID}"
    return 0
}
# Slurm signals a step's processes one by one: the command may have checkpointed and
# exited on the preemption's SIGTERM before this shell got its own. Ask once.
if [ -z "$dispatch_signalled" ] && [ "${SLURM_PROCID:-0}" = 0 ] \
        && [ "$DISPATCH_RESTART" -lt "$DISPATCH_MAX_RESTARTS" ] && dispatch_preempted; then
    dispatch_signalled=TERM
fi
if [ "$dispatch_signalled" = TERM ] && [ "$DISPATCH_CHECKPOINT_SIGNAL" != TERM ] \
        && ! dispatch_preempted; then
    dispatch_log "got SIGTERM (cancelled or out of time, not preempted): not restarting"
    dispatch_signalled=""
fi
if [ -n "$dispatch_signalled" ] && [ "${SLURM_PROCID:-0}" = 0 ] \
        && [ "$DISPATCH_RESTART" -lt "$DISPATCH_MAX_RESTARTS" ]; then
    dispatch_log "got SIG$dispatch_signalled: restart $((DISPATCH_RESTART + 1)) of $DISPATCH_MAX_RESTARTS"
    if [ "$DISPATCH_RESTART_BY" = resubmit ]; then
        dispatch_resubmit || dispatch_log "could not resubmit job $SLURM_JOB_ID"
    else
        scontrol requeue "$SLURM_JOB_ID" || dispatch_resubmit \
            || dispatch_log "could not requeue or resubmit job $SLURM_JOB_ID"
    fi
fi
exit "$dispatch_rc"
