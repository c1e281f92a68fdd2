# Tasklane's recipes: `just --list` is the menu. CI runs `just ci` (the same as .ci/run).

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Run Tasklane on http://127.0.0.1:5000 against the local PostgreSQL and Redis.
run:
    scripts/run.sh

# Run every test (starts PostgreSQL and Redis if needed): the README's test command.
test:
    ./scripts/test.sh

# What CI runs: format check, clippy, the docs, the domain's dependency rule, every test.
ci:
    bash .ci/run

# Format the code.
fmt:
    cargo fmt --all

# Lint: clippy and the docs with warnings as errors, and the domain's no-I/O rule.
lint:
    cargo clippy --workspace --all-targets --locked -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items --locked
    scripts/check-domain-deps.sh

# Apply the database migrations to DATABASE_URL and exit.
migrate:
    cargo run --release --bin tasklane -- migrate

# Insert the seed's three sample tasks (only into an empty database).
demo-data:
    cargo run --release --bin tasklane -- demo-data

# The fault-injection suite (issue 6): private PostgreSQL clusters and redis-servers, the fault
# proxy, the real binary under load; one test at a time.
# Figures are printed and appended to target/figures.jsonl. Filter: `just resilience postgres_hung`.
resilience *FILTER:
    TASKLANE_FIGURES_FILE="${TASKLANE_FIGURES_FILE:-$PWD/target/figures.jsonl}" cargo nextest run -p tasklane-app --test resilience --test-threads 1 --no-capture {{FILTER}}

# Measure Tasklane against this machine's limits (docs/PERFORMANCE.md).
bench:
    scripts/bench.sh
