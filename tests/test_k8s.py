"""deploy/k8s as Kubernetes receives it: rendered with `kubectl kustomize`, every rule checked on
every object and container (CI also validates the objects against the schemas:
scripts/validate-manifests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.services import service_unavailable

ROOT = Path(__file__).resolve().parents[1]
TREES = ("deploy/k8s/base", "deploy/k8s/overlays/production")
ROLES = ("api", "relay", "consumer", "worker")
SECRET = "oms-secrets"

Manifest = dict[str, Any]


def render(tree: str) -> list[Manifest]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        service_unavailable("kubectl", FileNotFoundError("kubectl is not installed"))
    assert kubectl is not None
    result = subprocess.run(
        [kubectl, "kustomize", str(ROOT / tree)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=TREES)
def objects(request: pytest.FixtureRequest) -> list[Manifest]:
    return render(request.param)


def of_kind(objects: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_specs(objects: list[Manifest]) -> dict[str, Manifest]:
    workloads = {**of_kind(objects, "Deployment"), **of_kind(objects, "Job")}
    return {name: o["spec"]["template"]["spec"] for name, o in workloads.items()}


def containers(spec: Manifest) -> list[Manifest]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_a_deployment_per_role_and_a_migration_job(objects: list[Manifest]) -> None:
    deployments = of_kind(objects, "Deployment")
    assert set(deployments) == {f"oms-{role}" for role in ROLES}
    for role in ROLES:
        [main] = deployments[f"oms-{role}"]["spec"]["template"]["spec"]["containers"]
        assert main["args"][0] == role
    [job] = of_kind(objects, "Job").values()
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_every_role_migrates_before_it_starts(objects: list[Manifest]) -> None:
    # `oms migrate` is advisory-locked and a no-op at head: safe in every pod at once.
    for name, deployment in of_kind(objects, "Deployment").items():
        init = deployment["spec"]["template"]["spec"]["initContainers"]
        assert [c["args"] for c in init] == [["migrate"]], name


def test_every_container_is_unprivileged_and_immutable(objects: list[Manifest]) -> None:
    for name, spec in pod_specs(objects).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in containers(spec):
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in security["capabilities"], where
            assert {m["name"] for m in container["volumeMounts"]} <= writable, where


def test_every_container_has_requests_and_limits(objects: list[Manifest]) -> None:
    for name, spec in pod_specs(objects).items():
        for container in containers(spec):
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[bound]), f"{name}/{container['name']}"


def test_configuration_comes_from_the_configmap_and_an_external_secret(
    objects: list[Manifest],
) -> None:
    configmaps = of_kind(objects, "ConfigMap")
    assert of_kind(objects, "Secret") == {}  # the repository holds no secret
    for name, spec in pod_specs(objects).items():
        for container in containers(spec):
            sources = container["envFrom"]
            assert {s["configMapRef"]["name"] for s in sources if "configMapRef" in s} <= set(
                configmaps
            )
            assert [s["secretRef"]["name"] for s in sources if "secretRef" in s] == [SECRET]
            assert "env" not in container, f"{name}: settings belong in the ConfigMap"
    [config] = configmaps.values()
    assert config["data"]["APP_ENV"] == "production"
    assert not {"SECRET_KEY", "DATABASE_URL", "RABBITMQ_URL"} & set(config["data"])


def _probe_target(container: Manifest, probe: str) -> tuple[str, int]:
    get = container[probe]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
    return get["path"], port


def test_probes_ready_live_and_metrics(objects: list[Manifest]) -> None:
    deployments = of_kind(objects, "Deployment")
    [config] = of_kind(objects, "ConfigMap").values()
    [api] = deployments["oms-api"]["spec"]["template"]["spec"]["containers"]
    port = int(api["args"][api["args"].index("--port") + 1])
    assert _probe_target(api, "readinessProbe") == ("/health/ready", port)
    assert _probe_target(api, "livenessProbe") == ("/health", port)
    for role in ("relay", "consumer", "worker"):
        [main] = deployments[f"oms-{role}"]["spec"]["template"]["spec"]["containers"]
        metrics = ("/metrics", int(config["data"]["METRICS_PORT"]))
        assert _probe_target(main, "readinessProbe") == metrics, role
        assert _probe_target(main, "livenessProbe") == metrics, role


def _selects(selector: Manifest, deployment: Manifest) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


def test_service_hpa_and_disruption_budgets(objects: list[Manifest]) -> None:
    deployments = of_kind(objects, "Deployment")
    [service] = of_kind(objects, "Service").values()
    assert [n for n, d in deployments.items() if _selects(service["spec"]["selector"], d)] == [
        "oms-api"
    ]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    [hpa] = of_kind(objects, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "oms-api",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    budgets = of_kind(objects, "PodDisruptionBudget").values()
    for name, deployment in deployments.items():
        matching = [
            b for b in budgets if _selects(b["spec"]["selector"]["matchLabels"], deployment)
        ]
        assert len(matching) == 1, name
        # Each Deployment's own selector picks only its own pods.
        others = [d for n, d in deployments.items() if n != name]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert not any(_selects(selector, other) for other in others), name


def test_production_runs_every_role_on_several_pods() -> None:
    objects = render("deploy/k8s/overlays/production")
    deployments = of_kind(objects, "Deployment")
    assert {o["metadata"].get("namespace") for o in objects} == {"oms"}
    for name, deployment in deployments.items():
        assert deployment["spec"]["replicas"] >= 2, name
        assert deployment["spec"]["template"]["spec"]["topologySpreadConstraints"], name
