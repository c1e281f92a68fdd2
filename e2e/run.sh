#!/usr/bin/env bash
# Runs the Tasklane end-to-end tests in headless Debian Chromium.
#   TASKLANE_BASE_URL=http://127.0.0.1:5000 bash e2e/run.sh [extra node --test args]
# Installs the npm dependencies (playwright-core only; no browser download) when missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ -z "${TASKLANE_BASE_URL:-}" ]]; then
  echo "e2e/run.sh: set TASKLANE_BASE_URL to the running tasklane, e.g. http://127.0.0.1:5000" >&2
  exit 2
fi
chromium_bin="${TASKLANE_CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$chromium_bin" ]]; then
  echo "e2e/run.sh: $chromium_bin not found; install Debian's chromium (apt-get install -y chromium)" >&2
  exit 2
fi
if [[ ! -d "$here/node_modules/playwright-core" ]]; then
  (cd "$here" && npm ci --no-audit --no-fund)
fi

export TASKLANE_ARTIFACTS_DIR="${TASKLANE_ARTIFACTS_DIR:-artifacts}"
mkdir -p "$TASKLANE_ARTIFACTS_DIR"

# One file at a time: the suites share one server, and some tests compare counts before/after.
# Node searches the folder for *.test.mjs (node_modules excluded).
exec node --test --test-reporter=spec --test-concurrency=1 "$@" "$here/"
