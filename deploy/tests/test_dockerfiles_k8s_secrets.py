"""The Dockerfiles, the Kubernetes manifests and deploy/secrets.sh."""

from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest
import yaml

from conftest import DEPLOY

K8S = DEPLOY / "kubernetes"
DOCKERFILES = sorted(DEPLOY.glob("*.Dockerfile"))


def stages(path):
    """(FROM line, lines of the stage) for each stage of a Dockerfile."""
    result = []
    for line in path.read_text().splitlines():
        if line.startswith("FROM "):
            result.append((line, []))
        elif result:
            result[-1][1].append(line)
    return result


def test_both_dockerfiles_exist():
    assert {p.name for p in DOCKERFILES} == {"api.Dockerfile", "frontend.Dockerfile"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_pinned_and_final_user_not_root(path):
    all_stages = stages(path)
    names = {m.group(1) for line, _ in all_stages if (m := re.search(r" AS (\w+)$", line))}
    for line, _ in all_stages:
        image = line.split()[1]
        if image in names:
            continue
        assert ":" in image and not image.endswith(":latest"), f"unpinned base image: {line}"
        repo, tag = image.rsplit(":", 1)
        # distroless publishes no version tags: its version is in the name (cc-debian12).
        versioned = re.search(r"\d", tag) or (repo.startswith("gcr.io/distroless/") and re.search(r"debian\d+$", repo))
        assert versioned or "@sha256:" in image, f"base image without a version: {line}"
    users = [l.split()[1] for l in all_stages[-1][1] if l.startswith("USER ")]
    assert users, f"{path.name}: the runtime stage sets no USER"
    assert not users[-1].startswith(("0", "root")), f"{path.name}: runs as root"
    assert any(l.startswith("HEALTHCHECK ") for l in all_stages[-1][1]), f"{path.name}: no HEALTHCHECK"


def test_api_dockerfile():
    text = (DEPLOY / "api.Dockerfile").read_text()
    assert "cargo build --release --locked --bin tasklane" in text
    assert "cargo chef cook --release --locked" in text, "dependencies in their own cached layer"
    final_from, final = stages(DEPLOY / "api.Dockerfile")[-1]
    assert "distroless" in final_from, "the runtime image has no shell"
    assert 'CMD ["/usr/local/bin/tasklane", "healthcheck"]' in "\n".join(final)
    assert 'ENTRYPOINT ["/usr/local/bin/tasklane"]' in final


def test_frontend_dockerfile_uses_the_template():
    text = (DEPLOY / "frontend.Dockerfile").read_text()
    assert "render.sh --profile container > /etc/nginx/nginx.conf" in text
    assert "COPY --chown=root:root frontend/ /usr/share/nginx/html/" in text
    assert 'RUN ["nginx", "-t", "-q"]' in text
    assert "nginx-unprivileged:" in text


@pytest.mark.parametrize("name", ["api.Dockerfile.dockerignore", "frontend.Dockerfile.dockerignore"])
def test_build_contexts_never_carry_secrets(name):
    lines = [l.strip() for l in (DEPLOY / name).read_text().splitlines()]
    assert "deploy/secrets" in lines or (lines and lines[lines.index("*") if "*" in lines else 0] == "*"
                                         and not any("secrets" in l for l in lines if l.startswith("!")))


def k8s_docs():
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind):
    return {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] == kind}


def pod_specs():
    for kind in ("Deployment", "StatefulSet"):
        for name, d in by_kind(kind).items():
            yield f"{kind}/{name}", d["spec"]["template"]["spec"]


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    for gen in kust.get("configMapGenerator", []):
        for f in gen["files"]:
            assert (K8S / f.split("=")[-1]).is_file(), f
    assert kust["namespace"] == "tasklane"


def test_no_secret_is_embedded():
    for name, d in k8s_docs():
        assert d["kind"] != "Secret", f"{name}: Secrets are created with kubectl, never committed"
    text = "\n".join(p.read_text() for p in K8S.glob("*"))
    assert not re.search(r"://[^/\s@'\"]*:[^/\s@'\"]+@", text), "a URL with credentials"


