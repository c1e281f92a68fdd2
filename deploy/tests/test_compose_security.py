"""Security properties of deploy/compose.yaml, asserted on Compose v2's own normalised view of
the file (`docker compose config --format json`) and on the text as written."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT, run_compose

SERVICES = {"nginx", "api", "db", "redis", "pgadmin"}
SENSITIVE_KEY = re.compile(r"PASS|SECRET|TOKEN|CREDENTIAL|PRIVATE|_KEY$|^KEY", re.I)
SENSITIVE_VALUE = re.compile(r"password|passwd|secret", re.I)
URL_WITH_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s@'\"]*:[^/\s@'\"]+@", re.I)


def duration_seconds(text: str) -> float:
    """Compose duration ("15s", "1m30s", "500ms") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def memory_bytes(value) -> int:
    return int(value)


def test_the_five_services_are_there(cfg, cfg_default):
    assert set(cfg["services"]) == SERVICES
    # pgAdmin is not started by a plain `docker compose up`.
    assert set(cfg_default["services"]) == SERVICES - {"pgadmin"}


def test_only_nginx_publishes_a_port(cfg):
    for name, svc in cfg["services"].items():
        if name in ("nginx", "pgadmin"):
            continue
        assert not svc.get("ports"), f"{name} publishes {svc.get('ports')}"
    ports = cfg["services"]["nginx"]["ports"]
    assert len(ports) == 1
    assert ports[0]["target"] == 8080, "nginx-unprivileged listens on 8080 inside"
    assert ports[0]["published"] == "80", "the default published port is 80 (TASKLANE_HTTP_PORT)"


def test_nginx_port_is_configurable(raw):
    assert raw["services"]["nginx"]["ports"] == ["${TASKLANE_HTTP_PORT:-80}:8080"]


def test_no_database_or_redis_port(cfg):
    for name in ("db", "redis"):
        svc = cfg["services"][name]
        assert not svc.get("ports"), f"{name} must publish no port"


def test_pgadmin_only_under_admin_profile_and_on_loopback(cfg, raw):
    assert raw["services"]["pgadmin"]["profiles"] == ["admin"]
    for name, svc in raw["services"].items():
        if name != "pgadmin":
            assert "profiles" not in svc, f"{name} must start without a profile"
    ports = cfg["services"]["pgadmin"]["ports"]
    assert ports, "pgadmin publishes its port (to loopback)"
    for port in ports:
        assert port.get("host_ip") == "127.0.0.1", f"pgadmin port not bound to 127.0.0.1: {port}"


def test_networks(cfg):
    nets = cfg["networks"]
    assert nets["db"].get("internal") is True, "the database network must be internal"
    internal = {n for n, spec in nets.items() if spec.get("internal")}
    svc = cfg["services"]
    # db and redis live only on internal networks.
    for name in ("db", "redis"):
        on = set(svc[name]["networks"])
        assert on and on <= internal, f"{name} is on a non-internal network: {on - internal}"
    # The API is on the db network and reaches nothing outside.
    assert "db" in svc["api"]["networks"]
    assert set(svc["api"]["networks"]) <= internal
    # nginx shares a network with the api, not with the database.
    assert set(svc["nginx"]["networks"]) & set(svc["api"]["networks"])
    assert "db" not in svc["nginx"]["networks"]
    # pgAdmin: the internal db network plus a non-internal one, so Docker publishes its port.
    pg = set(svc["pgadmin"]["networks"])
    assert "db" in pg and pg - internal, "pgadmin needs db plus a non-internal network"


