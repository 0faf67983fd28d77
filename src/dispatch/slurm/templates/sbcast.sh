# The bootstrap is embedded: stage it here, then put it at the same path on every node
# (sbcast; the directory must exist on all nodes, e.g. /tmp or a home directory).
dispatch_bootstrap={{bootstrap_path}}
(umask 077 && mkdir -p "$(dirname "$dispatch_bootstrap")")
(umask 077 && cat > "$dispatch_bootstrap.staged") <<'{{eof}}'
{{bootstrap}}
{{eof}}
chmod 0700 "$dispatch_bootstrap.staged"
if [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]; then
    sbcast --force "$dispatch_bootstrap.staged" "$dispatch_bootstrap"
    rm -f "$dispatch_bootstrap.staged"
else
    mv -f "$dispatch_bootstrap.staged" "$dispatch_bootstrap"
fi
