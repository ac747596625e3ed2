#!/usr/bin/env bash
# The `db-backup` job of the team profile: before `db-migrate` upgrades the schemas, a
# pg_dump (custom format, restore with pg_restore) of each database in $POSTGRES_DATABASES
# that holds any table, into /backups/<database>-<UTC timestamp>.dump (the named volume
# `db-backups`). Empty databases (a first start) are skipped. The newest $KEEP_BACKUPS
# dumps of each database are kept. Connection settings: PGHOST, PGUSER, PGPASSWORD.
set -euo pipefail

say() { echo "db-backup: $*" >&2; }

keep="${KEEP_BACKUPS:-10}"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
read -ra databases <<< "$POSTGRES_DATABASES"
for db in "${databases[@]}"; do
    if ! tables=$(psql --no-psqlrc -XAtq -d "$db" -c \
        "select count(*) from information_schema.tables where table_schema = 'public'" 2>&1); then
        reason=$(sed -nE 's/.*(FATAL|ERROR): +//p' <<< "$tables" | head -n1)
        case "$reason" in
            *"password authentication failed"*)
                reason="$reason (POSTGRES_PASSWORD differs from the one the database volume was created with; the volume keeps that one)" ;;
            "") reason=$(tail -n1 <<< "$tables") ;;
        esac
        say "cannot connect to database $db on ${PGHOST:-localhost} as ${PGUSER:-$USER}: $reason"
        exit 1
    fi
    if [ "$tables" = 0 ]; then
        say "$db is empty: nothing to back up"
        continue
    fi
    target="/backups/$db-$stamp.dump"
    pg_dump --format=custom --file="$target.partial" -d "$db"
    mv "$target.partial" "$target"
    say "$db ($tables tables) -> $target ($(du -h "$target" | cut -f1))"
    # Only the newest $keep dumps of this database stay.
    ls -1t /backups/"$db"-*.dump | tail -n +"$((keep + 1))" | xargs -r rm -f --
done
