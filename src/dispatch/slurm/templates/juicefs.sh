dispatch_jfs_mnt={{mount_point}}
dispatch_jfs_mounted=0
if ! command -v juicefs >/dev/null 2>&1; then
    dispatch_die "juicefs not found on $(uname -n)" 127
fi
if mountpoint -q "$dispatch_jfs_mnt"; then
    :
elif [ "${SLURM_LOCALID:-0}" = 0 ]; then
    mkdir -p "$dispatch_jfs_mnt"
    {{password}}juicefs mount --background {{options}}{{url}} "$dispatch_jfs_mnt"
    dispatch_jfs_mounted=1
else
    # Another task on this node mounts it; wait for it (up to 120 s).
    for _ in $(seq 1 120); do
        if mountpoint -q "$dispatch_jfs_mnt"; then break; fi
        sleep 1
    done
fi
dispatch_cleanup() {
    if [ "$dispatch_jfs_mounted" = 1 ]; then
        juicefs umount "$dispatch_jfs_mnt" || fusermount -u "$dispatch_jfs_mnt" || true
    fi
}
