#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the annotation_db tests and benchmark.
#
# Idempotent: installs Debian's postgresql when missing, reuses a running server, creates the role
# and database once. Everything it says goes to stderr; stdout carries only the line to eval:
#   eval "$(bash .ci/start_postgres.sh)"
set -euo pipefail

PGPORT="${POCLIP_PG_PORT:-55432}"
PGDATA_DIR="${POCLIP_PG_DATA:-/tmp/poclip-pg}"
DB_NAME=poclip_test
DB_USER=poclip
DB_PASS=poclip

log() { echo "start_postgres: $*" >&2; }

if ! compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then
  log "installing postgresql (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"

# PostgreSQL refuses to run as root, and CI runs as root: run the server as the postgres user then.
if [ "$(id -u)" = 0 ]; then
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT"; then
  if [ ! -s "$PGDATA_DIR/PG_VERSION" ]; then
    log "initdb in $PGDATA_DIR"
    mkdir -p "$PGDATA_DIR"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PGDATA_DIR"; fi
    chmod 700 "$PGDATA_DIR"
    as_pg "$BIN/initdb" -D "$PGDATA_DIR" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >&2
  fi
  # A machine restart leaves postmaster.pid behind; if its PID now belongs to another program, PostgreSQL
  # would refuse to start, so drop the file when no postgres process owns it.
  if [ -f "$PGDATA_DIR/postmaster.pid" ]; then
    old_pid="$(head -n 1 "$PGDATA_DIR/postmaster.pid")"
    if [ "$(cat "/proc/$old_pid/comm" 2>/dev/null)" != postgres ]; then
      log "removing stale postmaster.pid (pid $old_pid)"
      rm -f "$PGDATA_DIR/postmaster.pid"
    fi
  fi
  log "starting on 127.0.0.1:$PGPORT"
  # The socket lives in the data dir so that no system directory needs to be writable.
  as_pg "$BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -c unix_socket_directories=$PGDATA_DIR -c max_connections=200" \
    start >&2
fi

psql_admin() { as_pg "$BIN/psql" -h "$PGDATA_DIR" -p "$PGPORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" != 1 ]; then
  log "creating role $DB_USER"
  # CREATEDB: the tests give every test its own database, cloned from a migrated template.
  psql_admin -c "CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASS'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]; then
  log "creating database $DB_NAME"
  psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_USER" >&2
fi

log "ready"
echo "export POCLIP_TEST_POSTGRES_URL=postgresql+psycopg://$DB_USER:$DB_PASS@127.0.0.1:$PGPORT/$DB_NAME"
