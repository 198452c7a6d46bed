"""deploy/kubernetes: the manifests validate offline against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields fail), fit together (selectors, names, ports, volumes) and fit calibserve (its routes, its
settings, its image's user). The KServe InferenceService, a CRD kubernetes-validate does not know, is checked
against the fields KServe's own SDK defines (kserve_v1beta1_schema.json, see make_kserve_schema.py), its
Kubernetes-typed parts (containers, probes, volumes, ...) against the Kubernetes schemas."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, schema_contents
from referencing import Registry, Resource

from service.api.routes import health, v2
from service.settings import ENV_PREFIX, Settings
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.unit

MANIFESTS = REPO_ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = MANIFESTS / "kustomization.yaml"
INFERENCE_SERVICE = MANIFESTS / "kserve" / "inferenceservice.yaml"
KSERVE_SCHEMA = Path(__file__).with_name("kserve_v1beta1_schema.json")

# The oldest Kubernetes these manifests promise (every field they use is GA there) and the newest schemas
# kubernetes-validate ships: a field removed or renamed since, or one too new for 1.30, fails one of them.
KUBERNETES_VERSIONS = sorted({"1.30.0", all_versions()[-1]}, key=lambda v: tuple(map(int, v.split("."))))
SETTING = re.compile(rf"\b{ENV_PREFIX}[A-Z0-9_]+\b")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _resource_files() -> list[Path]:
    return sorted(path for path in MANIFESTS.glob("*.yaml") if path != KUSTOMIZATION)


def _resources() -> list[dict[str, Any]]:
    return [doc for path in _resource_files() for doc in _documents(path)]


def _one(kind: str) -> dict[str, Any]:
    found = [doc for doc in _resources() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {MANIFESTS}, found {len(found)}"
    return found[0]


def _inference_service() -> dict[str, Any]:
    (document,) = _documents(INFERENCE_SERVICE)
    return document


def _container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    (container,) = (c for c in pod_spec["containers"] if c["name"] == name)
    return container


def _get_routes(*routers: Any) -> set[str]:
    return {route.path for router in routers for route in router.routes if "GET" in route.methods}


def _subset(labels: dict[str, str], of: dict[str, str]) -> bool:
    return labels.items() <= of.items()


def _env_names(container: dict[str, Any]) -> set[str]:
    return {item["name"] for item in container.get("env", [])}


# --- every document against the Kubernetes schemas -------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", _resource_files(), ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    documents = _documents(path)
    assert documents, f"{path.name} holds no document"
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validation_is_strict() -> None:
    """A misspelt field must fail, or the test above proves little."""
    deployment = copy.deepcopy(_one("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 80}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_but_not_the_kserve_one() -> None:
    (kustomization,) = _documents(KUSTOMIZATION)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    assert set(listed) == {path.name for path in _resource_files()}
    assert not any("kserve" in entry for entry in listed), "the InferenceService needs the KServe CRDs"
    # Namespace-agnostic: the namespace comes from kubectl -n or an overlay.
    assert "namespace" not in kustomization
    for document in [*_resources(), _inference_service()]:
        assert "namespace" not in document["metadata"], f"{document['kind']} pins a namespace"


def test_the_expected_resources() -> None:
    assert sorted(doc["kind"] for doc in _resources()) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]
    assert _one("HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    assert _one("PodDisruptionBudget")["apiVersion"] == "policy/v1"


# --- the Deployment and calibserve ---------------------------------------------------------------------------


def _pod_spec() -> dict[str, Any]:
    return _one("Deployment")["spec"]["template"]["spec"]


def _server() -> dict[str, Any]:
    return _container(_pod_spec(), "calibserve")


def test_probes_point_at_the_health_routes_on_the_named_port() -> None:
    server = _server()
    routes = _get_routes(health.router)
    ports = {port["name"]: port for port in server["ports"]}
    assert ports["http"]["containerPort"] == 8000
    expected = {"livenessProbe": "/health/live", "readinessProbe": "/health/ready", "startupProbe": "/health/live"}
    for probe, path in expected.items():
        http_get = server[probe]["httpGet"]
        assert http_get["path"] == path, probe
        assert http_get["path"] in routes, f"{probe}: calibserve serves no GET {http_get['path']}"
        assert http_get["port"] == "http", f"{probe} must use the named port"
    # The startup probe gives model loading its time; the liveness probe alone would kill a slow start.
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


def test_containers_are_locked_down_as_the_images_user() -> None:
    user = re.search(r"^USER (\d+):(\d+)$", (REPO_ROOT / "Dockerfile").read_text(), re.M)
    assert user, "the Dockerfile names no numeric USER"
    uid, gid = int(user.group(1)), int(user.group(2))
    pod = _pod_spec()
    pod_context = pod["securityContext"]
    assert pod_context["runAsNonRoot"] is True
    assert (pod_context["runAsUser"], pod_context["runAsGroup"]) == (uid, gid)
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["runAsNonRoot"] is True
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["requests"].keys() >= {"cpu", "memory"}
        assert container["resources"]["limits"].keys() >= {"cpu", "memory"}


def _check_volumes(pod: dict[str, Any], data_dir: str) -> None:
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for container in pod["containers"]:
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        for path, name in mounts.items():
            assert name in volumes, f"{container['name']} mounts {path} from volume {name!r}, which the pod lacks"
        # A read-only root: calibserve writes its data directory and Python its temporary files.
        assert data_dir in mounts and "/tmp" in mounts
        assert "emptyDir" in volumes[mounts[data_dir]] and "emptyDir" in volumes[mounts["/tmp"]]


def test_every_volume_mount_has_a_volume() -> None:
    _check_volumes(_pod_spec(), _one("ConfigMap")["data"][f"{ENV_PREFIX}DATA_DIR"])


def test_env_from_names_configmap_and_secret_in_the_manifests() -> None:
    config_maps = {doc["metadata"]["name"] for doc in _resources() if doc["kind"] == "ConfigMap"}
    secrets = {doc["metadata"]["name"] for doc in _resources() if doc["kind"] == "Secret"}
    for pod in (_pod_spec(), _inference_service()["spec"]["predictor"]):
        for container in pod["containers"]:
            sources = container["envFrom"]
            for source in sources:
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps
                else:
                    assert source["secretRef"]["name"] in secrets
            names = {next(iter(source.values()))["name"] for source in sources}
            assert names == {"calibserve-settings", "calibserve-secrets"}


def _setting_keys() -> dict[str, str]:
    """Every variable the manifests hand calibserve: ConfigMap data, Secret stringData, container env."""
    values: dict[str, str] = {}
    for document in _resources():
        if document["kind"] == "ConfigMap":
            values |= document["data"]
        elif document["kind"] == "Secret":
            values |= document["stringData"]
    for container in [*_pod_spec()["containers"], *_inference_service()["spec"]["predictor"]["containers"]]:
        values |= {item["name"]: item["value"] for item in container.get("env", [])}
    return values


def test_every_calibserve_variable_is_a_real_setting() -> None:
    fields = set(Settings.model_fields)
    keys = set(_setting_keys())
    for document in _resources():
        if document["kind"] in {"ConfigMap", "Secret"}:
            data = document.get("data", {}) | document.get("stringData", {})
            assert all(key.startswith(ENV_PREFIX) for key in data), f"{document['kind']}: a key calibserve ignores"
    # Also the commented-out ones, which a user uncomments as they stand.
    for path in [*MANIFESTS.glob("*.yaml"), INFERENCE_SERVICE]:
        keys |= set(SETTING.findall(path.read_text()))
    unknown = {key for key in keys if key.startswith(ENV_PREFIX) and key.removeprefix(ENV_PREFIX).lower() not in fields}
    assert not unknown, f"not calibserve settings (service.settings.Settings): {sorted(unknown)}"
    assert {f"{ENV_PREFIX}DATABASE_URL", f"{ENV_PREFIX}API_KEY"} <= set(_one("Secret")["stringData"])


@pytest.fixture
def manifest_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The process environment of a pod: exactly the variables of the ConfigMap and the Secret."""
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    values = _setting_keys()
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    yield values


