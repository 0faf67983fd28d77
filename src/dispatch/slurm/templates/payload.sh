{{code_dir}}
export DISPATCH_CODE_DIR
dispatch_extract() {
    (umask 077 && mkdir -p "$DISPATCH_CODE_DIR")
    chmod 0700 "$DISPATCH_CODE_DIR"
    # One task per node extracts; the others wait on the lock and find the marker.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$DISPATCH_CODE_DIR/.dispatch-lock"
        flock 9
    fi
    if [ "$(cat "$DISPATCH_CODE_DIR/.dispatch-payload" 2>/dev/null || true)" != {{marker}} ]; then
{{extract}}
        printf '%s\n' {{marker}} > "$DISPATCH_CODE_DIR/.dispatch-payload"
    fi
    if command -v flock >/dev/null 2>&1; then
        flock -u 9
        exec 9>&-
    fi
}
dispatch_extract
cd "$DISPATCH_CODE_DIR"