@pytest.mark.parametrize("workload", ["Deployment/api", "Deployment/nginx", "StatefulSet/db", "StatefulSet/redis"])
def test_pods_are_locked_down(workload):
    specs = dict(pod_specs())
    spec = specs[workload]
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
        assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
        assert c.get("readinessProbe") and c.get("livenessProbe"), f"{workload}: probes"
        for env in c.get("env", []):
            assert "valueFrom" in env or not re.search(r"PASS|SECRET", env["name"]) or env["name"].endswith("_FILE")


def test_api_deployment_probes_and_secret_refs():
    api = by_kind("Deployment")["api"]
    c = api["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/api/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/api/health/live"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["TASKLANE_STORE"] == "postgres"
    assert env["DATABASE_URL_FILE"].startswith("/run/secrets/")
    secret_volumes = [v for v in api["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert secret_volumes and secret_volumes[0]["secret"]["secretName"] == "tasklane-secrets"
    grace = api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = int(env["TASKLANE_DRAIN_DELAY_MS"]) / 1000 + int(env["TASKLANE_SHUTDOWN_TIMEOUT_SECS"])
    assert grace > drain


def test_pdb_hpa_services_ingress():
    assert by_kind("PodDisruptionBudget")["api"]["spec"]["minAvailable"] >= 1
    hpa = by_kind("HorizontalPodAutoscaler")["api"]
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["minReplicas"] >= 2
    assert {"api", "nginx", "db", "redis"} <= set(by_kind("Service"))
    assert by_kind("Ingress")["tasklane"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "nginx"
    for sts in by_kind("StatefulSet").values():
        assert sts["spec"]["volumeClaimTemplates"], "data on a PersistentVolumeClaim"


def test_k8s_data_images_match_compose(cfg):
    sts = by_kind("StatefulSet")
    assert sts["db"]["spec"]["template"]["spec"]["containers"][0]["image"] == cfg["services"]["db"]["image"]
    assert sts["redis"]["spec"]["template"]["spec"]["containers"][0]["image"] == cfg["services"]["redis"]["image"]


# deploy/secrets.sh


def run_secrets(tmp_path, *args):
    env = dict(os.environ, TASKLANE_SECRETS_DIR=str(tmp_path / "secrets"))
    return subprocess.run(["bash", str(DEPLOY / "secrets.sh"), *args], env=env, capture_output=True, text=True, timeout=30)


def test_secrets_script(tmp_path):
    d = tmp_path / "secrets"
    first = run_secrets(tmp_path)
    assert first.returncode == 0, first.stderr
    names = {"postgres_password", "redis_password", "pgadmin_password", "database_url", "redis_url", "redis.conf"}
    assert {p.name for p in d.iterdir()} == names
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for p in d.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name
    pg = (d / "postgres_password").read_text().strip()
    rd = (d / "redis_password").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", pg) and re.fullmatch(r"[0-9a-f]{64}", rd) and pg != rd
    assert (d / "database_url").read_text() == f"postgres://tasklane:{pg}@db:5432/tasklane\n"
    assert (d / "redis_url").read_text() == f"redis://:{rd}@redis:6379/0\n"
    assert (d / "redis.conf").read_text() == f"requirepass {rd}\n"
    # Values are never printed.
    assert pg not in first.stdout + first.stderr and rd not in first.stdout + first.stderr

    # A second run keeps the passwords; --force replaces them (and the derived files follow).
    assert run_secrets(tmp_path).returncode == 0
    assert (d / "postgres_password").read_text().strip() == pg
    forced = run_secrets(tmp_path, "--force")
    assert forced.returncode == 0 and "ALTER ROLE" in forced.stdout
    pg2 = (d / "postgres_password").read_text().strip()
    assert pg2 != pg and pg2 in (d / "database_url").read_text()


def test_secrets_script_refuses_a_bad_password_file(tmp_path):
    assert run_secrets(tmp_path).returncode == 0
    (tmp_path / "secrets" / "redis_password").write_text("p@ss word\n")
    out = run_secrets(tmp_path)
    assert out.returncode == 1 and "redis_password" in out.stderr
    assert run_secrets(tmp_path, "--bogus").returncode == 2
