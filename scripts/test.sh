#!/usr/bin/env bash
# Runs every Tasklane test, on a fresh machine too. Starts (or installs) PostgreSQL and Redis,
# builds the workspace once, then runs, reusing that build:
#   1. the Rust suites with nextest: domain units against mocks, the port contract suites against
#      every adapter, adapter tests, HTTP tests of the real server; then the resilience suite
#      (fault injection with private PostgreSQL and Redis instances), one test at a time;
#   2. the browser tests (e2e/) in headless Chromium, against the embedded store and against
#      PostgreSQL + Redis;
#   3. schemathesis against the generated OpenAPI document (all phases, all checks), against
#      both configurations;
#   4. the deployment checks (Compose, Dockerfiles, Kubernetes manifests, nginx config) and the
#      process-level twin of the Compose stack (nginx + two tasklane replicas);
#   5. the benchmark once through, briefly, on the debug build: that it runs end to end with 0
#      errors and writes its report, not how fast (scripts/bench-smoke.sh).
# TASKLANE_TEST_ONLY=rust|e2e|fuzz|deploy|bench runs one part.
set -euo pipefail
cd "$(dirname "$0")/.."

only=${TASKLANE_TEST_ONLY:-all}
want() { [ "$only" = all ] || [ "$only" = "$1" ]; }
# Every suite that runs to its end is counted; `set -e` stops at the first that fails.
suites=0
passed() { suites=$((suites + 1)); }

scripts/services.sh

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

# Every suite keeps its Redis keys under a prefix of its own (`tasklane-test:<uuid>` for each
# Rust test, `tasklane-e2e-*`, `tasklane-st-*`, `tasklane-twin-*`) and deletes them when done,
# failing tests included: the cache's generation and lease registry have no TTL, so keys left
# behind would pile up on a developer's Redis run after run. A suite that leaves some fails.
test_keys() { redis-cli -h 127.0.0.1 -p 6379 --scan --pattern 'tasklane-*' | wc -l; }
keys_before=$(test_keys)
no_keys_left() { # SUITE
  local now
  now=$(test_keys)
  if [ "$now" -gt "$keys_before" ]; then
    echo "test: $1 left $((now - keys_before)) key(s) on the shared Redis, e.g.:" >&2
    redis-cli -h 127.0.0.1 -p 6379 --scan --pattern 'tasklane-*' | head -n 5 >&2
    exit 1
  fi
}

profile=default
[ -n "${CI:-}" ] && profile=ci

# One build of everything the suites need; the suites below reuse it.
cargo build --workspace --all-targets --locked
bin="$(pwd)/target/debug/tasklane"
[ -n "${CARGO_TARGET_DIR:-}" ] && bin="$CARGO_TARGET_DIR/debug/tasklane"

if want rust; then
  echo "== Rust suites (nextest)"
  cargo nextest run --workspace --locked --profile "$profile" -E 'not binary(resilience)'
  no_keys_left "the Rust suites"
  passed
  echo "== resilience suite (fault injection; one test at a time)"
  TASKLANE_FIGURES_FILE="${TASKLANE_FIGURES_FILE:-$(pwd)/target/figures.jsonl}" \
    cargo nextest run -p tasklane-app --test resilience --locked --profile "$profile" \
    --test-threads 1 --no-capture
  passed
fi
if want e2e; then
  echo "== browser tests"
  TASKLANE_BIN="$bin" scripts/e2e.sh
  no_keys_left "the browser tests"
  passed
fi
if want fuzz; then
  echo "== schemathesis"
  TASKLANE_BIN="$bin" scripts/schemathesis.sh
  no_keys_left "schemathesis"
  passed
fi
if want deploy; then
  echo "== deployment checks"
  bash scripts/check-deploy.sh
  passed
  echo "== process-level twin of the Compose stack"
  TASKLANE_BIN="$bin" scripts/deploy-twin.sh
  no_keys_left "the twin"
  passed
fi
if want bench; then
  echo "== the benchmark, once through (that it works, not how fast)"
  # It checks its own leftovers (tlbench_* databases, tlbench-* keys): it writes no tasklane-*.
  scripts/bench-smoke.sh "$bin"
  passed
fi
echo "test: all suites passed"
echo "suites: $suites passed, 0 failed"