def test_the_settings_parse_and_fit_the_pod(manifest_environment: dict[str, str]) -> None:
    settings = Settings()  # fails like the pod would, on a value calibserve refuses
    server = _server()
    assert settings.host == "0.0.0.0"
    assert settings.port == next(p["containerPort"] for p in server["ports"] if p["name"] == "http")
    assert settings.workers == 1, "one worker per pod: the HorizontalPodAutoscaler scales"
    assert settings.log_format == "json"
    assert str(settings.data_dir) == next(m["mountPath"] for m in server["volumeMounts"] if m["name"] == "data")
    # Several replicas need the shared store: without it each pod logs to its own SQLite file.
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value().startswith("postgresql://")
    assert settings.graceful_timeout < _pod_spec()["terminationGracePeriodSeconds"] <= 30


def test_no_shell_hooks_and_no_service_links() -> None:
    pod = _pod_spec()
    assert pod["terminationGracePeriodSeconds"] == 15
    # The image has no shell: a preStop `sleep` would fail, so there is none (nor any exec probe).
    for container in pod["containers"]:
        assert "lifecycle" not in container
        assert not any("exec" in container.get(p, {}) for p in ("livenessProbe", "readinessProbe", "startupProbe"))
    # A Service named calibserve would inject CALIBSERVE_PORT=tcp://<ip>:80 into the settings' namespace.
    assert pod["enableServiceLinks"] is False
    assert _inference_service()["spec"]["predictor"]["enableServiceLinks"] is False


