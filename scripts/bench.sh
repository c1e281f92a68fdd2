#!/usr/bin/env bash
# Measures Tasklane against this machine's own limits (issue 5): the release binary on
# PostgreSQL + Redis and on the embedded SQLite store, driven over loopback by wrk (32
# connections, a warm-up, then 10 s a scenario), next to nginx serving the same bytes as the
# cached list, `pgbench -S`, a pgbench script doing a create's INSERT ... RETURNING, one doing
# the mix's UPDATE (its write ceiling), and `redis-benchmark` GET, all in the same run. Prints
# one table and writes it, with the machine's description, into docs/PERFORMANCE.md (between its
# bench markers) and docs/performance.svg.
#
# Not a test: it loads the machine on purpose, and its figures are goals it reports, never checks.
# About 10-11 minutes, plus the release build when target/release/tasklane is not up to date (fat
# LTO: several minutes). CI runs it once only to see that it still works end to end
# (scripts/bench-smoke.sh: one-second runs of the debug build). Everything it starts (tasklane
# processes, an nginx, databases, Redis keys, PostgreSQL/Redis themselves if it had to start
# them, a temporary folder) is stopped or removed on exit, however it exits. On Debian it
# installs the tools it lacks (wrk, nginx-light, sqlite3; PostgreSQL and Redis through
# scripts/services.sh).
#
# Knobs (environment):
#   BENCH_DURATION=10   seconds measured per scenario       BENCH_WARMUP=2   seconds of warm-up
#   BENCH_ONLY=regex    run only the scenarios whose id matches (limits are always measured
#                       unless BENCH_LIMITS=0); data sets nobody needs are not loaded
#   BENCH_ROUNDS=5      rounds of the scenarios compared with each other (run_turns)
#   BENCH_WRITE=0       print the table only; leave docs/ alone
#   BENCH_DOCS=dir      write PERFORMANCE.md and performance.svg there instead of docs/ (the
#                       file's text outside the bench markers is kept, so start from a copy)
#   BENCH_BIN=path      benchmark this binary instead of building target/release/tasklane
#   BENCH_TASKLANE_ENV="TASKLANE_WORKERS=1 ..."   extra settings for every tasklane started
#   BENCH_WAIT_IDLE=600 first wait (up to that many seconds) for the 1-minute load average to
#                       drop to 1.0 or less, checking every 30 s
#   BENCH_RESULTS=file  also keep the raw results (JSON lines) there
# Relative paths (BENCH_BIN, BENCH_DOCS, BENCH_RESULTS) are taken from the repository's root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=32
THREADS=2
ONLY=${BENCH_ONLY:-.}
LIMITS=${BENCH_LIMITS:-1}
WRITE=${BENCH_WRITE:-1}
DOCS=${BENCH_DOCS:-docs}
PG_HOST=127.0.0.1
PG_PORT=5432
PG_USER=postgres
REDIS_HOST=127.0.0.1
REDIS_PORT=6379

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
want() { [[ $1 =~ $ONLY ]]; }

# ---------------------------------------------------------------------------------------------
# Tools. PostgreSQL's and Redis' own (psql, pgbench, redis-cli, redis-benchmark) come with them,
# below; the others are installed from Debian's packages where missing.
install_tool() { # COMMAND PACKAGE
  command -v "$1" >/dev/null && return 0
  if [ -r /etc/debian_version ]; then
    log "installing $2"
    local as_root=""
    [ "$(id -u)" = 0 ] || as_root=sudo
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null 2>&1 \
      || { $as_root apt-get update -qq >/dev/null \
        && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null; }
  fi
  command -v "$1" >/dev/null || die "$1 is missing (Debian: apt-get install $2)"
}
# nginx lives in /usr/sbin, which a user's PATH may lack.
NGINX=$(command -v nginx || ls /usr/sbin/nginx 2>/dev/null || true)
if [ -z "$NGINX" ]; then
  install_tool nginx nginx-light
  NGINX=$(command -v nginx || ls /usr/sbin/nginx)
fi
install_tool wrk wrk
install_tool sqlite3 sqlite3
for tool in python3 curl; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done

if [ -n "${BENCH_WAIT_IDLE:-}" ]; then
  waited=0
  while awk '{exit !($1 > 1.0)}' /proc/loadavg && [ "$waited" -lt "$BENCH_WAIT_IDLE" ]; do
    log "load average $(cut -d' ' -f1-3 /proc/loadavg) > 1.0; waiting 30 s"
    sleep 30
    waited=$((waited + 30))
  done
fi

# ---------------------------------------------------------------------------------------------
# Clean-up of everything this script starts.
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
RUN_ID="$$-$(date +%s)"
TMP=$(mktemp -d "/tmp/tasklane-bench.XXXXXX")
chmod 755 "$TMP" # nginx's workers run as another user
DB_BASE="tlbench_$$"
KEY_PREFIX="tlbench-$RUN_ID"
DATABASES=()
TL_PID=""
CO_PID=""
L_PID=""
NGINX_PID=""
BG_PIDS=()
STARTED_PG=""
STARTED_REDIS=""

