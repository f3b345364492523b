"""deploy/ without running it: YAML lint, the image recipe, compose, Grafana and Kubernetes files.

Docker cannot run here, so the Dockerfile and docker-compose.yml are checked
for what they reference and promise. Kubernetes manifests are validated
offline against the API schemas shipped by ``kubernetes-validate``.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gatekeeper import environment
from gatekeeper.catalog.loader import load_catalog
from gatekeeper.server.config import ServerSettings, env_name
from tests.conftest import INTENTS, REPO
from tests.deploy_support import DASHBOARD, DEPLOY, METRICS, load_dashboard, panel_queries, require

K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
#: Kubernetes versions the manifests must be valid for: the oldest still common, and the newest known.
K8S_VERSIONS = ["1.29", "1.37"]
#: Environment variables the server reads besides its settings fields.
OTHER_ENV = {environment.STATE_DIR, environment.CATALOG, environment.CONFIG, "GATEKEEPER_EMBEDDING_API_KEY"}


def known_env() -> set[str]:
    """Every GATEKEEPER_* variable gatekeeper reads."""
    return {env_name(name) for name in ServerSettings.model_fields} | OTHER_ENV


def load_yaml_documents(path: Path) -> list[dict]:
    """The non-empty YAML documents of ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def k8s_manifests() -> list[Path]:
    """Every manifest file under deploy/k8s."""
    return sorted(K8S.rglob("*.yaml"))


def k8s_objects() -> list[dict]:
    """Every Kubernetes object under deploy/k8s."""
    return [doc for path in k8s_manifests() for doc in load_yaml_documents(path)]


def gatekeeper_containers() -> list[dict]:
    """The gatekeeper container of every Deployment (sidecar and standalone)."""
    return [container for obj in k8s_objects() if obj["kind"] == "Deployment"
            for container in obj["spec"]["template"]["spec"]["containers"] if container["name"] == "gatekeeper"]


def test_deploy_yaml_passes_yamllint() -> None:
    result = subprocess.run([sys.executable, "-m", "yamllint", "-s", "-c", str(DEPLOY / ".yamllint.yml"), str(DEPLOY)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Dockerfile -------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def test_dockerfile_installs_like_ci_without_torch() -> None:
    runs = [arguments for instruction, arguments in dockerfile_instructions() if instruction == "RUN"]
    assert "pip install --no-cache-dir '.'" in runs
    assert not any("torch" in run or "[st]" in run or "curl" in run or "wget" in run for run in runs)
    # the model is exercised offline at build time, by embedding the bundled catalogs
    assert any("gatekeeper build --catalog /app/intents/telecom_zh.yaml" in run for run in runs)


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    instructions = dockerfile_instructions()
    final_stage = instructions[max(i for i, (name, _) in enumerate(instructions) if name == "FROM"):]
    users = [arguments for name, arguments in final_stage if name == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    healthchecks = [arguments for name, arguments in final_stage if name == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/healthz" in healthchecks[0]
    assert ("ENTRYPOINT", '["gatekeeper", "serve"]') in final_stage


def test_dockerfile_copies_existing_paths_and_sets_known_env() -> None:
    instructions = dockerfile_instructions()
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    for name, arguments in instructions:
        if name == "COPY" and not arguments.startswith("--from"):
            for source in arguments.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: no such path in the build context"
                assert f"!{source}" in ignored, f"COPY {source}: excluded by Dockerfile.dockerignore"
        if name == "ENV":
            names = set(re.findall(r"(GATEKEEPER_\w+)=", arguments))
            assert names <= known_env(), f"unknown settings in ENV: {names - known_env()}"


# --- docker compose ---------------------------------------------------------------------------------------------


def test_compose_references_existing_files() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"gatekeeper", "prometheus", "grafana"} <= set(services)
    build = services["gatekeeper"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: volume source {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: named volume {source} is not declared"


def test_compose_gatekeeper_settings_are_known() -> None:
    service = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["gatekeeper"]
    assert set(service["environment"]) <= known_env()
    assert "8080:8080" in service["ports"]


def test_compose_prometheus_scrapes_the_gatekeeper_service() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["gatekeeper"]["static_configs"][0]["targets"] == ["gatekeeper:8080"]
    # the alert rules select on this job name
    assert 'job="gatekeeper"' in (DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8")


# --- Grafana ------------------------------------------------------------------------------------------------------


def test_grafana_provisioning_matches_compose_mounts() -> None:
    grafana = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"] if volume.startswith("."))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "gatekeeper.yml").read_text(encoding="utf-8"))
    assert provider["providers"][0]["options"]["path"] == mounts["./grafana/dashboards"]
    datasources = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    assert datasources["datasources"][0]["type"] == "prometheus"
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"


def test_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    for panel in panels:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and panel.get("description"), panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert any(panel["type"] == "heatmap" and "gatekeeper_score_bucket" in panel["targets"][0]["expr"]
               for panel in panels)


def test_dashboard_uses_every_metric() -> None:
    exprs = " ".join(query.expr for query in panel_queries(load_dashboard()))
    missing = [metric for metric in METRICS if not re.search(rf"\b{metric}(_bucket|_sum|_count)?\b", exprs)]
    assert not missing, f"metrics no panel shows: {missing}"
    assert DASHBOARD.read_text(encoding="utf-8").endswith("\n")


# --- Kubernetes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_api_schemas(version: str) -> None:
    require(importlib.util.find_spec("kubernetes_validate") is not None, "kubernetes-validate",
            "pip install -e '.[dev]'")
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--kubernetes-version", version,
                             *map(str, k8s_manifests())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(k8s_objects())


def test_k8s_catalog_configmap_is_the_bundled_catalog(tmp_path: Path) -> None:
    configmap = load_yaml_documents(K8S / "catalog-configmap.yaml")[0]
    text = configmap["data"]["catalog.yaml"]
    assert text == (INTENTS / "telecom_zh.yaml").read_text(encoding="utf-8"), (
        "deploy/k8s/catalog-configmap.yaml is out of date with intents/telecom_zh.yaml: regenerate it")
    (tmp_path / "catalog.yaml").write_text(text, encoding="utf-8")
    assert load_catalog(tmp_path / "catalog.yaml").name == "telecom-zh"


def test_k8s_gatekeeper_containers_are_probed_sized_and_configured() -> None:
    containers = gatekeeper_containers()
    assert len(containers) == 2  # sidecar and standalone
    for container in containers:
        port = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert list(port.values()) == [8080]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}
        assert "memory" in container["resources"]["limits"]
        env = {item["name"]: item for item in container["env"]}
        assert set(env) <= known_env()
        assert env["GATEKEEPER_CATALOG"]["value"].startswith("/etc/gatekeeper/catalog/")
        assert env["GATEKEEPER_MODE"]["value"] in {"shadow", "enforce"}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_k8s_sidecar_chatbot_talks_to_localhost() -> None:
    deployment = next(obj for obj in load_yaml_documents(K8S / "sidecar" / "deployment.yaml")
                      if obj["kind"] == "Deployment")
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"chatbot", "gatekeeper"}
    env = {item["name"]: item.get("value") for item in containers["chatbot"]["env"]}
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:8080/v1"


def test_k8s_standalone_objects_select_the_deployment() -> None:
    objects = {obj["kind"]: obj for obj in k8s_objects() if obj["metadata"]["name"] == "gatekeeper"}
    assert set(objects) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"] == pod_labels
    assert objects["Service"]["spec"]["selector"] == pod_labels
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == pod_labels
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "gatekeeper")
    assert objects["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2  # the PDB's maxUnavailable: 1 needs two
