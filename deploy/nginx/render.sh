#!/bin/sh
# Renders deploy/nginx/nginx.conf.template to stdout (POSIX sh + sed: runs in the alpine
# nginx image at build time and on Debian in the twin and CI).
#
#   render.sh [--profile container|kubernetes] [--template FILE]
#
# A profile gives defaults; each can be overridden by an environment variable:
#   NGINX_LISTEN        listen address                 container: 8080
#   NGINX_RESOLVER      DNS server for the API name    container: 127.0.0.11 (Docker's DNS)
#   NGINX_API_UPSTREAM  API host:port                  container: api:5000
#   NGINX_ROOT          UI files                       /usr/share/nginx/html
#   NGINX_RUNTIME_DIR   pid file and temp dirs         /tmp
#   NGINX_MIME_TYPES    mime.types file                /etc/nginx/mime.types
#   NGINX_ACCESS_LOG    access log                     /dev/stdout
#   NGINX_ERROR_LOG     error log                      /dev/stderr
# The kubernetes profile differs only in NGINX_RESOLVER (the cluster DNS) and
# NGINX_API_UPSTREAM (the api Service's full name, since nginx's resolver has no search list).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
template="$here/nginx.conf.template"
profile=container

while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile=${2:?--profile needs a value}; shift 2 ;;
        --template) template=${2:?--template needs a value}; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "render.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

case "$profile" in
    container)
        d_resolver=127.0.0.11
        d_api=api:5000
        ;;
    kubernetes)
        d_resolver=kube-dns.kube-system.svc.cluster.local
        d_api=api.tasklane.svc.cluster.local:5000
        ;;
    *) echo "render.sh: unknown profile: $profile (container|kubernetes)" >&2; exit 2 ;;
esac

LISTEN=${NGINX_LISTEN:-8080}
RESOLVER=${NGINX_RESOLVER:-$d_resolver}
API_UPSTREAM=${NGINX_API_UPSTREAM:-$d_api}
ROOT=${NGINX_ROOT:-/usr/share/nginx/html}
RUNTIME_DIR=${NGINX_RUNTIME_DIR:-/tmp}
MIME_TYPES=${NGINX_MIME_TYPES:-/etc/nginx/mime.types}
ACCESS_LOG=${NGINX_ACCESS_LOG:-/dev/stdout}
ERROR_LOG=${NGINX_ERROR_LOG:-/dev/stderr}

# Values are addresses and paths only: refuse anything that could change the config's syntax.
for pair in "LISTEN=$LISTEN" "RESOLVER=$RESOLVER" "API_UPSTREAM=$API_UPSTREAM" "ROOT=$ROOT" \
            "RUNTIME_DIR=$RUNTIME_DIR" "MIME_TYPES=$MIME_TYPES" "ACCESS_LOG=$ACCESS_LOG" \
            "ERROR_LOG=$ERROR_LOG"; do
    value=${pair#*=}
    case "$value" in
        ''|*[!A-Za-z0-9._:/-]*)
            echo "render.sh: NGINX_${pair%%=*} must be a non-empty address or path of [A-Za-z0-9._:/-], got '$value'" >&2
            exit 2 ;;
    esac
done

[ -r "$template" ] || { echo "render.sh: cannot read $template" >&2; exit 2; }

out=$(sed \
    -e "s|@LISTEN@|$LISTEN|g" \
    -e "s|@RESOLVER@|$RESOLVER|g" \
    -e "s|@API_UPSTREAM@|$API_UPSTREAM|g" \
    -e "s|@ROOT@|$ROOT|g" \
    -e "s|@RUNTIME_DIR@|$RUNTIME_DIR|g" \
    -e "s|@MIME_TYPES@|$MIME_TYPES|g" \
    -e "s|@ACCESS_LOG@|$ACCESS_LOG|g" \
    -e "s|@ERROR_LOG@|$ERROR_LOG|g" \
    "$template")

if printf '%s\n' "$out" | grep -q '@[A-Z_][A-Z_]*@'; then
    echo "render.sh: placeholders left unfilled:" >&2
    printf '%s\n' "$out" | grep -o '@[A-Z_][A-Z_]*@' | sort -u >&2
    exit 2
fi

printf '# Rendered from deploy/nginx/nginx.conf.template (profile %s) by deploy/nginx/render.sh.\n# Do not edit: edit the template and render again.\n%s\n' "$profile" "$out"
