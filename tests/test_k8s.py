"""docker/k8s/, checked without a cluster (none runs here or in CI).

What can be known from the files alone: every manifest is valid against Kubernetes' own schema
(strict: an unknown or misplaced field fails), and the manifests agree with the code: the probes
name the gateway's routes, the ports the image's, every environment variable a setting shipway,
Prefect or MLflow reads, the grace period the gateway's drain, and the work pool's base job template
is one a real Prefect server takes and Prefect's kubernetes worker renders into a valid Job.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import uuid
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from configs.settings import ENV_DELIMITER, ENV_PREFIX, Settings, load_settings
from tests.conftest import REPO

K8S = REPO / "docker" / "k8s"
# The oldest Kubernetes the manifests are for (the preStop sleep action is on by default from
# 1.30) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.33", "1.37")
POOL = "shipway-kubernetes"
SECRET = "shipway-secrets"


@cache
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@cache
def resources() -> tuple[dict, ...]:
    """The objects `kubectl apply -k docker/k8s` creates, as kustomize builds them (namespace set,
    the base job template's ConfigMap generated; kustomize's name suffix left out)."""
    docs = []
    for name in kustomization()["resources"]:
        docs += [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    for generator in kustomization().get("configMapGenerator", []):
        data = {Path(f).name: (K8S / f).read_text() for f in generator["files"]}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    for doc in docs:
        doc["metadata"]["namespace"] = kustomization()["namespace"]
    return tuple(docs)


def one(kind: str, name: str) -> dict:
    found = [d for d in resources() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in docker/k8s"
    return found[0]


def pod_specs() -> dict[str, dict]:
    specs = {f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"] for d in resources()
             if d["kind"] in ("Deployment", "Job")}  # fmt: skip
    specs["base-job-template.json"] = base_job_template()["job_configuration"]["job_manifest"]["spec"]["template"][
        "spec"
    ]
    return specs


def containers() -> list[tuple[str, dict]]:
    return [(f"{where} {c['name']}", c) for where, spec in pod_specs().items()
            for c in spec.get("initContainers", []) + spec["containers"]]  # fmt: skip


def gateway_container() -> dict:
    return one("Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]


def base_job_template() -> dict:
    return json.loads((K8S / "base-job-template.json").read_text())


def config_map(name: str) -> dict[str, str]:
    return one("ConfigMap", name)["data"]


# --- Kubernetes' schema ------------------------------------------------------------------------


def test_the_kustomization_names_every_manifest_here():
    listed = set(kustomization()["resources"]) | {f for g in kustomization()["configMapGenerator"] for f in g["files"]}
    present = {p.name for p in K8S.iterdir()} - {"kustomization.yaml"}
    assert listed == present, "files in docker/k8s/ and the kustomization's resources differ"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(version):
    kinds = set()
    for doc in resources():
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} on Kubernetes {version}: {'.'.join(map(str, exc.path))}: {exc.message}")
        kinds.add(doc["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Job",
            "ServiceAccount", "Role", "RoleBinding"} <= kinds  # fmt: skip


def test_a_misplaced_field_fails_validation():
    """The check above can fail: a field Kubernetes does not know is refused, not ignored."""
    broken = json.loads(json.dumps(one("Deployment", "gateway")))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["path"] = "/ping"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_selectors_reach_their_pods():
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in resources()
            if d["kind"] == "Deployment"}  # fmt: skip
    for doc in resources():
        if doc["kind"] == "Deployment":
            assert doc["spec"]["selector"]["matchLabels"].items() <= pods[doc["metadata"]["name"]].items()
        if doc["kind"] == "Service":
            assert doc["spec"]["selector"].items() <= pods[doc["metadata"]["name"]].items(), doc["metadata"]["name"]
            ports = {p["name"] for c in pod_specs()[f"Deployment/{doc['metadata']['name']}"]["containers"]
                     for p in c.get("ports", [])}  # fmt: skip
            for port in doc["spec"]["ports"]:
                assert port["targetPort"] in ports, f"Service {doc['metadata']['name']}: no port {port['targetPort']}"
    pdb = one("PodDisruptionBudget", "gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pods["gateway"].items()
    hpa = one("HorizontalPodAutoscaler", "gateway")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert gateway_container()["resources"]["requests"]["cpu"], "the HPA's CPU share is of the request"
    assert hpa["minReplicas"] > pdb["spec"]["maxUnavailable"], "a drain would leave no replica"


def test_every_configmap_secret_and_service_account_a_pod_names_is_known():
    maps = {d["metadata"]["name"] for d in resources() if d["kind"] == "ConfigMap"}
    accounts = {d["metadata"]["name"] for d in resources() if d["kind"] == "ServiceAccount"}
    variables = base_job_template()["variables"]["properties"]
    for where, spec in pod_specs().items():
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in maps, f"{where}: volume {volume['name']}"
        account = spec.get("serviceAccountName")
        if account == "{{ service_account_name }}":
            account = variables["service_account_name"]["default"]
        assert account is None or account in accounts, f"{where}: service account {account}"
    for where, container in containers():
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in maps, where
            else:
                assert source["secretRef"]["name"] == SECRET, where


# --- the gateway -------------------------------------------------------------------------------


def test_probe_paths_are_gateway_routes(settings):
    """A real gateway (no model registered): the readiness path answers (503 until a model can),
    the liveness path answers 200 whatever the gateway's state, an unknown path 404."""
    from serving.server import running

    container = gateway_container()
    ready, live = container["readinessProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["path"]
    assert (ready, live) == ("/ping", "/health")
    with running(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get(ready).status_code in (200, 503)
        assert client.get(live).status_code == 200
        assert client.get(container["startupProbe"]["httpGet"]["path"]).status_code == 200
        assert client.get("/ready").status_code == 404  # the check above can fail


def test_container_port_is_the_port_the_image_serves_on():
    dockerfile = (REPO / "docker" / "Dockerfile.gateway").read_text()
    command = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    served = int(command[command.index("--port") + 1])
    exposed = int(re.search(r"^EXPOSE (\d+)$", dockerfile, re.M).group(1))
    container = gateway_container()
    assert "command" not in container and "args" not in container, "the gateway runs the image's CMD"
    assert [p["containerPort"] for p in container["ports"]] == [served] == [exposed]


def test_grace_period_covers_the_drain():
    """SIGTERM: the preStop pause, uvicorn's wait for requests under way, the Shadow's backlog, the
    prediction log's drain and one flush interval of the profile the pods read."""
    from serving.prediction_log import PredictionLog
    from serving.server import GRACEFUL_SHUTDOWN_S
    from serving.shadow import SHUTDOWN_GRACE_S

    profile = yaml.safe_load(config_map("shipway-profile")["production.yaml"])
    drain = inspect.signature(PredictionLog.close).parameters["timeout"].default
    pause = gateway_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = pause + GRACEFUL_SHUTDOWN_S + SHUTDOWN_GRACE_S + drain + profile["serving"]["log_flush_interval_s"]
    grace = one("Deployment", "gateway")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= needed, f"terminationGracePeriodSeconds {grace} < {needed} s the gateway may take to drain"


def test_the_profile_config_map_is_the_production_profile():
    assert config_map("shipway-profile")["production.yaml"] == (REPO / "configs" / "production.yaml").read_text(), (
        "docker/k8s/config.yaml's shipway-profile differs from configs/production.yaml: copy it over"
    )


# --- environment: every variable is read by someone ----------------------------------------------


def env_names() -> dict[str, str]:
    """Every variable a pod of docker/k8s/ gets, with the first place that sets it."""
    names: dict[str, str] = {}
    for where, container in containers():
        for var in container.get("env", []) if isinstance(container.get("env"), list) else []:
            names.setdefault(var["name"], where)
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                for key in config_map(source["configMapRef"]["name"]):
                    names.setdefault(key, f"{where} (ConfigMap {source['configMapRef']['name']})")
    for key in secret_keys():
        names.setdefault(key, f"Secret {SECRET}")
    return names


def secret_keys() -> set[str]:
    return {var["valueFrom"]["secretKeyRef"]["key"] for _, c in containers() for var in c.get("env", [])
            if isinstance(var, dict) and "secretKeyRef" in var.get("valueFrom", {})}  # fmt: skip


def setting_of(name: str) -> tuple[str, ...] | None:
    """The settings field a SHIPWAY_ variable overrides, walked down the Settings model."""
    model: Any = Settings
    path = tuple(name.removeprefix(ENV_PREFIX).lower().split(ENV_DELIMITER))
    for key in path:
        fields = getattr(model, "model_fields", {})
        if key not in fields:
            return None
        model = fields[key].annotation
    return path


def test_every_shipway_variable_is_a_setting():
    shipway = {n: where for n, where in env_names().items() if n.startswith(ENV_PREFIX)}
    assert shipway.pop(f"{ENV_PREFIX}CONFIG")  # the profile's path (load_settings)
    assert shipway, "no SHIPWAY_ variable found: the walk above is broken"
    for name, where in shipway.items():
        assert setting_of(name), f"{where}: {name} is no setting of configs/settings.py"
    assert setting_of("SHIPWAY_SERVING__NO_SUCH_KEY") is None  # the check above can fail


def test_the_pods_environment_loads_the_profile(monkeypatch, tmp_path):
    """The ConfigMap's variables (and stand-ins for the Secret's) over the profile the pods mount:
    a valid production configuration that reaches the cluster's services by name."""
    profile = tmp_path / "production.yaml"
    profile.write_text(config_map("shipway-profile")["production.yaml"])
    for name, value in config_map("shipway-env").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SHIPWAY_PREDICTION_LOG__URL", "postgresql+psycopg://shipway:secret@postgres:5432/shipway")
    monkeypatch.setenv("SHIPWAY_SERVING__API_TOKEN", "token")
    settings = load_settings(profile)
    assert settings.mlflow.tracking_uri == "http://mlflow:5000"
    assert settings.prefect.api_url == config_map("shipway-env")["PREFECT_API_URL"]
    assert settings.serving.require_api_token and settings.serving.api_token.get_secret_value()


def test_other_variables_are_read_by_their_programs(monkeypatch):
    """Prefect's and MLflow's variables: each reaches a setting of the installed prefect,
    prefect-kubernetes or mlflow (a misspelt one would be read by nobody)."""
    from mlflow import environment_variables
    from mlflow.cli import server
    from prefect.settings import Settings as PrefectSettings
    from prefect_kubernetes.settings import KubernetesSettings

    mlflow_server = {p.envvar for p in server.params if isinstance(getattr(p, "envvar", None), str)}
    readers = {
        "PREFECT_API_URL": lambda: PrefectSettings().api.url == "http://probe:4200/api",
        "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": lambda: (
            KubernetesSettings().observer.namespaces == {"http://probe:4200/api"}
        ),
    }
    others = {n: where for n, where in env_names().items() if not n.startswith(ENV_PREFIX)}
    for name, where in others.items():
        if name in readers:
            monkeypatch.setenv(name, "http://probe:4200/api")
            assert readers[name](), f"{where}: {name} is not read by the installed prefect"
        elif name.startswith("MLFLOW_"):
            assert name in mlflow_server or hasattr(environment_variables, name), f"{where}: MLflow reads no {name}"
        else:
            assert name in {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HOME"}, f"{where}: who reads {name}?"


def test_the_docs_create_the_secret_with_every_key_the_pods_read():
    docs = (REPO / "docs" / "operations.md").read_text()
    command = re.search(rf"kubectl -n shipway create secret generic {SECRET}(.*?)\n```", docs, re.S)
    assert command, f"docs/operations.md has no `kubectl create secret generic {SECRET}`"
    created = set(re.findall(r"--from-literal=(\w+)=", command.group(1)))
    assert created == secret_keys(), "docs/operations.md's secret and the keys docker/k8s reads differ"


# --- the Prefect worker and its work pool --------------------------------------------------------


def test_the_worker_image_runs_the_locked_prefect():
    import prefect

    images = {c["image"] for _, c in containers() if c["image"].startswith("prefecthq/prefect:")}
    assert images == {f"prefecthq/prefect:{prefect.__version__}-python3.11-kubernetes"}
    worker = one("Deployment", "prefect-worker")["spec"]["template"]["spec"]["containers"][0]
    assert f"--pool={POOL}" in worker["args"] and "--type=kubernetes" in worker["args"]


def test_the_deploy_job_puts_every_deployment_of_prefect_yaml_on_the_pool():
    job = one("Job", "shipway-deploy")["spec"]["template"]["spec"]
    create = job["initContainers"][0]["args"]
    assert create[:4] == ["prefect", "work-pool", "create", POOL] and "--type=kubernetes" in create
    script = job["containers"][0]["command"][-1]
    names = re.search(r"for name in ([\w ]+); do", script).group(1).split()
    declared = [d["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]]
    assert sorted(names) == sorted(declared)
    assert f"--pool {POOL}" in script


def test_the_job_image_is_the_worker_image_kustomize_names():
    tag = {i["name"]: i["newTag"] for i in kustomization()["images"]}["shipway-worker"]
    assert base_job_template()["variables"]["properties"]["image"]["default"] == f"shipway-worker:{tag}"


@pytest.mark.slow  # a real Prefect server (the harness): ~13 s to start
@pytest.mark.usefixtures("prefect_harness")
def test_the_base_job_template_is_taken_by_prefect_and_renders_a_valid_job():
    """A real Prefect server takes the template for a kubernetes pool (its own validation), and
    the worker's job configuration renders a flow run's Job from it, valid for Kubernetes."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

    template = base_job_template()
    # Every variable and setting the worker's own template has: nothing it reads is missing.
    default = KubernetesWorker.get_default_base_job_template()
    assert default["variables"]["properties"].keys() <= template["variables"]["properties"].keys()
    assert default["job_configuration"].keys() == template["job_configuration"].keys()

    async def render() -> dict:
        async with get_client() as client:
            name = f"{POOL}-{uuid.uuid4().hex[:8]}"
            pool = await client.create_work_pool(
                WorkPoolCreate(name=name, type="kubernetes", base_job_template=template)
            )
            config = await KubernetesWorkerJobConfiguration.from_template_and_values(
                pool.base_job_template, {}, client=client
            )
            await client.delete_work_pool(name)
        config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="calm-otter"))
        return config.job_manifest

    job = asyncio.run(render())
    assert job["metadata"]["namespace"] == kustomization()["namespace"]
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(job, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"the rendered Job on Kubernetes {version}: {'.'.join(map(str, exc.path))}: {exc.message}")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == template["variables"]["properties"]["image"]["default"]
    assert container["args"][:3] == ["prefect", "flow-run", "execute"]
