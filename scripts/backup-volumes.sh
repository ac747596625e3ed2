#!/usr/bin/env bash
# Back up or restore a running stack: the laptop stack (docker-compose.yml), or with --team the
# team profile (docker-compose.yml + docker-compose.team.yml).
#
#   scripts/backup-volumes.sh [--team] backup  [DIR]   default DIR: $BACKUP_ROOT/<UTC timestamp>
#   scripts/backup-volumes.sh [--team] restore DIR     replaces what the stack holds with DIR
#
# Laptop: DIR/store.tgz (the SQLite store) and DIR/artifacts.tgz. Backup runs while the server
# serves: SQLite's online backup API takes a consistent copy of the database, and artifact
# files are never rewritten once logged. Restore stops the server, replaces both volumes'
# contents, and starts it again.
#
# Team: DIR/mlflow.dump and DIR/mlflow_auth.dump (pg_dump, custom format: runs and registry;
# users and permissions), DIR/bucket.tgz (every object of the artifact bucket) and
# DIR/SHA256SUMS. Backup runs while the servers serve: each dump is one consistent snapshot of
# its database, and the bucket is read after the dumps, so every artifact the dumped runs
# had finished logging is in it (artifacts are written once). Restore stops the tracking
# servers and the load balancer, recreates both databases from the dumps, empties the bucket,
# puts the objects back, then runs `up` again, whose jobs migrate the schemas if the backup is
# older and set the passwords of .env again (admin, editor, reader; other users keep theirs).
#
# Either restore first checks every file of DIR (a damaged or truncated one: one line, exit 2,
# nothing changed), then backs up what is there now into $BACKUP_ROOT/before-restore-<UTC
# timestamp>: a restore from the wrong folder loses nothing.
# BACKUP_ROOT: where backups go by default (default: backups).
# Uses `docker compose` (or docker-compose for the laptop stack) in this folder;
# COMPOSE_PROJECT_NAME is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

root="${BACKUP_ROOT:-backups}"
self="$0"

usage() { echo "usage: $self [--team] backup [DIR] | [--team] restore DIR" >&2; exit 2; }
fail() { echo "error: $1" >&2; exit "${2:-1}"; }

team=""
if [ "${1:-}" = "--team" ]; then team="--team"; shift; fi
[ $# -ge 1 ] || usage

if [ -n "$team" ]; then
    compose=(docker compose -f docker-compose.yml -f docker-compose.team.yml)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(docker-compose)
fi

# --- laptop stack -----------------------------------------------------------------------------

laptop_backup() {
    local dir="$1"
    "${compose[@]}" exec -T mlflow bash -c '
        set -euo pipefail
        tmp=$(mktemp -d)
        python -c "import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))" \
            /mlflow/store/mlflow.db "$tmp/mlflow.db"
        tar -C "$tmp" -cz mlflow.db
        rm -rf "$tmp"' > "$dir/store.tgz"
    "${compose[@]}" exec -T mlflow tar -C /mlflow/artifacts -cz . > "$dir/artifacts.tgz"
}

laptop_check() {
    local dir="$1" part
    for part in store artifacts; do
        [ -s "$dir/$part.tgz" ] || fail "$dir/$part.tgz is missing or empty" 2
        gzip -t "$dir/$part.tgz" 2>/dev/null || fail "$dir/$part.tgz is not a valid archive" 2
    done
}

laptop_restore() {
    local dir="$1" part
    "${compose[@]}" stop mlflow
    for part in store artifacts; do
        "${compose[@]}" run --rm --no-deps -T --entrypoint bash mlflow -c \
            "set -euo pipefail; find /mlflow/$part -mindepth 1 -delete; tar -C /mlflow/$part -xz" \
            < "$dir/$part.tgz"
    done
    "${compose[@]}" up -d mlflow
}

# --- team profile -----------------------------------------------------------------------------

databases=(mlflow mlflow_auth)
team_files=(mlflow.dump mlflow_auth.dump bucket.tgz)

# Run in the `bucket` job's container (the MLflow image with boto3, on the compose network,
# with the object store's address, keys and bucket): the bucket as a tar.gz on stdout, or
# emptied and filled from one on stdin. Object keys are the archive's member names.
bucket_job() {
    "${compose[@]}" run --rm --no-deps -T --entrypoint python bucket -c '
import os, shutil, sys, tarfile, tempfile
import boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"],
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}))
bucket = os.environ["OBJECT_STORE_BUCKET"]
def keys():
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            yield item
if sys.argv[1] == "save":
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|gz") as tar:
        for item in keys():
            info = tarfile.TarInfo(item["Key"])
            info.size, info.mtime = item["Size"], item["LastModified"].timestamp()
            tar.addfile(info, s3.get_object(Bucket=bucket, Key=item["Key"])["Body"])
