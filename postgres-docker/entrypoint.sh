#!/usr/bin/env bash
# Start PostgreSQL 15 on the data volume. On an empty volume: initdb (scram-sha-256 for
# connections over the network, peer for the local superuser `postgres`), then a temporary
# server that listens on its Unix socket only (so a TCP `pg_isready` cannot pass early) creates
# the role $POSTGRES_USER with $POSTGRES_PASSWORD and owns the databases $POSTGRES_DATABASES;
# fast stop; then `exec postgres`. The password is read only then: the role keeps it after.
# Arguments go to `postgres` (e.g. -c max_connections=200).
set -euo pipefail

say() { echo "postgres: $*" >&2; }

if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    say "POSTGRES_PASSWORD is not set: set it in .env (the database password of the MLflow servers)"
    exit 64
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    say "empty data volume: creating the cluster, the role $POSTGRES_USER and the databases $POSTGRES_DATABASES"
    initdb --pgdata="$PGDATA" --username=postgres --auth-local=peer --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    # The MLflow servers connect from the compose network: any address, with a password.
    printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
    pg_ctl --pgdata="$PGDATA" --silent -o "-c listen_addresses=''" --wait start >/dev/null
    databases=()
    read -ra databases <<< "$POSTGRES_DATABASES"
    {
        echo "CREATE ROLE :\"role\" LOGIN PASSWORD :'password';"
        for db in "${databases[@]}"; do
            echo "CREATE DATABASE \"$db\" OWNER :\"role\";"
        done
    } | psql --quiet --no-psqlrc -v ON_ERROR_STOP=1 --username=postgres --dbname=postgres \
        --set=role="$POSTGRES_USER" --set=password="$POSTGRES_PASSWORD" >/dev/null
    pg_ctl --pgdata="$PGDATA" --silent -m fast --wait stop >/dev/null
    say "cluster ready"
fi

# jit=off: the image carries no JIT compiler (see Dockerfile).
exec postgres -c listen_addresses='*' -c jit=off "$@"
