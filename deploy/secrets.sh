#!/usr/bin/env bash
# Generates Tasklane's deployment secrets into deploy/secrets/ (git-ignored).
#
#   deploy/secrets.sh           # make the passwords that are missing; keep existing ones
#   deploy/secrets.sh --force   # make new passwords for all (see the warning it prints)
#
# Raw passwords (random, 64 hex characters, so they need no escaping in a URL or config file):
#   postgres_password   PostgreSQL's `tasklane` role (POSTGRES_PASSWORD_FILE)
#   redis_password      Redis's requirepass
#   pgadmin_password    pgAdmin's login (PGADMIN_DEFAULT_PASSWORD_FILE)
# Derived from them, rewritten on every run so they always agree with the raw ones:
#   database_url        postgres://tasklane:<pw>@db:5432/tasklane   (DATABASE_URL_FILE)
#   redis_url           redis://:<pw>@redis:6379/0                  (REDIS_URL_FILE)
#   redis.conf          requirepass <pw>                            (redis-server's config)
#
# Permissions: the directory is 0700, so no other user of this host can read anything in it.
# The files are 0644 inside it because Compose bind-mounts file secrets with their host mode
# and owner (it ignores uid/gid/mode for them), and the containers read them as their own
# non-root users (65532, 70, 999, 5050), which only the "other" read bit allows.
# Prints the names of the files it wrote, never their contents.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

force=0
case "${1:-}" in
    "") ;;
    --force) force=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "secrets.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
esac

dir=${TASKLANE_SECRETS_DIR:-"$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/secrets"}
db_user=tasklane
db_name=tasklane

random_hex() {
    if command -v openssl >/dev/null 2>&1; then
        openssl rand -hex 32
    else
        od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
        echo
    fi
}

# Writes stdin to $dir/$1 atomically with mode 0644 (inside the 0700 directory).
write_file() {
    local name=$1 tmp
    tmp=$(mktemp "$dir/.$name.XXXXXX")
    cat >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$dir/$name"
}

# Reads a raw password file, refusing one that is empty or holds anything but [A-Za-z0-9].
read_password() {
    local value
    value=$(tr -d '\r\n' <"$dir/$1")
    if [[ ! $value =~ ^[A-Za-z0-9]{16,}$ ]]; then
        echo "secrets.sh: $dir/$1 must hold one password of at least 16 letters/digits; fix it or run with --force" >&2
        exit 1
    fi
    printf '%s' "$value"
}

umask 077
mkdir -p "$dir"
chmod 0700 "$dir"

if [[ $force == 1 ]]; then
    echo "secrets.sh: --force: making new passwords. PostgreSQL and pgAdmin read theirs only when"
    echo "  their volume is first created: for an existing database also run"
    echo "  ALTER ROLE $db_user PASSWORD '...' (see deploy/README-section.md), or the API cannot log in."
fi

made=()
kept=()
for name in postgres_password redis_password pgadmin_password; do
    if [[ $force == 1 || ! -s "$dir/$name" ]]; then
        random_hex | write_file "$name"
        made+=("$name")
    else
        kept+=("$name")
    fi
done

pg_pw=$(read_password postgres_password)
redis_pw=$(read_password redis_password)
read_password pgadmin_password >/dev/null

printf 'postgres://%s:%s@db:5432/%s\n' "$db_user" "$pg_pw" "$db_name" | write_file database_url
printf 'redis://:%s@redis:6379/0\n' "$redis_pw" | write_file redis_url
printf 'requirepass %s\n' "$redis_pw" | write_file redis.conf

echo "secrets.sh: in $dir"
[[ ${#made[@]} -gt 0 ]] && echo "  new passwords:      ${made[*]}"
[[ ${#kept[@]} -gt 0 ]] && echo "  kept (existing):    ${kept[*]}"
echo "  derived (rewritten): database_url redis_url redis.conf"
