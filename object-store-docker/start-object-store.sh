#!/usr/bin/env bash
# Start the single-node Swift: account, container and object servers on loopback, then the
# proxy (S3 API) on :8080. Runs as the swift user; the data lives on the volume /srv/swift.
# If one daemon exits, the others are stopped and the container exits non-zero, so Compose
# shows it and restarts it, rather than a half-working store.
set -euo pipefail

say() { echo "object-store: $*" >&2; }

if [ -z "${OBJECT_STORE_SECRET_KEY:-}" ]; then
    say "OBJECT_STORE_SECRET_KEY is not set: set it in .env (the S3 secret of the MLflow servers)"
    exit 64
fi
# Swift's config files read % as interpolation (and each reader differently); a space would
# split tempauth's line.
if [[ "$OBJECT_STORE_SECRET_KEY" =~ [[:space:]%] ]]; then
    say "OBJECT_STORE_SECRET_KEY must not contain white space or %: use e.g. \$(openssl rand -hex 32)"
    exit 64
fi

data=/srv/swift
mkdir -p "$data/devices/d1"
# Swift keeps each object's metadata in user extended attributes of its file.
if ! python3 -c 'import os, sys
os.setxattr(sys.argv[1], "user.swift.probe", b"1")
os.removexattr(sys.argv[1], "user.swift.probe")' "$data/devices/d1" 2>/dev/null; then
    say "the data volume ($data) does not support user extended attributes, which Swift needs; use a named volume on ext4 or xfs"
    exit 1
fi
# The hash path prefix and suffix place every object; made once, kept with the data.
if [ ! -s "$data/swift.conf" ]; then
    python3 - "$data/swift.conf" <<'PY'
import secrets, sys
with open(sys.argv[1] + ".tmp", "w") as conf:
    conf.write("[swift-hash]\n"
               f"swift_hash_path_prefix = {secrets.token_hex(16)}\n"
               f"swift_hash_path_suffix = {secrets.token_hex(16)}\n\n"
               "[storage-policy:0]\nname = Policy-0\ndefault = yes\n")
PY
    mv "$data/swift.conf.tmp" "$data/swift.conf"
    say "new data volume: made $data/swift.conf"
fi

# The proxy's config with the S3 secret, in a tmpfs (compose mounts one on /tmp), readable
# by this user only.
conf_dir=/tmp/swift
mkdir -p "$conf_dir"
chmod 700 "$conf_dir"
(umask 077 && python3 - /etc/swift/proxy-server.conf.in "$conf_dir/proxy-server.conf" <<'PY'
import os, sys
secret = os.environ["OBJECT_STORE_SECRET_KEY"]
text = open(sys.argv[1]).read().replace("@S3_SECRET@", secret)
open(sys.argv[2], "w").write(text)
PY
)

pids=()
stop() {
    trap - TERM INT
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait || true
    exit 0
}
trap stop TERM INT

for server in account container object; do
    swift-server "$server" "/etc/swift/$server-server.conf" &
    pids+=($!)
done
swift-server proxy "$conf_dir/proxy-server.conf" &
pids+=($!)
say "started (S3 API on :8080, access key mlflow:s3user)"

set +e
wait -n
status=$?
say "a Swift daemon exited (status $status); stopping the others"
kill -TERM "${pids[@]}" 2>/dev/null
wait
exit $((status == 0 ? 1 : status))
