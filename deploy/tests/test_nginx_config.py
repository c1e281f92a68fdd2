"""The one nginx template: it renders for every target, nginx accepts the result, and the
behaviour issue 4 asks for is written in it."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import DEPLOY, nginx_bin

TEMPLATE = DEPLOY / "nginx" / "nginx.conf.template"
RENDER = DEPLOY / "nginx" / "render.sh"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def render(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NGINX_")}
    full_env.update(env)
    return subprocess.run(["sh", str(RENDER), *args], env=full_env, capture_output=True, text=True, timeout=30)


def nginx_test(conf_text: str, tmp_path) -> subprocess.CompletedProcess:
    conf = tmp_path / "nginx.conf"
    conf.write_text(conf_text)
    return subprocess.run(
        [nginx_bin(), "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def scratch_paths(tmp_path) -> dict:
    """Paths under tmp_path for what nginx -t creates (temp dirs), so the test never writes
    outside its own directory; every other value is the profile's own."""
    tmp_path.chmod(0o755)
    (tmp_path / "run").mkdir()
    (tmp_path / "www").mkdir()
    return {"NGINX_RUNTIME_DIR": str(tmp_path / "run")}


@pytest.fixture(scope="module")
def template() -> str:
    return TEMPLATE.read_text()


def test_container_profile_renders_and_nginx_accepts_it(tmp_path):
    out = render("--profile", "container", **scratch_paths(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "resolver 127.0.0.11 valid=5s" in out.stdout
    assert 'set $tasklane_api "api:5000";' in out.stdout
    assert "listen 8080 default_server;" in out.stdout
    result = nginx_test(out.stdout, tmp_path)
    assert result.returncode == 0, result.stderr


def test_twin_style_render_is_accepted(tmp_path):
    paths = scratch_paths(tmp_path)
    out = render(
        NGINX_LISTEN="127.0.0.1:18080",
        NGINX_RESOLVER="127.0.0.1:15353",
        NGINX_API_UPSTREAM="api:15000",
        NGINX_ROOT=str(tmp_path / "www"),
        NGINX_ACCESS_LOG=str(tmp_path / "access.log"),
        NGINX_ERROR_LOG="stderr",
        **paths,
    )
    assert out.returncode == 0, out.stderr
    result = nginx_test(out.stdout, tmp_path)
    assert result.returncode == 0, result.stderr


def test_renders_differ_only_in_addresses_and_paths(tmp_path):
    container = render("--profile", "container").stdout.splitlines()
    kube = render("--profile", "kubernetes").stdout.splitlines()
    twin = render(NGINX_LISTEN="127.0.0.1:1", NGINX_RESOLVER="127.0.0.1:2", NGINX_API_UPSTREAM="api:3",
                  NGINX_ROOT="/r", NGINX_RUNTIME_DIR="/t", NGINX_ACCESS_LOG="/a", NGINX_ERROR_LOG="/e").stdout.splitlines()
    assert len(container) == len(kube) == len(twin)
    allowed = re.compile(r"^\s*(#.*|pid |error_log |include |\w+_temp_path |access_log |resolver |listen |root |set \$tasklane_api )")
    for a, b, c in zip(container, kube, twin):
        if not a == b == c:
            assert allowed.match(a), f"a behavioural line differs between renders: {a!r}"


def test_kubernetes_config_is_up_to_date():
    out = render("--profile", "kubernetes")
    assert out.returncode == 0, out.stderr
    committed = (DEPLOY / "kubernetes" / "nginx.conf").read_text()
    assert committed == out.stdout, (
        "deploy/kubernetes/nginx.conf is stale: run "
        "deploy/nginx/render.sh --profile kubernetes > deploy/kubernetes/nginx.conf"
    )


@pytest.mark.parametrize(
    "env",
    [
        {"NGINX_LISTEN": "80; include /etc/passwd"},
        {"NGINX_API_UPSTREAM": "api:5000\"; return 200 \"x"},
        {"NGINX_ROOT": "/srv/www}"},
        {"NGINX_ACCESS_LOG": "/dev/stdout main"},
    ],
)
def test_render_refuses_values_that_change_the_syntax(env):
    out = render(**env)
    assert out.returncode == 2 and "must be" in out.stderr


def test_render_refuses_unknown_profile():
    assert render("--profile", "nope").returncode == 2


def test_security_headers_on_every_response(template):
    for header, value in [
        ("Content-Security-Policy", CSP),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
    ]:
        assert f'add_header {header} "{value}" always;' in template, header
    # add_header in a location would silently drop the server-level ones there.
    server = template[template.index("    server {"):]
    for block in re.findall(r"location [^{]+\{(.*?)\n        \}", server, re.S):
        assert "add_header" not in block


def test_limits_and_errors(template):
    assert "client_max_body_size 64k;" in template
    assert "limit_req_status 429;" in template
    assert re.search(r"limit_req_zone \$binary_remote_addr zone=tasklane_api:\d+m rate=20r/s;", template)
    assert "limit_req zone=tasklane_api burst=50 nodelay;" in template
    assert "gzip on;" in template and "application/json" in template
    assert re.search(r"location \^~ /metrics \{\s*deny all;\s*\}", template)


def test_retries_only_as_nginx_allows(template):
    assert "proxy_next_upstream error timeout http_502 http_503;" in template
    assert "proxy_next_upstream_tries 2;" in template
    assert "non_idempotent" not in template.replace("(no `non_idempotent`)", "")
    for directive in ("proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout"):
        assert re.search(rf"{directive} \d+s;", template), directive


def test_upstream_is_resolved_at_request_time(template):
    assert re.search(r"resolver @RESOLVER@ valid=\d+s ipv6=off;", template)
    assert "proxy_pass http://$tasklane_api;" in template
    assert not re.search(r"^\s*upstream\s", template, re.M), "the choice is resolver + variable"
