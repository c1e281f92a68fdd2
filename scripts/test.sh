#!/usr/bin/env bash
# Runs every Tasklane test, on a fresh machine too: starts (or installs) PostgreSQL and Redis,
# builds the workspace once, then runs the Rust suites (unit, adapter, HTTP) with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

profile=default
[ -n "${CI:-}" ] && profile=ci

# One build of everything the suites need; the suites reuse it.
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --locked --profile "$profile"
