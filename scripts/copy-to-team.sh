#!/usr/bin/env bash
# Copy a single-user MLflow store into the running team stack (docker-compose.team.yml):
# experiments, runs, metric histories, artifacts, logged models, registered models with their
# versions, tags and aliases (scripts/copy_store.py does the copy; see its header).
#
#   scripts/copy-to-team.sh [FROM]
#
# FROM is either
#   - a laptop stack's compose project name (default: $COMPOSE_PROJECT_NAME, else this
#     folder's name, as Compose names it): its volumes FROM_mlflow-store and
#     FROM_mlflow-artifacts are read, never written; the laptop stack may be running or not;
#   - or a local store: an mlflow.db file, or a folder holding one, with its artifacts folder
#     beside it (mlruns/ or mlartifacts/), or wherever ARTIFACTS=... says.
# The copy runs once in the team profile's MLflow image, on its network, signed in as the
# admin of .env (MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD). Run it again and it
# adds nothing; an interrupted copy is completed. An error is one line on stderr, exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "copy-to-team: $*" >&2; exit 1; }

default_project=$(basename "$PWD" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9_-')
from="${1:-${COMPOSE_PROJECT_NAME:-$default_project}}"

if [[ "$from" == */* || -e "$from" ]]; then
    [ -e "$from" ] || fail "$from: no such file or folder"
    if [ -d "$from" ]; then db="$from/mlflow.db"; else db="$from"; fi
    [ -f "$db" ] || fail "$db: no such file (expected an MLflow store, mlflow.db)"
    db=$(realpath "$db")
    artifacts="${ARTIFACTS:-}"
    if [ -z "$artifacts" ]; then
        for candidate in mlruns mlartifacts artifacts; do
            if [ -d "$(dirname "$db")/$candidate" ]; then
                artifacts="$(dirname "$db")/$candidate"
                break
            fi
        done
    fi
    [ -n "$artifacts" ] || fail "no artifacts folder beside $db (mlruns/ or mlartifacts/): set ARTIFACTS=<folder>"
    [ -d "$artifacts" ] || fail "$artifacts: no such folder (the store's artifacts)"
    # The store's folder, not the file alone: SQLite reads a journal beside it, if any.
    mounts=(-v "$(dirname "$db"):/source/store:ro" -v "$(realpath "$artifacts"):/source/artifacts:ro")
    store="/source/store/$(basename "$db")"
else
    for volume in "${from}_mlflow-store" "${from}_mlflow-artifacts"; do
        docker volume inspect "$volume" >/dev/null 2>&1 \
            || fail "$from: not a file or folder, nor a laptop stack (no volume $volume)"
    done
    mounts=(-v "${from}_mlflow-store:/source/store:ro" -v "${from}_mlflow-artifacts:/source/artifacts:ro")
    store=/source/store/mlflow.db
fi

# The `users` job's service: the MLflow image on the team network, with the tracking server's
# address (http://mlflow:5000) and the admin's credentials in its environment.
exec docker compose -f docker-compose.yml -f docker-compose.team.yml run --rm --no-deps -T \
    "${mounts[@]}" -v "$PWD/scripts/copy_store.py:/opt/team/copy_store.py:ro" -e COPY_FROM="$from" \
    --entrypoint python users /opt/team/copy_store.py "$store" /source/artifacts
