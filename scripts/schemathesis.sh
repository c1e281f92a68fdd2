#!/usr/bin/env bash
# Hostile input (issue 6): schemathesis against the real `tasklane` binary's own
# /api/openapi.json, twice: the embedded store (a fresh SQLite file) and PostgreSQL + Redis (a
# fresh database, created and dropped here, and a key prefix of its own). Every phase (examples,
# coverage, fuzzing, stateful via the document's OpenAPI links), every check (turned on in
# scripts/schemathesis/config.toml, which also holds the only exceptions, each narrowed to the
# operations it concerns and with its reason; hooks.py has the one custom check), 200 cases per
# operation, a fixed seed, 0.5 s per response at most. Any failure fails the script. One summary
# line per run; the full logs and JUnit reports go to $TASKLANE_ARTIFACTS_DIR/schemathesis
# (default artifacts/schemathesis).
#
#   TASKLANE_BIN=target/debug/tasklane scripts/schemathesis.sh
#
# Needs python3.11 (or newer) with venv, and PostgreSQL on 127.0.0.1:5432 and Redis on
# 127.0.0.1:6379 (scripts/services.sh). schemathesis is installed from PyPI, pinned with its
# dependencies (scripts/schemathesis/requirements.txt), into a virtualenv under
# ${XDG_CACHE_HOME:-~/.cache}/tasklane/ that later runs reuse.
# TASKLANE_SCHEMATHESIS_TIMEOUT (seconds, default 900) bounds the whole script.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin=${TASKLANE_BIN:-$root/target/debug/tasklane}
artifacts=${TASKLANE_ARTIFACTS_DIR:-$root/artifacts}/schemathesis
budget=${TASKLANE_SCHEMATHESIS_TIMEOUT:-900}
here=$root/scripts/schemathesis
seed=20261127
examples=200
started=$(date +%s)

[ -x "$bin" ] || { echo "schemathesis: $bin is not built (cargo build -p tasklane-app --bin tasklane)" >&2; exit 2; }
mkdir -p "$artifacts"

# The virtualenv is named after the pinned set, so a change to it makes a new one.
python=$(command -v python3.11 || command -v python3)
pins=$(sha256sum "$here/requirements.txt" | cut -c1-12)
venv=${XDG_CACHE_HOME:-$HOME/.cache}/tasklane/schemathesis-$pins
if [ ! -f "$venv/.installed" ]; then
  echo "schemathesis: installing the pinned schemathesis into $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  touch "$venv/.installed"
fi

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d)
db="tasklane_st_$$"
prefix="tasklane-st-$$-$(date +%s%N)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  psql -h 127.0.0.1 -U postgres -d postgres -qc "drop database if exists $db with (force)" >/dev/null 2>&1 || true
  scripts/redis-drop-prefix.sh "$prefix" >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# run NAME [VAR=VALUE...]: starts tasklane with exactly these settings on a free port, runs
# schemathesis against it within what is left of the budget, stops it, prints one line.
run() {
  local name=$1; shift
  local port log report left status=0
  port=$(free_port)
  log="$artifacts/$name.log"
  report="$artifacts/$name"
  rm -rf "$report"
  env -i PATH="$PATH" HOME="${HOME:-/root}" TASKLANE_LISTEN="127.0.0.1:$port" TASKLANE_LOG=warn \
    "$@" "$bin" >"$artifacts/$name.server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 150); do
    curl -fsS "http://127.0.0.1:$port/api/health" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || { echo "schemathesis: tasklane ($name) exited:" >&2; cat "$artifacts/$name.server.log" >&2; return 1; }
    sleep 0.2
  done
  left=$((budget - ($(date +%s) - started)))
  [ "$left" -gt 10 ] || { echo "schemathesis ($name): no time left of ${budget}s" >&2; return 1; }
  # --workers 1: CPython 3.11's `ast` is not thread-safe (hypothesis describes its lambdas with
  # it, and several workers then fail with "AST constructor recursion depth mismatch").
  # --generation-database none: no examples remembered from earlier runs, so the seed alone
  # decides what is sent.
  PYTHONDONTWRITEBYTECODE=1 SCHEMATHESIS_HOOKS="$here/hooks.py" timeout --kill-after=10 "$left" \
    "$venv/bin/schemathesis" --no-color --config-file "$here/config.toml" run \
    "http://127.0.0.1:$port/api/openapi.json" \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$examples" --seed "$seed" \
    --max-response-time 0.5 --request-timeout 5 \
    --workers 1 --generation-database none --continue-on-failure \
    --report junit --report-dir "$report" \
    >"$log" 2>&1 || status=$?
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
  local operations cases failures
  operations=$(sed -n 's/^ *Operations: *\([0-9]*\) selected.*/\1/p' "$log" | head -n 1)
  cases=$(sed -n 's/^ *\([0-9]*\) generated.*/\1/p' "$log" | tail -n 1)
  failures=$(sed -n 's/^=* \([0-9]*\) failures\{0,1\}.*/\1/p' "$log" | tail -n 1)
  if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "schemathesis ($name): timed out (budget ${budget}s for the whole script); log: $log" >&2
    return 1
  fi
  if [ "$status" != 0 ]; then
    # The failures and the summary (or, without failures, the end: errors), bounded; the whole
    # report is in the log.
    if grep -q '^=* FAILURES =*$' "$log"; then
      sed -n '/^=* FAILURES =*$/,$p' "$log" | head -n 400 >&2
    else
      tail -n 80 "$log" >&2
    fi
    # A response-time failure (ST112) on a machine busy with other work is worth telling apart.
    echo "schemathesis ($name): ${operations:-?} operations, ${cases:-?} cases, ${failures:-some} failures (exit $status; load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)); log: $log" >&2
    return 1
  fi
  echo "schemathesis ($name): ${operations:-?} operations, ${cases:-?} cases, 0 failures"
}

run sqlite TASKLANE_SQLITE_PATH="$work/data/tasklane.db"

PGOPTIONS="-c client_min_messages=warning" \
  psql -h 127.0.0.1 -U postgres -d postgres -qc "drop database if exists $db" -qc "create database $db" >/dev/null
run postgres-redis TASKLANE_STORE=postgres \
  DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" REDIS_URL="redis://127.0.0.1:6379/0" \
  TASKLANE_CACHE_KEY_PREFIX="$prefix"
echo "schemathesis: both configurations passed in $(($(date +%s) - started)) s"