psql_q() { psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -v ON_ERROR_STOP=1 -Atq "$@"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  [ -n "$TL_PID" ] && kill -TERM "$TL_PID" 2>/dev/null && wait "$TL_PID" 2>/dev/null
  [ -n "$CO_PID" ] && kill -TERM "$CO_PID" 2>/dev/null && wait "$CO_PID" 2>/dev/null
  # One that was starting when the script stopped.
  [ -n "$L_PID" ] && kill -TERM "$L_PID" 2>/dev/null && wait "$L_PID" 2>/dev/null
  [ -n "$NGINX_PID" ] && kill -QUIT "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
  for db in "${DATABASES[@]}"; do
    psql_q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
  done
  "$ROOT/scripts/redis-drop-prefix.sh" "$KEY_PREFIX" "$REDIS_HOST" "$REDIS_PORT" >/dev/null
  if [ -n "$STARTED_REDIS" ]; then redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1; fi
  if [ -n "$STARTED_PG" ]; then
    for v in /etc/postgresql/*; do v=${v##*/}; done
    pg_ctlcluster --skip-systemctl-redirect "$v" main stop >/dev/null 2>&1 \
      || sudo pg_ctlcluster --skip-systemctl-redirect "$v" main stop >/dev/null 2>&1
  fi
  rm -rf "$TMP"
  [ "$rc" = 0 ] || log "failed (exit $rc); everything it started is cleaned up"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# PostgreSQL and Redis: used as they are; started (and stopped again at the end) if they are not.
pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" 2>/dev/null || STARTED_PG=1
redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG || STARTED_REDIS=1
if [ -n "$STARTED_PG$STARTED_REDIS" ]; then
  log "starting PostgreSQL and/or Redis (scripts/services.sh)"
  scripts/services.sh
