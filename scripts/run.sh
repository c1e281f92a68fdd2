#!/usr/bin/env bash
# Runs Tasklane on http://127.0.0.1:5000. With DATABASE_URL unset, uses the machine's
# PostgreSQL (creating the database `tasklane` if needed) and Redis, starting them if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DATABASE_URL:-}" ] && [ -z "${DATABASE_URL_FILE:-}" ]; then
  scripts/services.sh
  psql -h 127.0.0.1 -U postgres -d postgres -Atqc "select 1 from pg_database where datname = 'tasklane'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database tasklane'
  export DATABASE_URL=postgres://postgres@127.0.0.1:5432/tasklane
  export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
fi
exec cargo run --release --locked --bin tasklane -- "$@"
