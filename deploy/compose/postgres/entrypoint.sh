#!/bin/sh
# First start: initdb into $PGDATA (the volume) with scram-sha-256 password authentication for every connection,
# $POSTGRES_USER as the owner of $POSTGRES_DB. Every start: the server itself as PID 1, listening on all addresses.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD (the password of $POSTGRES_USER)}"
PGDATA=${PGDATA:-/var/lib/postgresql/data}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "postgres-entrypoint: initialising $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)" >&2
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" --auth=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  {
    echo "# written by postgres-entrypoint: a password for every connection"
    echo "local all all scram-sha-256"
    echo "host  all all 0.0.0.0/0 scram-sha-256"
    echo "host  all all ::/0 scram-sha-256"
  } >"$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    # Single-user mode: no server listens (nothing can connect) until the database exists.
    echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
