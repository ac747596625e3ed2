#!/usr/bin/env bash
# Start the tracking server. A store whose schema is older than this MLflow's (made by an
# older release) is first backed up and migrated, with no manual step.
set -euo pipefail

store="${MLFLOW_BACKEND_STORE_URI}"
db_file="${store#sqlite:///}"
if [[ "$store" == sqlite:///* && -s "$db_file" ]]; then
    current=$(python -c 'import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute("select version_num from alembic_version").fetchone()[0])' "$db_file")
    head=$(cat /opt/mlflow-schema-head)
    if [ "$current" != "$head" ]; then
        backup="$db_file.schema-$current.bak"
        cp -p "$db_file" "$backup"
        echo "migrating the tracking store from schema $current to $head (backup: $backup)"
        mlflow db upgrade "$store"
    fi
fi

exec mlflow server \
    --host 0.0.0.0 --port 5000 \
    --workers "${MLFLOW_WORKERS}" \
    --backend-store-uri "$store" \
    --serve-artifacts --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION}" \
    --allowed-hosts "${MLFLOW_ALLOWED_HOSTS}"
