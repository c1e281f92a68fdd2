#!/usr/bin/env bash
# Checks that the benchmark (`just bench`, scripts/bench.sh) still works end to end: every
# scenario and every limit is run, briefly (a 1 s warm-up and 1 s measured; two rounds of the
# compared scenarios, so that the report's round-by-round line is written too), on the binary
# given (CI: the debug build the other suites use), and then this checks, from its raw
# results, that
#   - each scenario and each limit that scripts/bench/report.py knows produced a result with
#     requests in it, and no scenario had an error (a non-2xx/3xx answer, a socket error or a
#     timeout): issue 5 asks for 0 errors in every scenario, at 32 connections;
#   - the report was written: into a copy of docs/PERFORMANCE.md, between its markers, with the
#     text outside them unchanged, and an SVG that parses;
#   - the run left nothing behind: no databases, no Redis keys.
# The figures themselves are not looked at: one-second runs of a debug build say nothing about
# speed, which the benchmark measures (never a test).
#
# Usage: scripts/bench-smoke.sh BINARY
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:?usage: scripts/bench-smoke.sh BINARY}
log() { printf 'bench-smoke: %s\n' "$*" >&2; }

tmp=$(mktemp -d /tmp/tasklane-bench-smoke.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cp docs/PERFORMANCE.md "$tmp/PERFORMANCE.md"

leftovers() {
  printf 'databases=%s keys=%s\n' \
    "$(psql -h 127.0.0.1 -U postgres -d postgres -Atqc "SELECT count(*) FROM pg_database WHERE datname LIKE 'tlbench\_%'")" \
    "$(redis-cli -h 127.0.0.1 -p 6379 --scan --pattern 'tlbench-*' | wc -l)"
}
scripts/services.sh
before=$(leftovers)

BENCH_BIN="$bin" BENCH_DURATION=1 BENCH_WARMUP=1 BENCH_ROUNDS=2 BENCH_DOCS="$tmp" \
  BENCH_RESULTS="$tmp/results.jsonl" scripts/bench.sh >"$tmp/table.txt"

after=$(leftovers)
if [ "$after" != "$before" ]; then
  log "the benchmark left things behind: before $before, after $after"
  exit 1
fi

python3 - "$tmp" docs/PERFORMANCE.md <<'PY'
import json, sys, xml.etree.ElementTree as ET
sys.path.insert(0, "scripts/bench")
import report

tmp, original = sys.argv[1:]
results = {}
for line in open(f"{tmp}/results.jsonl"):
    r = json.loads(line)
    results[r["id"]] = r
problems = []
wanted = {sid.split("@", 1)[0] for sid, *_ in report.SCENARIOS} | set(report.LIMITS)
for sid in sorted(wanted):
    r = results.get(sid)
    if r is None:
        problems.append(f"{sid}: no result")
    elif not r["rps"] > 0:
        problems.append(f"{sid}: no requests measured")
    elif r["errors"]:
        problems.append(f"{sid}: {r['errors']} errors")
for sid in sorted(set(results) - wanted):
    problems.append(f"{sid}: a result the report does not know")

def outside(text):
    head, rest = text.split(report.BEGIN, 1)
    return head + rest.split(report.END, 1)[1]

written = open(f"{tmp}/PERFORMANCE.md").read()
kept = open(original).read()
if outside(written) != outside(kept):
    problems.append("PERFORMANCE.md: text outside the bench markers changed")
table = written.split(report.BEGIN, 1)[1].split(report.END, 1)[0]
if "- *round by round*: " not in table:
    problems.append("PERFORMANCE.md: no round-by-round line")
for sid, label, *_ in report.SCENARIOS:
    if sid.split("@", 1)[0] in results and f"| {label} |" not in table:
        problems.append(f"PERFORMANCE.md: no row for {sid} ({label})")
ET.parse(f"{tmp}/performance.svg")

if problems:
    print("bench-smoke: " + "\nbench-smoke: ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"bench-smoke: {len(results)} results ({len(wanted)} expected), 0 errors, report written")
PY
