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

# Team profile (docker-compose.team.yml; the laptop stack sets none of this):
# - MLFLOW_AUTH_DATABASE_URI set: the sign-in app's ini (--app-name basic-auth) is written from
#   the environment to MLFLOW_AUTH_CONFIG_PATH, on a tmpfs, never into an image. It holds no
#   secret: MLflow reads the admin password from MLFLOW_AUTH_ADMIN_PASSWORD, and libpq the
#   database password from PGPASSWORD.
# - a PostgreSQL store: the server starts once the database answers, and a wrong password or
#   database is one line in the log, not a traceback per worker. No migration here: the
#   db-migrate job runs them once, before any server starts.
if [ -n "${MLFLOW_AUTH_DATABASE_URI:-}" ]; then
    auth_ini="${MLFLOW_AUTH_CONFIG_PATH:?must be set with MLFLOW_AUTH_DATABASE_URI}"
    mkdir -p "$(dirname "$auth_ini")"
    (
        umask 077
        cat > "$auth_ini" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# Each worker trusts a verified password this long instead of hashing it on every request
# (PBKDF2: a third of the throughput without it); a changed password applies within it.
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60}
INI
    )
fi

if [[ "$store" == postgresql* ]]; then
    python - "$store" <<'PY'
import os
import sys
import time

import sqlalchemy

url = sqlalchemy.engine.make_url(sys.argv[1])
where = url.render_as_string(hide_password=True)
# A database that is restarting answers within seconds; one with a wrong password never does.
deadline = time.monotonic() + float(os.environ.get("MLFLOW_DB_WAIT_SECONDS", "60"))
engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
while True:
    try:
        with engine.connect():
            break
    except sqlalchemy.exc.OperationalError as error:
        lines = [line.strip() for line in str(error.orig).splitlines() if line.strip()]
        reason = next((x.split("FATAL:", 1)[1].strip() for x in lines if "FATAL:" in x), None)
        reason = reason or (lines[-1] if lines else type(error.orig).__name__)
        final = "password authentication failed" in reason or "does not exist" in reason
        if final or time.monotonic() > deadline:
            sys.exit(f"start-server: cannot connect to the tracking store {where}: {reason}")
        time.sleep(1)
PY
fi

exec mlflow server "$@"
