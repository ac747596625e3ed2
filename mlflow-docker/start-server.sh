#!/usr/bin/env bash
# Start the MLflow tracking server (its settings are MLflow's own MLFLOW_* variables, set in the
# image). What MLflow does not do itself: a SQLite store whose schema is older than this
# MLflow's is backed up beside itself before the server migrates it, with no manual step.
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
# The db-migrate job brings the schema to this MLflow's head before any server starts; a server
# started without it (`up --no-deps`) stops here, not at its first request.
with open("/opt/mlflow-schema-head") as file, engine.connect() as connection:
    head = file.read().strip()
    try:
        current = connection.exec_driver_sql("select version_num from alembic_version").scalar()
    except sqlalchemy.exc.ProgrammingError:
        current = None
if current != head:
    sys.exit(
        f"start-server: the tracking store {where} has schema {current or 'none'}, this MLflow "
        f"needs {head}: run the db-migrate job first (docker compose ... up db-migrate)"
    )
PY
fi

# What `mlflow server` does for the configurations this project ships, without its first Python
# process: that process only checks its options, sets the variables below and runs uvicorn on
# MLflow's app, and it costs about 4 s of imports (on 2 cores) on the start of every server
# and 175 MB held for the server's life. The worker itself checks the secret key and creates
# the admin user (MLflow's create_app). Any other arguments, or a setting `mlflow server`
# would turn into something else, go to `mlflow server` as they are. tests/test_stack.py
# checks that the worker's command and environment are the ones `mlflow server` gives it, so
# an MLflow upgrade that changes them fails the tests.
case "$*" in
    "") app=(mlflow.server.fastapi_app:app) ;;
    # With more workers, `mlflow server` checks the sign-in settings once, before starting them:
    # a mistake is then one error, not workers restarted forever. (With one, MLflow's sign-in
    # app with the user and each run's experiment kept in memory: sign_in_cache.py.)
    "--app-name basic-auth") [ "${MLFLOW_WORKERS:-}" = 1 ] || exec mlflow server "$@"
        app=(--app-dir /opt/mlflow-server --factory sign_in_cache:create_app) ;;
    *) exec mlflow server "$@" ;;
esac
# Settings the CLI turns into something else, or refuses: set, they go to `mlflow server`.
for setting in MLFLOW_READ_REPLICA_BACKEND_STORE_URI MLFLOW_REGISTRY_STORE_URI \
    MLFLOW_DEFAULT_ARTIFACT_ROOT MLFLOW_ARTIFACTS_ONLY MLFLOW_STATIC_PREFIX MLFLOW_GUNICORN_OPTS \
    MLFLOW_UVICORN_OPTS MLFLOW_EXPOSE_PROMETHEUS MLFLOW_TRACE_ARCHIVAL_CONFIG \
    MLFLOW_WORKSPACE_STORE_URI MLFLOW_ENABLE_WORKSPACES MLFLOW_WORKSPACE \
    MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE; do
    [ -z "${!setting:-}" ] || exec mlflow server "$@"
done
# Settings the CLI replaces with its defaults when empty: empty, they go to it too.
for setting in MLFLOW_HOST MLFLOW_PORT MLFLOW_WORKERS MLFLOW_ARTIFACTS_DESTINATION; do
    [ -n "${!setting:-}" ] || exec mlflow server "$@"
done
serve_artifacts="${MLFLOW_SERVE_ARTIFACTS:-}" job_execution="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-}"
if [ "${serve_artifacts,,}" != true ] || [ "${job_execution,,}" != false ]; then
    exec mlflow server "$@"
fi
export _MLFLOW_SERVER_FILE_STORE="$store" \
    _MLFLOW_SERVER_REGISTRY_STORE="$store" \
    MLFLOW_TRACKING_URI="$store" \
    MLFLOW_REGISTRY_URI="$store" \
    _MLFLOW_SERVER_SERVE_ARTIFACTS=true \
    _MLFLOW_SERVER_ARTIFACT_ROOT=mlflow-artifacts:/ \
    _MLFLOW_SERVER_ARTIFACT_DESTINATION="$MLFLOW_ARTIFACTS_DESTINATION" \
    _MLFLOW_SERVER_BOOT_ID="$(tr -d - < /proc/sys/kernel/random/uuid)" \
    _MLFLOW_IN_JOB_EXECUTOR=false \
    _MLFLOW_SGI_NAME=uvicorn \
    MLFLOW_ENABLE_WORKSPACES=false \
    MLFLOW_SERVER_X_FRAME_OPTIONS="${MLFLOW_SERVER_X_FRAME_OPTIONS:-SAMEORIGIN}" \
    MLFLOW_SERVER_SECRETS_CACHE_TTL=60 \
    MLFLOW_SERVER_SECRETS_CACHE_MAX_SIZE=1000
if [[ "$store" == sqlite:///* && ! -s "$db_file" ]]; then
    # A new store gets its tables now, as `mlflow server` makes them, not at the first request.
    python -c 'import sys
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
SqlAlchemyStore(sys.argv[1], "mlflow-artifacts:/")' "$store"
fi
log_config=$(echo "$VIRTUAL_ENV"/lib/python3*/site-packages/mlflow/server/uvicorn_log_config.yaml)
exec python -m uvicorn --log-config "$log_config" --host "$MLFLOW_HOST" --port "$MLFLOW_PORT" \
    --workers "$MLFLOW_WORKERS" "${app[@]}"
