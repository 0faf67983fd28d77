# Stock SLURM does not set SLURM_TMPDIR: fall back to a private per-job, per-node dir,
# shared by the tasks of this job on this node and removed by the last of them to exit.
# Each task registers in "$dispatch_base/.dispatch-users" under a lock; the lock file is
# removed with the dir, so after taking it a task checks it still locks the live file.
dispatch_base="${TMPDIR:-/tmp}/dispatch-${SLURM_JOB_ID:-$$}-$(uname -n)"
dispatch_base_lock="$dispatch_base.lock"
dispatch_base_registered=0
dispatch_base_locked() {
    while :; do
        (umask 077 && : >>"$dispatch_base_lock") || return 1
        if [ ! -O "$dispatch_base_lock" ] || [ -L "$dispatch_base_lock" ]; then
            dispatch_die "$dispatch_base_lock is not owned by $(id -un)" 1
        fi
        exec 8>>"$dispatch_base_lock"
        flock 8
        if [ "$dispatch_base_lock" -ef /dev/fd/8 ]; then return 0; fi
        exec 8>&-
    done
}
dispatch_base_enter() {
    if command -v flock >/dev/null 2>&1; then
        dispatch_base_locked
    fi
    (umask 077 && mkdir -p "$dispatch_base")
    if [ ! -O "$dispatch_base" ] || [ -L "$dispatch_base" ]; then
        dispatch_die "$dispatch_base is not owned by $(id -un)" 1
    fi
    chmod 0700 "$dispatch_base"
    if command -v flock >/dev/null 2>&1; then
        dispatch_users=$(cat "$dispatch_base/.dispatch-users" 2>/dev/null || echo 0)
        printf '%s\n' "$((dispatch_users + 1))" > "$dispatch_base/.dispatch-users"
        dispatch_base_registered=1
        exec 8>&-
    fi
}
# Called from the EXIT trap; without flock the dir is kept (nothing safe to decide).
dispatch_cleanup_code() {
    [ "$dispatch_base_registered" = 1 ] || return 0
    dispatch_base_locked || return 0
    dispatch_users=$(cat "$dispatch_base/.dispatch-users" 2>/dev/null || echo 1)
    if [ "$dispatch_users" -le 1 ]; then
        rm -rf -- "$dispatch_base" || true
        rm -f -- "$dispatch_base_lock" || true
    else
        printf '%s\n' "$((dispatch_users - 1))" > "$dispatch_base/.dispatch-users"
    fi
    exec 8>&-
}
dispatch_base_enter