fi
PGBENCH=$(command -v pgbench || true)
if [ -z "$PGBENCH" ]; then
  for candidate in /usr/lib/postgresql/*/bin/pgbench; do [ -x "$candidate" ] && PGBENCH=$candidate; done
fi
[ -n "$PGBENCH" ] || die "pgbench is missing (Debian: apt-get install postgresql-contrib)"
for tool in psql redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done

# ---------------------------------------------------------------------------------------------
# The binary.
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$(realpath "$BENCH_BIN")
else
  log "building the release binary"
  cargo build --release --locked --bin tasklane 2>&1 | tail -n 3 >&2
  BIN=$ROOT/target/release/tasklane
fi
[ -x "$BIN" ] || die "no binary at $BIN"
STARTED_AT=$(date +%s)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The binary runs with only the settings given: none inherited from the caller's environment,
# and it runs in $TMP, so no tasklane.toml is read either. BENCH_TASKLANE_ENV comes last and wins.
read -ra EXTRA_ENV <<<"${BENCH_TASKLANE_ENV:-}"
TL_ENV=(env -u DATABASE_URL -u DATABASE_URL_FILE -u REDIS_URL -u REDIS_URL_FILE -u RUST_LOG
  -u TASKLANE_CONFIG TASKLANE_LOG=info TASKLANE_DRAIN_DELAY_MS=0 "${EXTRA_ENV[@]}")

pg_url() { echo "postgres://$PG_USER@$PG_HOST:$PG_PORT/$1"; }

new_database() { # NAME VAR: creates and migrates ${DB_BASE}_NAME, and sets VAR to its name
  local db="${DB_BASE}_$1"
  DATABASES+=("$db")
  psql_q -d postgres -c "CREATE DATABASE $db" >/dev/null
  (cd "$TMP" && "${TL_ENV[@]}" DATABASE_URL="$(pg_url "$db")" TASKLANE_STORE=postgres "$BIN" migrate >/dev/null)
  printf -v "$2" '%s' "$db"
}

# The words the generated tasks are made of (scripts/bench/search.lua searches for them).
WORDS_A="'review','budget','deploy','invoice','meeting','design','hiring','backup','release','audit'"
WORDS_B="'alpha','bravo','charlie','delta','echo','foxtrot','golf','hotel','india','juliet','kilo','lima','mike'"
WORDS_C="'north','south','east','west','central'"

# Bulk-loads N tasks into a migrated PostgreSQL database in one INSERT ... SELECT
# generate_series: the statement-level trigger counts them (task_status_counts stays right).
# created_at is 1 ms apart, oldest first. The secondary indexes are dropped for the load and
# rebuilt from their own definitions (pg_get_indexdef) afterwards, which is several times faster
# than maintaining them (the trigram GIN indexes above all) row by row. `with_text=0` leaves the
# descriptions empty (the 1,000- and 1,000,000-task tables, where only the order matters).
load_pg() {
  local db=$1 n=$2 with_text=$3 description="''"
  if [ "$with_text" = 1 ]; then
    description="'Bench task number ' || g || ' about the ' || (ARRAY[$WORDS_C])[1 + g % 5] || ' office'"
  fi
  psql_q -d "$db" >/dev/null <<SQL
SET maintenance_work_mem = '256MB';
BEGIN;
CREATE TEMP TABLE bench_saved_indexes ON COMMIT DROP AS
  SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS def
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  WHERE i.indrelid = 'tasks'::regclass AND NOT i.indisprimary AND NOT i.indisunique;
DO \$\$ DECLARE r record; BEGIN
  FOR r IN SELECT name FROM bench_saved_indexes LOOP EXECUTE format('DROP INDEX %I', r.name); END LOOP;
END \$\$;
INSERT INTO tasks (title, description, status, created_at, updated_at)
SELECT 'Task ' || g || ': ' || (ARRAY[$WORDS_A])[1 + g % 10] || ' ' || (ARRAY[$WORDS_B])[1 + (g / 10) % 13],
       $description,
       (ARRAY['todo', 'in_progress', 'done'])[1 + g % 3],
       ts, ts
FROM generate_series(1, $n) AS g,
     LATERAL (SELECT now() - ($n - g) * interval '1 millisecond' AS ts) AS t;
DO \$\$ DECLARE r record; BEGIN
  FOR r IN SELECT def FROM bench_saved_indexes LOOP EXECUTE r.def; END LOOP;
END \$\$;
COMMIT;
VACUUM ANALYZE tasks;
SQL
  local counted
  counted=$(psql_q -d "$db" -c "SELECT sum(n) FROM task_status_counts")
  [ "$counted" = "$n" ] || die "$db: the counters say $counted tasks, not $n"
}

# The same tasks in the embedded store, in its own terms (integer microseconds, row triggers),
# with SQLite's own bulk insert: a recursive CTE in one transaction.
load_sqlite() {
  local file=$1 n=$2 a b c
  a=$(tr "'" '"' <<<"[$WORDS_A]")
  b=$(tr "'" '"' <<<"[$WORDS_B]")
  c=$(tr "'" '"' <<<"[$WORDS_C]")
  sqlite3 "$file" >/dev/null <<SQL
PRAGMA journal_mode = WAL;
BEGIN;
WITH RECURSIVE g(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM g WHERE g < $n),
     base(now_us) AS (SELECT CAST(strftime('%s', 'now') AS INTEGER) * 1000000)
INSERT INTO tasks (title, description, status, created_at, updated_at, version)
SELECT 'Task ' || g || ': ' || json_extract('$a', '\$[' || (g % 10) || ']')
         || ' ' || json_extract('$b', '\$[' || ((g / 10) % 13) || ']'),
       'Bench task number ' || g || ' about the ' || json_extract('$c', '\$[' || (g % 5) || ']') || ' office',
       json_extract('["todo","in_progress","done"]', '\$[' || (g % 3) || ']'),
       now_us - ($n - g) * 1000, now_us - ($n - g) * 1000, 1
FROM g, base;
COMMIT;
ANALYZE;
SQL
  local counted
  counted=$(sqlite3 "$file" "SELECT sum(n) FROM task_status_counts")
  [ "$counted" = "$n" ] || die "$file: the counters say $counted tasks, not $n"
}

# ---------------------------------------------------------------------------------------------
# Which data sets the chosen scenarios need.
need() { local s; for s in "$@"; do want "$s" && return 0; done; return 1; }
NEED_SMALL="" NEED_100K="" NEED_1K="" NEED_1M="" NEED_SQLITE=""
if need health list3 list3_304 get get_304 get_304_one mix; then NEED_SMALL=1; fi
if need list100 status search search_distinct search_after_writes get get_304 get_304_one update create; then NEED_100K=1; fi
if need first_1k first_1m; then NEED_1K=1; fi
if need first_1m delete; then NEED_1M=1; fi
if need sqlite_list100 sqlite_get sqlite_create sqlite_update sqlite_mix; then NEED_SQLITE=1; fi
[ "$LIMITS" = 1 ] && NEED_SMALL=1 # the nginx file is the cached 3-row list

log "loading data (fresh databases ${DB_BASE}_*, Redis key prefix $KEY_PREFIX)"
load_started=$(date +%s)
new_database limits DB_LIMITS
if [ -n "$NEED_SMALL" ]; then
  new_database small DB_SMALL
  (cd "$TMP" && "${TL_ENV[@]}" DATABASE_URL="$(pg_url "$DB_SMALL")" "$BIN" demo-data >/dev/null)
fi
# The big loads run side by side (two cores: two backends building indexes).
if [ -n "$NEED_1M" ]; then
  new_database 1m DB_1M
  load_pg "$DB_1M" 1000000 0 & BG_PIDS+=($!)
fi
if [ -n "$NEED_100K" ]; then
  new_database 100k DB_100K
  load_pg "$DB_100K" 100000 1 & BG_PIDS+=($!)
fi
if [ -n "$NEED_1K" ]; then
  new_database 1k DB_1K
  load_pg "$DB_1K" 1000 0
fi
if [ -n "$NEED_SQLITE" ]; then
  SQLITE_FILE=$TMP/sqlite/bench.db
  (cd "$TMP" && "${TL_ENV[@]}" TASKLANE_STORE=sqlite TASKLANE_SQLITE_PATH="$SQLITE_FILE" "$BIN" migrate >/dev/null)
  load_sqlite "$SQLITE_FILE" 100000
fi
if [ "$LIMITS" = 1 ]; then
  "$PGBENCH" -i -s 1 -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$DB_LIMITS" >/dev/null 2>&1
fi
for pid in "${BG_PIDS[@]}"; do wait "$pid" || die "a bulk load failed"; done
BG_PIDS=()
LOAD_SECS=$(( $(date +%s) - load_started ))
log "data loaded in $LOAD_SECS s"

# ---------------------------------------------------------------------------------------------
# Tasklane processes: one at a time, each for the scenarios of one configuration; and at times a
# second one beside it, the companion, so that scenarios on two data sets can be measured in
# turn (run_turns).
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
TL_URL=""
TL_CONFIG=""
CO_URL=""
CO_CONFIG=""
# The scenarios that run on the companion (ids between spaces).
ON_COMPANION=" "

# launch_tasklane NAME [settings...]: starts one and waits until it is ready; sets L_PID (which
# the caller hands on and clears: cleanup stops a process left in it) and L_URL.
launch_tasklane() {
  local name=$1 port
  shift
  port=$(free_port)
  L_URL="http://127.0.0.1:$port"
  (cd "$TMP" && exec "${TL_ENV[@]}" TASKLANE_LISTEN="127.0.0.1:$port" "$@" "$BIN" serve) \
    >"$TMP/tasklane-$name.log" 2>&1 &
  L_PID=$!
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$L_URL/api/health/live" 2>/dev/null && break
    kill -0 "$L_PID" 2>/dev/null || { tail -n 20 "$TMP/tasklane-$name.log" >&2; die "tasklane ($name) exited"; }
    sleep 0.1
  done
  curl -fsS -o /dev/null "$L_URL/api/health" || die "tasklane ($name) is not ready"
  log "tasklane ($name) pid $L_PID on port $port"
}

# terminate PID: SIGTERM, then waits for it to exit (nothing for an empty PID).
terminate() {
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

start_tasklane() { # config-name, then settings
  stop_tasklane
  launch_tasklane "$@"
  TL_PID=$L_PID TL_URL=$L_URL TL_CONFIG=$1
  L_PID=""
}

stop_tasklane() {
  terminate "$TL_PID"
  TL_PID=""
}

start_companion() { # config-name, then settings
  stop_companion
  launch_tasklane "$@"
  CO_PID=$L_PID CO_URL=$L_URL CO_CONFIG=$1
  L_PID=""
}

stop_companion() {
  terminate "$CO_PID"
  CO_PID=""
  ON_COMPANION=" "
}

# target ID: the tasklane scenario ID runs on (T_PID, T_URL, T_CONFIG).
target() {
  if [[ $ON_COMPANION == *" $1 "* ]]; then
    T_PID=$CO_PID T_URL=$CO_URL T_CONFIG=$CO_CONFIG
  else
    T_PID=$TL_PID T_URL=$TL_URL T_CONFIG=$TL_CONFIG
  fi
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)

# median_by_rps LINE...: of wrk's "BENCH requests=... duration_us=..." lines (any fields may
# follow), the one with the median requests/s (the upper middle of an even count).
median_by_rps() {
  local line
  for line in "$@"; do
    awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
           printf "%.3f %s\n", f["requests"] * 1e6 / f["duration_us"], $0 }' <<<"$line"
  done | sort -n | sed -n "$(( $# / 2 + 1 ))p" | cut -d' ' -f2-
}

# run_wrk ID SCRIPT PATH [script args...]: a warm-up, then the measured run, against the tasklane
# running now; records requests/s, latency, errors, its CPU time and its peak RSS (VmHWM, reset
# before the run through /proc/PID/clear_refs).
#
# The scenarios in MEDIAN3 are measured three times (those of run_turns TURN_ROUNDS times) and
# the run with the median requests/s is recorded (its latency and CPU; the peak RSS and the
# errors are the worst of its runs): each is compared with another scenario of about the same
# cost (a 304 must serve at least as many requests as the 200 it replaces; the mix at least 0.40
# of the cached list), whose single 10 s runs moved by up to 10% (the mix: 15%) against each
# other between runs, so one run each decided the comparison by chance. Scenarios compared with
# each other are measured in turn (run_turns), so that a machine that slows down or speeds up
# during the run weighs on all alike, and five times: on a 2 x AMD EPYC VM single runs of the
# same scenario moved by up to 25% between rounds a minute apart, while get one's 304 is held
# to be no slower than the list, whose cost per request it is within a few percent of
# (PERFORMANCE.md section 33).
MEDIAN3=" list3 list3_304 get get_304 get_304_one mix "
TURN_ROUNDS=${BENCH_ROUNDS:-5}
# run_counters: "JOINED MISSES" of the running tasklane, from one read of /metrics (0 for a
# counter it lacks). JOINED: list reads answered by joining an identical one (PostgreSQL only).
# MISSES: cache lookups that missed, list pages and task versions; a measured run of a cached
# scenario should have none: one that has many held an expiry wave (PERFORMANCE.md section 33).
run_counters() {
  curl -fsS "$T_URL/metrics" 2>/dev/null | awk '
    $1 == "tasklane_db_lists_joined_total" { j += $2 }
    $1 == "tasklane_cache_misses_total" || $1 == "tasklane_cache_revalidation_misses_total" { m += $2 }
    END { print j + 0, m + 0 }'
}

run_wrk() {
  want "$1" || return 0
  target "$1"
  log "scenario $1 ($T_CONFIG): $3"
  warm_up "$@"
  local runs=1 k
  [[ $MEDIAN3 == *" $1 "* ]] && runs=3
  for ((k = 0; k < runs; k++)); do measure_once "$@"; done
  record_measured "$1"
}

# run_turns "ID SCRIPT PATH [args...]" ...: scenarios compared with each other, all in MEDIAN3,
# measured in turn (A B C A B C ..., TURN_ROUNDS rounds), each run after a warm-up of its own, as
# every other scenario's is: a round takes about as long as the cache's TTL (60 s), so without
# it every run of get one's 304 after the first began by reading its 8,192 tasks' versions
# from PostgreSQL again, their entries having expired since its last run (7,500 misses a run,
# where one run of the list has one; PERFORMANCE.md section 33). Those BENCH_ONLY leaves out are
# skipped. Each string is split at spaces, so no argument in it may contain one.
run_turns() {
  local -a specs=() one
  local spec k
  for spec in "$@"; do
    read -r -a one <<<"$spec"
    want "${one[0]}" && specs+=("$spec")
  done
  for ((k = 0; k < TURN_ROUNDS; k++)); do
    for spec in "${specs[@]}"; do
      read -r -a one <<<"$spec"
      if [ "$k" = 0 ]; then
        target "${one[0]}"
        log "scenario ${one[0]} ($T_CONFIG; in turn, $TURN_ROUNDS rounds): ${one[2]}"
      fi
      warm_up "${one[@]}"
      measure_once "${one[@]}"
    done
  done
  for spec in "${specs[@]}"; do
    read -r -a one <<<"$spec"
    record_measured "${one[0]}"
  done
}

# warm_up ID SCRIPT PATH [script args...]: WARMUP seconds of the scenario, not measured.
warm_up() {
  local id=$1 script=$2 path=$3
  shift 3
  target "$id"
  BENCH_PHASE=warmup BENCH_LUA="$ROOT/scripts/bench" wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" \
    --timeout 5s -s "$ROOT/scripts/bench/$script" "$T_URL$path" -- "$@" >/dev/null
}

# measure_once ID SCRIPT PATH [script args...]: one measured run, kept in $TMP/runs/ID.
measure_once() {
  local id=$1 script=$2 path=$3
  shift 3
  local before out after hwm line joined misses joined_after misses_after
  target "$id"
  echo 5 >"/proc/$T_PID/clear_refs" 2>/dev/null || true
  before=$(cpu_ticks "$T_PID")
  read -r joined misses <<<"$(run_counters)"
  out=$(BENCH_PHASE=measure BENCH_LUA="$ROOT/scripts/bench" wrk -t"$THREADS" -c"$CONNS" \
    -d"${DURATION}s" --timeout 5s -s "$ROOT/scripts/bench/$script" "$T_URL$path" -- "$@")
  after=$(cpu_ticks "$T_PID")
  read -r joined_after misses_after <<<"$(run_counters)"
  joined=$(( joined_after - joined )) misses=$(( misses_after - misses ))
  if [ "$misses" -gt 0 ]; then log "  $id: $misses cache misses in this measured run"; fi
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$T_PID/status")
  line=$(grep '^BENCH ' <<<"$out") || { echo "$out" >&2; die "$id: wrk reported nothing"; }
  mkdir -p "$TMP/runs"
  echo "$line joined=$joined misses=$misses cpu_ticks=$(( after - before )) hwm_kib=$hwm" >>"$TMP/runs/$id"
}

# record_measured ID: the runs kept for ID, as one result (the median run; see MEDIAN3).
record_measured() {
  local id=$1 pick worst_hwm sums cpu bench
  local -a measured
  mapfile -t measured <"$TMP/runs/$id"
  rm -f "$TMP/runs/$id"
  pick=$(median_by_rps "${measured[@]}")
  worst_hwm=$(printf '%s\n' "${measured[@]}" | grep -o 'hwm_kib=[0-9]*' | cut -d= -f2 | sort -n | tail -1)
  # Errors of every run count: a median must not hide them.
  sums=$(printf '%s\n' "${measured[@]}" | awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "=")
      if (kv[1] == "status_errors") s += kv[2]; if (kv[1] == "socket_errors") k += kv[2] } }
      END { printf "status_errors=%d socket_errors=%d", s, k }')
  cpu=$(grep -o 'cpu_ticks=[0-9]*' <<<"$pick" | cut -d= -f2)
  bench=$(sed -E "s/ cpu_ticks=[0-9]+ hwm_kib=[0-9]+\$//; s/status_errors=[0-9]+ socket_errors=[0-9]+/$sums/" <<<"$pick")
  # Every run's requests/s, in the order measured, for the report.
  if [ "${#measured[@]}" -gt 1 ]; then
    bench+=" runs_rps=$(printf '%s\n' "${measured[@]}" | awk '{ for (i = 2; i <= NF; i++) {
        split($i, kv, "="); f[kv[1]] = kv[2] }
        printf "%s%d", (NR > 1 ? ":" : ""), f["requests"] * 1e6 / f["duration_us"] }')"
    bench+=" runs_misses=$(printf '%s\n' "${measured[@]}" | grep -o 'misses=[0-9]*' | cut -d= -f2 | paste -sd:)"
  fi
  target "$id"
  record "$id" "$T_CONFIG" "$bench" "$cpu" "$worst_hwm" >>"$RESULTS"
}

# record ID CONFIG "BENCH ..." [CPU_TICKS VMHWM_KIB]: one JSON line of results.
record() {
  python3 - "$CLK_TCK" "$@" <<'PY'
import json, sys
clk, sid, config, line = sys.argv[1:5]
rest = sys.argv[5:]
f = {k: v for k, v in (kv.split("=") for kv in line.split()[1:])}
runs = [int(x) for x in f.pop("runs_rps", "").split(":") if x]
runs_misses = [int(x) for x in f.pop("runs_misses", "").split(":") if x]
f = {k: int(v) for k, v in f.items()}
secs = f["duration_us"] / 1e6
r = {"id": sid, "config": config, "requests": f["requests"],
     "rps": f["requests"] / secs if secs else 0.0,
     "p50_ms": f["p50_us"] / 1000, "p99_ms": f["p99_us"] / 1000,
     "errors": f["status_errors"] + f["socket_errors"]}
if f.get("joined"):
    r["joined"] = f["joined"]
if runs:
    r["runs_rps"] = runs
if f.get("misses") or any(runs_misses):
    r["cache_misses"] = f.get("misses", 0)
    if runs_misses:
        r["runs_cache_misses"] = runs_misses
if rest:
    r["cpu_s"] = int(rest[0]) / int(clk)
    r["rss_kib"] = int(rest[1])
print(json.dumps(r))
PY
}

# ---------------------------------------------------------------------------------------------
# The limits. Each is measured right next to the scenarios compared with it, so that a machine
# whose load changes during the run still compares like with like.
limit_result() { # id rps p50_ms p99_ms
  printf '{"id": "%s", "config": "limit", "rps": %s, "p50_ms": %s, "p99_ms": %s, "errors": 0}\n' \
    "$1" "$2" "$3" "$4" >>"$RESULTS"
}

# nginx serving static files (the cached list bodies) from $TMP/www, started on first use.
NGINX_PORT=""
nginx_limit() { # ID FILE: nginx serving that file, as limit ID
  [ "$LIMITS" = 1 ] || return 0
  local id=$1 file=$2
  if [ -z "$NGINX_PORT" ]; then
    NGINX_PORT=$(free_port)
    mkdir -p "$TMP/nginx"
    cat >"$TMP/nginx/nginx.conf" <<NGINX
worker_processes auto;
daemon off;
user $(id -un);
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    types { application/json json; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $TMP/www;
    }
}
NGINX
    "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" 2>>"$TMP/nginx/error.log" &
    NGINX_PID=$!
  fi
  local url
  url="http://127.0.0.1:$NGINX_PORT/$(basename "$file")"
  for _ in $(seq 1 50); do curl -fsS -o /dev/null "$url" 2>/dev/null && break; sleep 0.1; done
  log "limit: nginx serving $(basename "$file") ($(stat -c %s "$file") bytes)"
  BENCH_LUA="$ROOT/scripts/bench" wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" \
    -s "$ROOT/scripts/bench/get.lua" "$url" >/dev/null
  # Three runs, the median by requests/s: nginx's figure for the same file has moved by half
  # between runs an hour apart (70.7k and 104.8k req/s for the 100-row list) while Tasklane's
  # stayed put, and one run of a limit decides the ratio of every scenario compared with it.
  local out runs=()
  for _ in 1 2 3; do
    runs+=("$(BENCH_LUA="$ROOT/scripts/bench" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 5s \
      -s "$ROOT/scripts/bench/get.lua" "$url" | grep '^BENCH ')")
  done
  out=$(median_by_rps "${runs[@]}")
  record "$id" limit "$out" >>"$RESULTS"
}

# pgbench on the limits database; per-transaction logs (sampled) give the percentiles.
pgbench_limit() { # ID, then pgbench arguments; PGB_DB=name runs it on another database
  [ "$LIMITS" = 1 ] || return 0
  local id=$1 db=${PGB_DB:-$DB_LIMITS}
  shift
  rm -rf "$TMP/pgb" && mkdir -p "$TMP/pgb"
  "$PGBENCH" -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -c "$CONNS" -j "$THREADS" -M prepared \
    -T "$WARMUP" "$@" "$db" >/dev/null 2>&1
  "$PGBENCH" -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -c "$CONNS" -j "$THREADS" -M prepared \
    -T "$DURATION" --log --sampling-rate 0.1 --log-prefix "$TMP/pgb/log" "$@" "$db" \
    >"$TMP/pgb/out.txt" 2>&1 || { cat "$TMP/pgb/out.txt" >&2; die "pgbench failed"; }
  python3 - "$id" "$TMP/pgb" >>"$RESULTS" <<'PY'
import glob, json, re, sys
sid, folder = sys.argv[1:]
text = open(folder + "/out.txt").read()
tps = float(re.search(r"tps = ([0-9.]+)", text).group(1))
failed = re.search(r"number of failed transactions: (\d+)", text)
lat = sorted(int(l.split()[2]) for f in glob.glob(folder + "/log.*") for l in open(f) if l.strip())
pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))] / 1000 if lat else 0.0
print(json.dumps({"id": sid, "config": "limit", "rps": tps, "p50_ms": pct(0.50),
                  "p99_ms": pct(0.99), "errors": int(failed.group(1)) if failed else 0}))
PY
}
pgbench_select_limit() {
  log "limit: pgbench -S (prepared primary-key selects)"
  pgbench_limit pgbench_select -S
}
pgbench_insert_limit() {
  log "limit: pgbench, a create's INSERT ... RETURNING"
  pgbench_limit pgbench_insert -n -f "$ROOT/scripts/bench/pgbench_insert.sql" \
    -D "title=bench task" -D "description=created by the benchmark" -D "status=todo"
}

redis_limit() {
  [ "$LIMITS" = 1 ] || return 0
  log "limit: redis-benchmark GET"
  local out rps p50 p99
  # About as long as a scenario: 100,000 GETs a second of BENCH_DURATION (a million at 10 s).
  out=$(redis-benchmark -h "$REDIS_HOST" -p "$REDIS_PORT" -c "$CONNS" -n "$((DURATION * 100000))" -t get --csv 2>/dev/null | tail -n 1)
  IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"$(tr -d '"' <<<"$out")"
  limit_result redis_get "$rps" "$p50" "$p99"
}

# ---------------------------------------------------------------------------------------------
# The scenarios, each configuration in turn, and the limits beside them.
LIST3_FILE=$TMP/www/list3.json
LIST100_FILE=$TMP/www/list100.json
mkdir -p "$TMP/www"

if [ -n "$NEED_SMALL" ]; then
  start_tasklane "pg+redis, 3 tasks" DATABASE_URL="$(pg_url "$DB_SMALL")" \
    REDIS_URL="redis://$REDIS_HOST:$REDIS_PORT/0" TASKLANE_CACHE_KEY_PREFIX="$KEY_PREFIX-small"
  # The bytes nginx serves: the cached list's body, as the API sends it.
  curl -fsS "$TL_URL/api/tasks" -o "$LIST3_FILE"
  LIST3_ETAG=$(curl -fsS -D - -o /dev/null "$TL_URL/api/tasks" | awk -F': ' 'tolower($1) == "etag" {print $2}' | tr -d '\r')
  run_wrk health get.lua /api/health
  if want list3 || want list3_304; then nginx_limit nginx_list3 "$LIST3_FILE"; fi
  # A task's 304 is compared with the cached list (issue 5: at least its requests/s) and with its
  # own 200, so all of them are measured in turn: the tasks' scenarios on a companion serving
  # the 100,000 tasks. Reads take ids 1-50,000 (all still version 1: ETag "v1"); the writes
  # later take 50,001-100,000. get_304_one is not a target: the same 304 for one task, with the
  # list's script (one request, one key); read against get_304, it tells what the spread over
  # 8,192 tasks costs (client and server) from what the route and handler cost (PERFORMANCE.md
  # section 32).
  if need get get_304 get_304_one; then
    start_companion "pg+redis, 100k tasks" DATABASE_URL="$(pg_url "$DB_100K")" \
      REDIS_URL="redis://$REDIS_HOST:$REDIS_PORT/0" TASKLANE_CACHE_KEY_PREFIX="$KEY_PREFIX-100k"
    ON_COMPANION=" get get_304 get_304_one "
  fi
  run_turns "list3 get.lua /api/tasks" "list3_304 get.lua /api/tasks header=If-None-Match:$LIST3_ETAG" \
    "get get_ids.lua /api/tasks/1 lo=1 hi=50000" "get_304 get_ids.lua /api/tasks/1 lo=1 hi=50000 etag=\"v1\"" \
    "get_304_one get.lua /api/tasks/1 header=If-None-Match:\"v1\""
  stop_companion
  if want get; then pgbench_select_limit; fi
  # Writes touch the 3 tasks; ids 1-3 in a fresh database.
  run_wrk mix mix.lua /api/tasks lo=1 hi=3
  if want mix; then
    log "limit: pgbench, the mix's UPDATE on the same 3 rows"
    PGB_DB=$DB_SMALL pgbench_limit pgbench_update -n -f "$ROOT/scripts/bench/pgbench_update.sql"
  fi
fi

if [ -n "$NEED_100K" ]; then
  # Without Redis the PostgreSQL configuration does not cache: these measure the store. First
  # the search over the 100,000 tasks as loaded (the issue's scenario), before any write.
  if need search search_distinct; then
    start_tasklane "pg, 100k tasks, no cache" DATABASE_URL="$(pg_url "$DB_100K")"
    run_wrk search search.lua /api/tasks
    # The same texts, each request cased at random: the same work per search with no read to
    # join, so the figure above can be read against what the store does per search.
    run_wrk search_distinct search_distinct.lua /api/tasks
  fi
  if need list100 update create; then
    start_tasklane "pg+redis, 100k tasks" DATABASE_URL="$(pg_url "$DB_100K")" \
      REDIS_URL="redis://$REDIS_HOST:$REDIS_PORT/0" TASKLANE_CACHE_KEY_PREFIX="$KEY_PREFIX-100k"
    curl -fsS "$TL_URL/api/tasks" -o "$LIST100_FILE"
    run_wrk list100 get.lua /api/tasks
    nginx_limit nginx_list100 "$LIST100_FILE"
    run_wrk update put.lua /api/tasks/1 lo=50001 hi=100000
    run_wrk create post.lua /api/tasks
    pgbench_insert_limit
  fi

  # The same store queries on the table the writes above left (the worst case for a search).
  if need status search_after_writes; then
    # update and create have just changed or added ~100,000 rows: autovacuum would start on
    # the table (and on its trigram indexes' pending lists) during the next scenarios and
    # measure itself. Vacuum now, as a maintained table would be, then measure the queries.
    log "vacuum and analyze after the writes"
    psql_q -d "$DB_100K" -c "VACUUM (ANALYZE) tasks" >/dev/null
    start_tasklane "pg, 100k tasks, no cache" DATABASE_URL="$(pg_url "$DB_100K")"
    run_wrk status get.lua "/api/tasks?status=done"
    run_wrk search_after_writes search.lua /api/tasks
  fi
fi

if [ -n "$NEED_1K" ]; then
  start_tasklane "pg, 1k tasks, no cache" DATABASE_URL="$(pg_url "$DB_1K")"
  run_wrk first_1k get.lua /api/tasks
fi
if [ -n "$NEED_1M" ]; then
  if want first_1m; then
    start_tasklane "pg, 1M tasks, no cache" DATABASE_URL="$(pg_url "$DB_1M")"
    run_wrk first_1m get.lua /api/tasks
  fi
  if want delete; then
    start_tasklane "pg+redis, 1M tasks" DATABASE_URL="$(pg_url "$DB_1M")" \
      REDIS_URL="redis://$REDIS_HOST:$REDIS_PORT/0" TASKLANE_CACHE_KEY_PREFIX="$KEY_PREFIX-1m"
    run_wrk delete delete.lua /api/tasks/1 from=500001 warmup_from=1 threads="$THREADS"
  fi
fi

if [ -n "$NEED_SQLITE" ]; then
  start_tasklane "sqlite+memory, 100k tasks" TASKLANE_STORE=sqlite TASKLANE_SQLITE_PATH="$SQLITE_FILE"
  run_wrk sqlite_list100 get.lua /api/tasks
  run_wrk sqlite_get get_ids.lua /api/tasks/1 lo=1 hi=50000
  run_wrk sqlite_create post.lua /api/tasks
  run_wrk sqlite_update put.lua /api/tasks/1 lo=50001 hi=100000
  run_wrk sqlite_mix mix.lua /api/tasks lo=50001 hi=100000
fi
stop_tasklane

# The limits no scenario above was near (a partial run with BENCH_ONLY).
if [ "$LIMITS" = 1 ]; then
  grep -q '"nginx_list3"' "$RESULTS" || nginx_limit nginx_list3 "$LIST3_FILE"
  if ! grep -q '"nginx_list100"' "$RESULTS" && [ -s "$LIST100_FILE" ]; then nginx_limit nginx_list100 "$LIST100_FILE"; fi
  grep -q '"pgbench_select"' "$RESULTS" || pgbench_select_limit
  grep -q '"pgbench_insert"' "$RESULTS" || pgbench_insert_limit
  redis_limit
fi
if [ -n "$NGINX_PID" ]; then
  kill -QUIT "$NGINX_PID" 2>/dev/null || true
  wait "$NGINX_PID" 2>/dev/null || true
  NGINX_PID=""
fi

# ---------------------------------------------------------------------------------------------
# The machine, the table, the files.
machine_json=$TMP/machine.json
python3 - >"$machine_json" <<PY
import json, os, platform, re, subprocess
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem_kib = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1))
osname = next((l.split("=", 1)[1].strip().strip('"') for l in open("/etc/os-release") if l.startswith("PRETTY_NAME=")), "?")
print(json.dumps({
    "nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 1048576, 1),
    "kernel": platform.release(), "os": osname,
    "postgresql": sh("psql -h $PG_HOST -p $PG_PORT -U $PG_USER -d postgres -Atc 'show server_version'"),
    "redis": sh("redis-cli -h $REDIS_HOST -p $REDIS_PORT info server | sed -n 's/^redis_version://p'"),
    "nginx": sh("$NGINX -v 2>&1").replace("nginx version: ", ""),
    "wrk": sh("wrk -v 2>&1 | head -n 1").split(" [")[0],
    "pgbench": sh("$PGBENCH -V"),
    "rustc": sh("rustc -V"),
    "load_end": open("/proc/loadavg").read().split()[:3],
    "load_start": "$LOAD_START".split(),
    "date": sh("date -u +'%Y-%m-%d %H:%M UTC'"),
    "elapsed_s": $(( $(date +%s) - STARTED_AT )), "load_s": $LOAD_SECS,
    "duration": $DURATION, "warmup": $WARMUP, "connections": $CONNS, "wrk_threads": $THREADS,
    "tasklane_env": "${BENCH_TASKLANE_ENV:-}",
    "bytes_list3": os.path.getsize("$LIST3_FILE") if os.path.exists("$LIST3_FILE") else 0,
    "bytes_list100": os.path.getsize("$LIST100_FILE") if os.path.exists("$LIST100_FILE") else 0,
}))
PY
[ -n "${BENCH_RESULTS:-}" ] && cp "$RESULTS" "$BENCH_RESULTS"
report_args=("$RESULTS" "$machine_json")
if [ "$WRITE" = 1 ]; then
  report_args+=(--markdown "$DOCS/PERFORMANCE.md" --svg "$DOCS/performance.svg")
fi
python3 "$ROOT/scripts/bench/report.py" "${report_args[@]}"
