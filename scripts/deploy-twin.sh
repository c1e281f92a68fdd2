#!/usr/bin/env bash
# Process-level twin of deploy/compose.yaml: Debian's nginx running the config rendered from
# deploy/nginx/nginx.conf.template, two (then three) `tasklane` replicas on loopback addresses,
# a tiny DNS server standing in for Docker's, and the machine's PostgreSQL (a fresh database,
# dropped afterwards) and Redis (a unique key prefix). What it checks: deploy/tests/twin.py.
#
#   cargo build --release --locked --bin tasklane
#   TASKLANE_BIN=target/release/tasklane scripts/deploy-twin.sh
#
# Needs PostgreSQL on 127.0.0.1:5432 (trust auth for `postgres`, or set TWIN_PG_URL) and Redis
# on 127.0.0.1:6379 (or TWIN_REDIS_URL). Installs Debian's nginx when absent. Bounded: the
# whole run is killed after TWIN_TIMEOUT seconds (default 600). TWIN_KEEP=1 keeps the work
# directory (logs, rendered config). Exits non-zero on any failed check.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/deploy-tools.sh
source "$root/scripts/deploy-tools.sh"

if [[ -z ${TASKLANE_BIN:-} ]]; then
    echo "deploy-twin.sh: set TASKLANE_BIN to the tasklane binary (cargo build --release --locked --bin tasklane)" >&2
    exit 2
fi
TASKLANE_BIN=$(cd "$(dirname "$TASKLANE_BIN")" && pwd)/$(basename "$TASKLANE_BIN")
export TASKLANE_BIN
if [[ ! -x $TASKLANE_BIN ]]; then
    echo "deploy-twin.sh: $TASKLANE_BIN is not an executable file" >&2
    exit 2
fi

deploy_tools_nginx
for tool in psql python3 timeout; do
    command -v "$tool" >/dev/null || { echo "deploy-twin.sh: $tool is required" >&2; exit 2; }
done

pg_url=${TWIN_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
if ! timeout 10 psql "$pg_url" -X -q -c 'SELECT 1' >/dev/null 2>&1; then
    echo "deploy-twin.sh: PostgreSQL is not reachable at $pg_url (start it, or set TWIN_PG_URL)" >&2
    exit 2
fi

echo "twin: $(nginx -v 2>&1); tasklane: $TASKLANE_BIN"
# `timeout` sends SIGTERM first: twin.py then stops its processes and drops its database.
exec timeout --kill-after=30 "${TWIN_TIMEOUT:-600}" python3 "$root/deploy/tests/twin.py"