def test_prometheus_scrapes_the_metrics_route() -> None:
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in _get_routes(health.router)
    assert int(annotations["prometheus.io/port"]) == next(p["containerPort"] for p in _server()["ports"])


def test_selectors_match_the_pods() -> None:
    deployment = _one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert pod_labels["app.kubernetes.io/name"] == "calibserve"
    assert _subset(selector, pod_labels)

    service = _one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert _subset(service["spec"]["selector"], pod_labels)
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    assert port["targetPort"] in {p["name"] for p in _server()["ports"]}

    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector

    (term,) = _pod_spec()["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert _subset(term["podAffinityTerm"]["labelSelector"]["matchLabels"], pod_labels)


def test_autoscaler_and_disruption_budget_fit_the_deployment() -> None:
    deployment = _one("Deployment")
    hpa = _one("HorizontalPodAutoscaler")["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    assert hpa["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    # Utilisation is relative to the request: without one the HPA cannot compute it.
    assert "cpu" in _server()["resources"]["requests"]
    # A budget as large as the fleet would block every node drain.
    assert 0 < _one("PodDisruptionBudget")["spec"]["minAvailable"] < hpa["minReplicas"]


# --- the KServe InferenceService -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kserve_schema() -> dict[str, Any]:
    return json.loads(KSERVE_SCHEMA.read_text())


@pytest.fixture(scope="module")
def kubernetes_definitions() -> Registry:
    version = all_versions()[-1]
    definitions = schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    return Resource.from_contents(definitions) @ Registry()


PRIMITIVES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "bool": bool,
    "float": (int, float),
    "datetime": str,
    "object": object,
}
# SDK type names that are no model class of the SDK and no `V1<Kind>` of core Kubernetes.
KUBERNETES_ALIASES = {
    "ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
    "V1beta1MetricQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
}


def _kubernetes_definition(sdk_type: str, registry: Registry) -> str:
    """The Kubernetes schema of an SDK type name: V1Container -> io.k8s.api.core.v1.Container, ..."""
    if sdk_type in KUBERNETES_ALIASES:
        return KUBERNETES_ALIASES[sdk_type]
    definitions = registry.contents("https://kubernetes.io/api/_definitions.json")["$defs"]
    qualified = re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d\w*?)([A-Z]\w*)", sdk_type)
    if qualified:
        group, version, kind = qualified.groups()
        name = f"io.k8s.api.{group.lower()}.{version.lower()}.{kind}"
        assert name in definitions, f"no Kubernetes schema {name} for {sdk_type}"
        return name
    plain = re.fullmatch(r"(V\d\w*?)([A-Z]\w*)", sdk_type)
    assert plain, f"{sdk_type}: neither a KServe nor a Kubernetes type"
    suffix = f".{plain.group(1).lower()}.{plain.group(2)}"
    candidates = [name for name in definitions if name.endswith(suffix)]
    core = [name for name in candidates if name.startswith(("io.k8s.api.core.", "io.k8s.apimachinery.pkg.apis.meta."))]
    assert len(core or candidates) == 1, f"{sdk_type}: {candidates or 'no Kubernetes schema'}"
    return (core or candidates)[0]


