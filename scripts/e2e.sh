#!/usr/bin/env bash
# Runs the browser tests (e2e/) against the real `tasklane` binary in headless Debian Chromium,
# twice: the zero-config embedded store, and PostgreSQL + Redis. Installs Chromium from Debian's
# packages and playwright-core from npm when missing. Screenshots go to $TASKLANE_ARTIFACTS_DIR
# (default artifacts/), one folder per configuration.
#   TASKLANE_BIN=target/debug/tasklane scripts/e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin=${TASKLANE_BIN:-$root/target/debug/tasklane}
artifacts=${TASKLANE_ARTIFACTS_DIR:-$root/artifacts}
[ -x "$bin" ] || { echo "e2e: $bin is not built (cargo build --bin tasklane)" >&2; exit 2; }

if [ ! -x /usr/bin/chromium ]; then
  echo "e2e: installing Debian's chromium" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
if ! command -v node >/dev/null; then
  echo "e2e: installing Node.js" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -d e2e/node_modules/playwright-core ]; then
  (cd e2e && npm ci --no-audit --no-fund --loglevel=error)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# run_suite NAME [VAR=VALUE...]: starts tasklane with exactly these settings, runs the suites.
run_suite() {
  local name=$1; shift
  local port log
  port=$(free_port)
  log="$artifacts/$name/tasklane.log"
  mkdir -p "$artifacts/$name"
  env -i PATH="$PATH" HOME="${HOME:-/root}" TASKLANE_LISTEN="127.0.0.1:$port" "$@" "$bin" >"$log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 150); do
    curl -fsS "http://127.0.0.1:$port/api/health" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "e2e: tasklane ($name) exited:" >&2; cat "$log" >&2; return 1; }
    sleep 0.2
  done
  echo "== e2e ($name) against http://127.0.0.1:$port"
  TASKLANE_BASE_URL="http://127.0.0.1:$port" TASKLANE_ARTIFACTS_DIR="$artifacts/$name" bash e2e/run.sh
  kill -TERM "$pid"
  wait "$pid" || { echo "e2e: tasklane ($name) did not exit cleanly" >&2; return 1; }
}

work=$(mktemp -d)
db="tasklane_e2e_$$"
psql -h 127.0.0.1 -U postgres -d postgres -qc "drop database if exists $db" -qc "create database $db" >/dev/null
prefix="tasklane-e2e-$$"
trap 'cleanup; psql -h 127.0.0.1 -U postgres -d postgres -qc "drop database if exists $db with (force)" >/dev/null 2>&1 || true; scripts/redis-drop-prefix.sh "$prefix" >/dev/null; rm -rf "$work"' EXIT

run_suite embedded TASKLANE_SQLITE_PATH="$work/data/tasklane.db"
run_suite postgres-redis TASKLANE_STORE=postgres \
  DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" REDIS_URL="redis://127.0.0.1:6379/0" \
  TASKLANE_CACHE_KEY_PREFIX="$prefix"
echo "e2e: both configurations passed; screenshots in $artifacts"