def _env_items(cfg):
    for name, svc in cfg["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            yield name, key, "" if value is None else str(value)


def test_no_literal_secrets_in_environment(cfg):
    for name, key, value in _env_items(cfg):
        if SENSITIVE_KEY.search(key) or SENSITIVE_VALUE.search(value):
            assert key.endswith("_FILE"), f"{name}: {key} looks secret but is not a *_FILE variable"
            assert value.startswith("/run/secrets/"), f"{name}: {key}={value!r} is not a secret file"
        assert not URL_WITH_CREDENTIALS.search(value), f"{name}: {key} holds a URL with credentials"


def test_no_literal_secrets_anywhere_in_the_file(compose_text):
    assert not URL_WITH_CREDENTIALS.search(compose_text), "a URL with credentials in compose.yaml"
    for line in compose_text.splitlines():
        code = line.split("#", 1)[0]
        m = re.match(r"\s*-?\s*([A-Za-z_][A-Za-z0-9_]*)\s*[:=]\s*(\S.*)?$", code)
        if m and m.group(1) != "secrets" and SENSITIVE_KEY.search(m.group(1)) and m.group(2):
            assert m.group(1).endswith("_FILE"), f"literal secret? {line.strip()}"


def test_no_password_on_a_command_line(cfg):
    for name, svc in cfg["services"].items():
        argv = list(svc.get("command") or []) + list(svc.get("entrypoint") or [])
        argv += list((svc.get("healthcheck") or {}).get("test") or [])
        words = " ".join(argv).split()
        for flag in ("--requirepass", "-a", "--pass", "--password", "-p"):
            assert flag not in words, f"{name}: {flag} on a command line: {argv}"


def test_secret_refs_are_files_under_deploy_secrets(cfg):
    secrets = cfg["secrets"]
    assert secrets, "compose declares its secrets"
    for name, spec in secrets.items():
        assert set(spec) <= {"name", "file"}, f"secret {name} must come from a file: {spec}"
        assert "/deploy/secrets/" in spec["file"].replace("\\", "/") or "/secrets/" in spec["file"]
    for name, svc in cfg["services"].items():
        for ref in svc.get("secrets") or []:
            assert ref["source"] in secrets, f"{name} uses an undeclared secret {ref}"


def test_secrets_dir_is_git_ignored():
    lines = [l.strip() for l in (ROOT / ".gitignore").read_text().splitlines()]
    assert any(l in ("/deploy/secrets/*", "deploy/secrets/*", "/deploy/secrets/", "deploy/secrets/") for l in lines)


def test_every_service_has_a_healthcheck(cfg):
    for name, svc in cfg["services"].items():
        hc = svc.get("healthcheck")
        assert hc and not hc.get("disable"), f"{name} has no healthcheck"
        test = hc["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: {test}"


def test_api_healthcheck_needs_no_shell(cfg):
    assert cfg["services"]["api"]["healthcheck"]["test"] == ["CMD", "/usr/local/bin/tasklane", "healthcheck"]


def test_depends_on_waits_for_health(cfg):
    expected = {"nginx": {"api"}, "api": {"db", "redis"}, "pgadmin": {"db"}}
    for name, svc in cfg["services"].items():
        deps = svc.get("depends_on") or {}
        assert set(deps) == expected.get(name, set()), f"{name} depends on {set(deps)}"
        for dep, spec in deps.items():
            assert spec["condition"] == "service_healthy", f"{name} -> {dep}: {spec}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_is_hardened(cfg, name):
    svc = cfg["services"][name]
    assert svc.get("cap_drop") == ["ALL"], f"{name}: cap_drop"
    assert "no-new-privileges:true" in (svc.get("security_opt") or []), f"{name}: no-new-privileges"
    assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), f"{name}: restart"
    limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
    assert limits.get("memory") and limits.get("cpus") and limits.get("pids"), f"{name}: limits {limits}"
    assert svc.get("logging", {}).get("driver") == "json-file", f"{name}: logs to Docker's stdout log"
    assert duration_seconds(svc["stop_grace_period"]) >= 10, f"{name}: stop_grace_period"
    if name != "pgadmin":
        # pgAdmin's entrypoint writes into its image and its image runs as its own user.
        assert svc.get("read_only") is True, f"{name}: read_only"
        user = svc.get("user", "")
        assert user and not user.startswith(("0", "root")), f"{name}: user {user!r}"
        assert not svc.get("cap_add"), f"{name}: cap_add {svc.get('cap_add')}"
    else:
        assert svc.get("cap_add", []) == ["NET_BIND_SERVICE"]


def test_api_hardening(cfg):
    api = cfg["services"]["api"]
    assert api["read_only"] is True
    assert api["cap_drop"] == ["ALL"] and not api.get("cap_add")
    assert "no-new-privileges:true" in api["security_opt"]
    limits = api["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and memory_bytes(limits["memory"]) <= 1024**3
    # The API exits within ~6-8 s of SIGTERM (drain 1 s + in-flight 5 s).
    assert duration_seconds(api["stop_grace_period"]) > 8
    env = api["environment"]
    assert env["TASKLANE_STORE"] == "postgres", "a missing DB secret must stop the API"
    assert env["TASKLANE_LISTEN"] == "0.0.0.0:5000"
    assert env["TASKLANE_LOG_FORMAT"] == "json"
    assert env["DATABASE_URL_FILE"].startswith("/run/secrets/")
    assert env["REDIS_URL_FILE"].startswith("/run/secrets/")
    assert "DATABASE_URL" not in env and "REDIS_URL" not in env
    assert {s["source"] for s in api["secrets"]} == {"database_url", "redis_url"}
    # Scaling with --scale needs no fixed name and no published port.
    assert "container_name" not in api and not api.get("ports")


def test_images_are_pinned(cfg):
    svc = cfg["services"]
    assert re.fullmatch(r"postgres:15\.\d+(\.\d+)?-alpine[\d.]*", svc["db"]["image"]), svc["db"]["image"]
    assert re.fullmatch(r"redis:7\.\d+\.\d+-alpine[\d.]*", svc["redis"]["image"]), svc["redis"]["image"]
    assert re.fullmatch(r"dpage/pgadmin4:\d+\.\d+(\.\d+)?", svc["pgadmin"]["image"]), svc["pgadmin"]["image"]
    for name in ("nginx", "api"):
        assert svc[name]["build"]["dockerfile"] == f"deploy/{'frontend' if name == 'nginx' else 'api'}.Dockerfile"


def test_data_lives_on_named_volumes(cfg):
    def targets(name):
        return {v["target"]: v for v in cfg["services"][name].get("volumes", [])}

    assert targets("db")["/var/lib/postgresql/data"]["type"] == "volume"
    assert targets("redis")["/data"]["type"] == "volume"
    assert {"postgres_data", "redis_data", "pgadmin_data"} <= set(cfg["volumes"])


def test_redis_has_password_and_append_only(cfg):
    redis = cfg["services"]["redis"]
    cmd = redis["command"]
    assert cmd[0] == "redis-server" and cmd[1] == "/run/secrets/redis_conf"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert {s["source"] for s in redis["secrets"]} == {"redis_conf"}


def test_postgres_password_from_secret(cfg):
    env = cfg["services"]["db"]["environment"]
    assert env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert "POSTGRES_PASSWORD" not in env
    assert "POSTGRES_HOST_AUTH_METHOD" not in env, "never trust auth over the network"


def test_compose_rejects_a_broken_file(compose_dir):
    """The binary really validates (its Python wrapper would exit 0 whatever happened)."""
    bad = compose_dir / "broken.yaml"
    bad.write_text("services:\n  a:\n    image: x:1\n    networks: [nope]\n")
    out = run_compose(compose_dir, "config", "--quiet", file=bad)
    assert out.returncode != 0 and "nope" in out.stderr