else:
    for item in list(keys()):
        s3.delete_object(Bucket=bucket, Key=item["Key"])
    count = 0
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|gz") as tar:
        for member in tar:
            if member.isfile():
                # Through a file, as MLflow itself uploads: any size, nothing held in memory.
                with tempfile.NamedTemporaryFile() as body:
                    shutil.copyfileobj(tar.extractfile(member), body)
                    body.flush()
                    s3.upload_file(body.name, bucket, member.name)
                count += 1
    print(f"restored {count} objects into the bucket {bucket}", file=sys.stderr)
' "$1"
}

team_backup() {
    local dir="$1" db
    # pg_dump in the database's own container, as its superuser over the local socket: the
    # same version as the server, and no password needed.
    for db in "${databases[@]}"; do
        "${compose[@]}" exec -T postgres pg_dump --format=custom -d "$db" > "$dir/$db.dump"
    done
    bucket_job save > "$dir/bucket.tgz"
    (cd "$dir" && sha256sum "${team_files[@]}" > SHA256SUMS)
}

team_check() {
    local dir="$1" file db
    [ -s "$dir/SHA256SUMS" ] || fail "$dir/SHA256SUMS is missing or empty: not a team backup" 2
    for file in "${team_files[@]}"; do
        [ -s "$dir/$file" ] || fail "$dir/$file is missing or empty" 2
        (cd "$dir" && grep -E " \*?$file\$" SHA256SUMS | sha256sum --check --status 2>/dev/null) \
            || fail "$dir/$file is damaged or truncated: its checksum differs from SHA256SUMS" 2
    done
    gzip -t "$dir/bucket.tgz" 2>/dev/null || fail "$dir/bucket.tgz is not a valid archive" 2
    for db in "${databases[@]}"; do
        "${compose[@]}" exec -T postgres pg_restore --list < "$dir/$db.dump" >/dev/null 2>&1 \
            || fail "$dir/$db.dump is not a dump pg_restore can read" 2
    done
}

team_restore() {
    local dir="$1" db
    # The load balancer too: left running without servers it turns unhealthy, and `up --wait`
    # below would give up on it at once instead of waiting for it to start again.
    "${compose[@]}" stop mlflow tracking
    for db in "${databases[@]}"; do
        # A fresh database, then the dump in one transaction, owned as it was (by the role
        # the servers use); every connection to the old one is closed first.
        "${compose[@]}" exec -T -e DB="$db" postgres bash -c 'set -euo pipefail
            printf "%s\n" "DROP DATABASE IF EXISTS :\"db\" WITH (FORCE);" \
                "CREATE DATABASE :\"db\" OWNER :\"owner\";" \
                | psql --no-psqlrc -qX -v ON_ERROR_STOP=1 -d postgres -v db="$DB" -v owner="$POSTGRES_USER"
            pg_restore --exit-on-error --single-transaction -d "$DB"' < "$dir/$db.dump"
    done
    bucket_job load < "$dir/bucket.tgz"
    # The jobs of `up` run again: schemas migrated if the backup is older, passwords of .env.
    "${compose[@]}" up -d --wait
}

# --- commands ---------------------------------------------------------------------------------

kind="${team:+team}"
kind="${kind:-laptop}"

case "$1" in
backup)
    dir="${2:-$root/$(date -u +%Y%m%dT%H%M%SZ)}"
    mkdir -p "$dir"
    "${kind}_backup" "$dir"
    echo "backed up to $dir ($(du -sh "$dir" | cut -f1))"
    ;;
restore)
    dir="${2:-}"
    [ -n "$dir" ] || usage
    [ -d "$dir" ] || fail "$dir: no such folder" 2
    "${kind}_check" "$dir"
    # What is there now is kept too: a restore from the wrong folder loses nothing.
    "$self" ${team:+--team} backup "$root/before-restore-$(date -u +%Y%m%dT%H%M%SZ)"
    "${kind}_restore" "$dir"
    echo "restored from $dir; the server is starting"
    ;;
*) usage ;;
esac
