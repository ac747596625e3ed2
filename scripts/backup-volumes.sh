#!/usr/bin/env bash
# Back up or restore the tracking store and artifacts of a running stack.
#
#   scripts/backup-volumes.sh backup  [DIR]   -> DIR/store.tgz, DIR/artifacts.tgz
#                                               (default DIR: $BACKUP_ROOT/<UTC timestamp>)
#   scripts/backup-volumes.sh restore DIR     replaces the stack's store and artifacts
#
# Backup runs while the server serves: SQLite's online backup API takes a consistent copy
# of the database, and artifact files are never rewritten once logged. Restore stops the
# server, backs up what is there, replaces both volumes' contents, and starts it again.
# BACKUP_ROOT: where backups go by default (default: backups).
# Uses `docker compose` (or docker-compose) in this folder; COMPOSE_PROJECT_NAME is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi

root="${BACKUP_ROOT:-backups}"

usage() { echo "usage: $0 backup [DIR] | restore DIR" >&2; exit 2; }
[ $# -ge 1 ] || usage

case "$1" in
backup)
    dir="${2:-$root/$(date -u +%Y%m%dT%H%M%SZ)}"
    mkdir -p "$dir"
    "${compose[@]}" exec -T mlflow bash -c '
        set -euo pipefail
        tmp=$(mktemp -d)
        python -c "import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))" \
            /mlflow/store/mlflow.db "$tmp/mlflow.db"
        tar -C "$tmp" -cz mlflow.db
        rm -rf "$tmp"' > "$dir/store.tgz"
    "${compose[@]}" exec -T mlflow tar -C /mlflow/artifacts -cz . > "$dir/artifacts.tgz"
    echo "backed up to $dir ($(du -sh "$dir" | cut -f1))"
    ;;
restore)
    dir="${2:-}"
    [ -n "$dir" ] || usage
    for part in store artifacts; do
        [ -s "$dir/$part.tgz" ] || { echo "error: $dir/$part.tgz is missing or empty" >&2; exit 2; }
        gzip -t "$dir/$part.tgz" || { echo "error: $dir/$part.tgz is not a valid archive" >&2; exit 2; }
    done
    # What is there now is kept too: a restore from the wrong folder loses nothing.
    "$0" backup "$root/before-restore-$(date -u +%Y%m%dT%H%M%SZ)"
    "${compose[@]}" stop mlflow
    for part in store artifacts; do
        "${compose[@]}" run --rm --no-deps -T --entrypoint bash mlflow -c \
            "set -euo pipefail; find /mlflow/$part -mindepth 1 -delete; tar -C /mlflow/$part -xz" \
            < "$dir/$part.tgz"
    done
    "${compose[@]}" up -d mlflow
    echo "restored from $dir; the server is starting"
    ;;
*) usage ;;
esac
