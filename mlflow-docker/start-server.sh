#!/usr/bin/env bash
# Start `mlflow server` (its settings are MLflow's own MLFLOW_* variables, set in the image).
# What MLflow does not do itself: a SQLite store whose schema is older than this MLflow's is
# backed up beside itself before the server migrates it, with no manual step.
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

exec mlflow server "$@"
