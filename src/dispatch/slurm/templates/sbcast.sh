# The bootstrap is embedded (no shared directory needed): stage it in a private file here,
# sbcast it into a fresh private (0700) directory on each node's local disk, run it there,
# then remove every copy. The staged file and the destination are different paths, so
# nodes that share this disk (one filesystem for all) never copy a file onto itself.
dispatch_nodes=${SLURM_JOB_NUM_NODES:-1}
dispatch_base={{base}}
dispatch_dir="$dispatch_base/dispatch-${SLURM_JOB_ID:-0}-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
dispatch_bootstrap="$dispatch_dir/bootstrap.sh"
dispatch_stage=$(mktemp "$dispatch_base/dispatch-${SLURM_JOB_ID:-0}-stage.XXXXXX")
dispatch_each_node() {
    # One task per node, beside any other step (helper steps never wait for resources).
    srun --overlap --nodes="$dispatch_nodes" --ntasks="$dispatch_nodes" --ntasks-per-node=1 "$@"
}
# shellcheck disable=SC2016,SC2317
dispatch_cleanup() {
    # After the job step, one helper step removes every node's copy. A cancelled or
    # timed-out job can start no step any more: then only this node's copy is removed
    # (the other nodes' 0700 dirs are left to their tmp cleaners).
    rm -f -- "$dispatch_stage"
    dispatch_each_node sh -c 'rm -rf -- "$1" 2>/dev/null || :' sh "$dispatch_dir" 2>/dev/null \
        || rm -rf -- "$dispatch_dir" || :
}
trap dispatch_cleanup EXIT
trap 'exit 143' TERM
(umask 077 && cat > "$dispatch_stage") <<'{{eof}}'
{{bootstrap}}
{{eof}}
chmod 0700 "$dispatch_stage"
# On nodes sharing one disk the directory already exists: it must then be ours.
# shellcheck disable=SC2016
dispatch_mkdir='mkdir -p -m 700 -- "$1" 2>/dev/null; if [ -d "$1" ] && [ ! -L "$1" ] && [ -O "$1" ] && chmod 700 -- "$1"; then exit 0; fi; echo "dispatch: cannot create the private directory $1 on $(uname -n)" >&2; exit 1'
dispatch_each_node sh -c "$dispatch_mkdir" sh "$dispatch_dir"
sbcast --force "$dispatch_stage" "$dispatch_bootstrap"
dispatch_rc=0
srun {{srun_options}}bash -l "$dispatch_bootstrap" || dispatch_rc=$?
exit "$dispatch_rc"