def _check(value: Any, sdk_type: str, path: str, schema: dict[str, Any], registry: Registry) -> Iterator[str]:
    """Every way `value` is not a `sdk_type`, as 'path: problem' lines."""
    if value is None:
        yield f"{path}: null"
        return
    if match := re.fullmatch(r"list\[(.+)\]", sdk_type):
        if not isinstance(value, list):
            yield f"{path}: not a list"
            return
        for index, item in enumerate(value):
            yield from _check(item, match.group(1), f"{path}[{index}]", schema, registry)
    elif match := re.fullmatch(r"dict\(str, (.+)\)", sdk_type):
        if not isinstance(value, dict):
            yield f"{path}: not a map"
            return
        for key, item in value.items():
            yield from _check(item, match.group(1), f"{path}.{key}", schema, registry)
    elif sdk_type in PRIMITIVES:
        expected = PRIMITIVES[sdk_type]
        if not isinstance(value, expected) or (
            sdk_type != "bool" and isinstance(value, bool) and expected is not object
        ):
            yield f"{path}: {value!r} is not of type {sdk_type}"
    elif sdk_type in schema["types"]:
        model = schema["types"][sdk_type]
        if not isinstance(value, dict):
            yield f"{path}: not an object ({sdk_type})"
            return
        for key in model["required"]:
            if key not in value:
                yield f"{path}.{key}: required by {sdk_type}, missing"
        for key, item in value.items():
            if key not in model["fields"]:
                yield f"{path}.{key}: unknown field, {sdk_type} has no {key!r}"
            else:
                yield from _check(item, model["fields"][key], f"{path}.{key}", schema, registry)
    else:
        definition = _kubernetes_definition(sdk_type, registry)
        reference = {"$ref": f"https://kubernetes.io/api/_definitions.json#/$defs/{definition}"}
        validator = jsonschema.Draft202012Validator(reference, registry=registry)
        for error in validator.iter_errors(value):
            location = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            yield f"{path}{location}: {error.message} ({definition})"


def _kserve_problems(document: dict[str, Any], schema: dict[str, Any], registry: Registry) -> list[str]:
    problems = list(_check(document, schema["root"], "", schema, registry))
    if document.get("apiVersion") != "serving.kserve.io/v1beta1" or document.get("kind") != "InferenceService":
        problems.append("not a serving.kserve.io/v1beta1 InferenceService")
    if not document.get("metadata", {}).get("name"):
        problems.append(".metadata.name: missing")
    return problems


def test_inference_service_holds_only_fields_kserve_defines(
    kserve_schema: dict[str, Any], kubernetes_definitions: Registry
) -> None:
    assert kserve_schema["root"] == "V1beta1InferenceService"
    assert _kserve_problems(_inference_service(), kserve_schema, kubernetes_definitions) == []


def test_the_kserve_check_catches_mistakes(kserve_schema: dict[str, Any], kubernetes_definitions: Registry) -> None:
    document = _inference_service()
    predictor = document["spec"]["predictor"]
    predictor["protocolVersion"] = "v2"  # a field of the model specs, not of a custom predictor
    predictor["minReplica"] = 3
    predictor["containers"][0]["readinesProbe"] = {}
    predictor["containers"][0]["ports"][0]["containerPort"] = "8000"
    del predictor["containers"][0]["name"]
    document["spec"]["canary"] = [{"predictor": {}}]
    problems = "\n".join(_kserve_problems(document, kserve_schema, kubernetes_definitions))
    for expected in (
        ".spec.predictor.protocolVersion: unknown field",
        ".spec.predictor.minReplica: unknown field",
        ".spec.predictor.containers[0]: Additional properties are not allowed ('readinesProbe'",
        ".spec.predictor.containers[0].ports[0].containerPort: '8000' is not of type",
        ".spec.predictor.containers[0]: 'name' is a required property",
        ".spec.canary[0].trafficPercent: required by V1beta1CanarySpec, missing",
    ):
        assert expected in problems, problems


def test_inference_service_is_the_same_server_speaking_v2() -> None:
    document = _inference_service()
    assert document["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = document["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    # A custom predictor's protocol: the container's PROTOCOL variable (KServe's CustomPredictor.GetProtocol).
    assert {item["name"]: item["value"] for item in container["env"]}["PROTOCOL"] == "v2"
    assert container["ports"] == [{"containerPort": 8000, "protocol": "TCP"}]
    server = _server()
    assert container["image"] == server["image"]
    assert container["envFrom"] == server["envFrom"]
    assert container["resources"] == server["resources"]
    assert container["securityContext"] == server["securityContext"]
    routes = _get_routes(v2.router)
    for probe, path in {
        "livenessProbe": "/v2/health/live",
        "readinessProbe": "/v2/health/ready",
        "startupProbe": "/v2/health/live",
    }.items():
        assert container[probe]["httpGet"] == {"path": path, "port": 8000}, probe
        assert path in routes
    hpa = _one("HorizontalPodAutoscaler")["spec"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    # Knative (serverless mode) accepts only the seccomp profile in the pod's securityContext.
    assert predictor["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    _check_volumes(predictor, _one("ConfigMap")["data"][f"{ENV_PREFIX}DATA_DIR"])
