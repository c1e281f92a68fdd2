#!/usr/bin/env bash
# Makes sure the PostgreSQL and Redis that the tests use are installed and answering on
# 127.0.0.1:5432 (user postgres, trust auth on loopback) and 127.0.0.1:6379. Installs them from
# Debian's packages where absent and starts them where stopped. Idempotent; safe to run often.
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 -U postgres 2>/dev/null; }

ensure_postgres() {
  if ! command -v pg_isready >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    as_root true
    apt_install postgresql postgresql-contrib
  fi
  if ! pg_up; then
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$version" ]; then
      log "no PostgreSQL cluster found; creating one"
      version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
      as_root pg_createcluster "$version" main
    fi
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
  fi
  pg_up || { log "PostgreSQL does not answer on 127.0.0.1:5432"; exit 1; }
  # The tests connect as postgres without a password over loopback.
  if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
    log "allowing trust auth for postgres on loopback (test machine only)"
    local hba
    hba=$(as_root runuser -u postgres -- psql -Atqc 'show hba_file')
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
    as_root runuser -u postgres -- psql -qc 'select pg_reload_conf()' >/dev/null
    sleep 0.5
  fi
  psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null
}

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

ensure_redis() {
  if ! command -v redis-server >/dev/null; then
    apt_install redis-server
  fi
  if ! redis_up; then
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 40); do redis_up && break; sleep 0.25; done
  fi
  redis_up || { log "Redis does not answer on 127.0.0.1:6379"; exit 1; }
}

ensure_postgres
ensure_redis
log "PostgreSQL and Redis are up"
