#!/usr/bin/env bash
# The domain crate does no I/O: none of these may appear among its normal dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
forbidden='^(tokio|tokio-postgres|postgres|deadpool|deadpool-postgres|deadpool-redis|redis|actix-web|actix-rt|actix-http|config|rusqlite|reqwest|hyper|mio|sqlx) '
deps=$(cargo tree -p tasklane-domain -e normal --prefix none --locked | sed 's/ (.*//' | sort -u)
if bad=$(printf '%s\n' "$deps" | grep -E "$forbidden"); then
  echo "tasklane-domain depends on I/O crates:" >&2
  printf '  %s\n' "$bad" >&2
  exit 1
fi
echo "domain dependency check: $(printf '%s\n' "$deps" | wc -l) crates, none of them does I/O"
