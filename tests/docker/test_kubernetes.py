"""Kubernetes manifests (deploy/kubernetes/) without a cluster and without the network.

The kustomizations are rendered by a small merger in this file (the subset of kustomize they
use: resources, components, strategic-merge patches by kind and name, image tags; anything else
is refused, so the merger cannot silently disagree with kustomize). Every rendered object is
validated against the Kubernetes JSON schemas that the kubernetes-validate wheel bundles
(strict: unknown fields fail), and the two custom resources (ServiceMonitor, InferenceService)
against small schemas written here from their CRDs' documented fields. Then the manifests are
checked against the service itself: probe paths against the app's routes, ports against the
image's command, the autoscaler's metric against the service's metrics registry, the settings
against ``ServiceSettings``, the grace period against the drain timeout.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from distill3d.service.app import create_app
from distill3d.service.metrics import ServiceMetrics
from distill3d.service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
VARIANTS = {"cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu"}
COMPONENTS = sorted(p.name for p in (K8S / "components").iterdir() if p.is_dir())
CPU_COMPONENTS = [c for c in COMPONENTS if not c.startswith("gpu")]
# The oldest and the newest Kubernetes minor version whose schemas the wheel bundles.
SCHEMA_VERSIONS = sorted(
    {kubernetes_validate.utils.all_versions()[0], kubernetes_validate.utils.latest_version()}
)
PORT = 8000

# -- a kustomize subset ---------------------------------------------------------------------

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "patches", "images"}
# patchMergeKey of the list fields the patches touch (k8s.io/api); other lists are replaced,
# as strategic merge does for lists without a merge key (tolerations, HPA metrics, envFrom).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}
# Lists whose merge key depends on where they sit (container ports by containerPort, Service
# ports by port): refused in patches rather than guessed.
AMBIGUOUS_LISTS = {"ports"}


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def merge(base: Any, patch: Any, where: str = "") -> Any:
    """Strategic merge of ``patch`` into ``base`` (both plain YAML data); returns a new value."""
    if not (isinstance(base, dict) and isinstance(patch, dict)):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if key.startswith("$"):
            raise NotImplementedError(f"{where}.{key}: patch directives are not supported here")
        if value is None:
            out.pop(key, None)  # null deletes, as in strategic merge
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = merge_list(key, out[key], value, f"{where}.{key}")
        elif key in out:
            out[key] = merge(out[key], value, f"{where}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_list(field: str, base: list[Any], patch: list[Any], where: str) -> list[Any]:
    if field in AMBIGUOUS_LISTS:
        raise NotImplementedError(f"{where}: patching '{field}' is not supported here")
    key = MERGE_KEYS.get(field)
    if key is None:
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for item in patch:
        match = next((i for i, b in enumerate(out) if b.get(key) == item.get(key)), None)
        if match is None:
            out.append(copy.deepcopy(item))
        else:
            out[match] = merge(out[match], item, f"{where}[{key}={item.get(key)}]")
    return out


def _same_object(a: dict[str, Any], b: dict[str, Any]) -> bool:
    group = lambda d: d["apiVersion"].rpartition("/")[0]  # noqa: E731
    return (
        a["kind"] == b["kind"]
        and group(a) == group(b)
        and a["metadata"]["name"] == b["metadata"]["name"]
    )


def _apply_patches(docs: list[dict[str, Any]], folder: Path, patches: list[Any]) -> None:
    for entry in patches:
        if set(entry) != {"path"}:
            raise NotImplementedError(f"{folder}: only 'patches: - path: FILE' is supported")
        for patch in load_yaml(folder / entry["path"]):
            targets = [i for i, d in enumerate(docs) if _same_object(d, patch)]
            assert len(targets) == 1, f"{folder / entry['path']}: matches {len(targets)} objects"
            docs[targets[0]] = merge(docs[targets[0]], patch, patch["kind"])


def _set_images(docs: list[dict[str, Any]], images: list[dict[str, str]]) -> None:
    for image in images:
        if not set(image) <= {"name", "newName", "newTag"}:
            raise NotImplementedError(f"images: {image}")
        for doc in docs:
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    new = image.get("newName", name)
                    container["image"] = f"{new}:{image.get('newTag', tag)}".rstrip(":")


def kustomize(folder: Path, extra_components: list[str] = (), component: bool = False) -> list:  # type: ignore[assignment]
    """The objects ``kubectl kustomize folder`` prints, for the subset of kustomize used here;
    ``extra_components`` (names under components/) as if listed in its ``components``."""
    (kust,) = load_yaml(folder / "kustomization.yaml")
    unknown = set(kust) - KUSTOMIZATION_KEYS
    assert not unknown, f"{folder}: kustomization fields this test cannot render: {unknown}"
    assert kust["kind"] == ("Component" if component else "Kustomization"), folder
    docs: list[dict[str, Any]] = []
    for entry in kust.get("resources", []):
        path = folder / entry
        docs.extend(kustomize(path) if path.is_dir() else load_yaml(path))
    components = [folder / c for c in kust.get("components", [])]
    components += [K8S / "components" / c for c in extra_components]
    for path in components:
        (ckust,) = load_yaml(path / "kustomization.yaml")
        assert ckust["kind"] == "Component", path
        assert not set(ckust) - KUSTOMIZATION_KEYS, path
        for entry in ckust.get("resources", []):
            docs.extend(load_yaml(path / entry))
        _apply_patches(docs, path, ckust.get("patches", []))
    _apply_patches(docs, folder, kust.get("patches", []))
    _set_images(docs, kust.get("images", []))
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def every_build() -> list[tuple[str, list[dict[str, Any]]]]:
    """Each variant alone, with each component, and with all that fit it; and KServe."""
    builds = []
    for variant, folder in VARIANTS.items():
        fitting = COMPONENTS if variant == "gpu" else CPU_COMPONENTS
        for n in (0, 1, len(fitting)):
            for combo in itertools.combinations(fitting, n):
                builds.append((f"{variant}+{','.join(combo)}", kustomize(folder, list(combo))))
    builds.append(("kserve", kustomize(K8S / "kserve")))
    return builds


BUILDS = every_build()

# -- schemas of the two custom resources, from their CRDs' documented fields ------------------

DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
SECRET_KEY = {
    "type": "object",
    "required": ["key"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
}
# monitoring.coreos.com/v1 ServiceMonitor (Prometheus Operator API reference): the fields used
# here and their neighbours; unknown endpoint fields fail, so a misspelt one is caught.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["integer", "string"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                            "params": {"type": "object"},
                            "authorization": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"type": "string"},
                                    "credentials": SECRET_KEY,
                                },
                            },
                            "tlsConfig": {"type": "object"},
                            "relabelings": {"type": "array", "items": {"type": "object"}},
                            "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
            },
        },
    },
}
RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "requests": {"type": "object", "additionalProperties": {"type": ["string", "integer"]}},
        "limits": {"type": "object", "additionalProperties": {"type": ["string", "integer"]}},
    },
}
# serving.kserve.io/v1beta1 InferenceService with the Triton predictor (PredictorSpec and
# PredictorExtensionSpec of the KServe API reference): the fields used here and their
# neighbours.
INFERENCE_SERVICE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "additionalProperties": False,
            "properties": {
                "predictor": {
                    "type": "object",
                    "required": ["triton"],
                    "additionalProperties": False,
                    "properties": {
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 1},
                        "scaleTarget": {"type": "integer"},
                        "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                        "serviceAccountName": {"type": "string"},
                        "nodeSelector": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "tolerations": {"type": "array", "items": {"type": "object"}},
                        "triton": {
                            "type": "object",
                            "required": ["storageUri"],
                            "additionalProperties": False,
                            "properties": {
                                "storageUri": {
                                    "type": "string",
                                    "pattern": r"^(pvc|gs|s3|https?|hdfs|webhdfs|oci)://.+",
                                },
                                "runtimeVersion": {"type": "string"},
                                "protocolVersion": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
                                "image": {"type": "string"},
                                "args": {"type": "array", "items": {"type": "string"}},
                                "env": {"type": "array", "items": {"type": "object"}},
                                "resources": RESOURCES,
                            },
                        },
                    },
                },
            },
        },
    },
}
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("serving.kserve.io/v1beta1", "InferenceService"): INFERENCE_SERVICE,
}

# -- schemas --------------------------------------------------------------------------------


def test_the_wheel_bundles_schemas_for_current_kubernetes() -> None:
    versions = kubernetes_validate.utils.all_versions()
    assert len(SCHEMA_VERSIONS) == 2 and versions[-1].startswith("1.")
    assert tuple(int(x) for x in versions[-1].split(".")[:2]) >= (1, 30)


@pytest.mark.parametrize(("name", "docs"), BUILDS, ids=[b[0] for b in BUILDS])
def test_every_object_matches_its_schema(name: str, docs: list[dict[str, Any]]) -> None:
    assert docs, name
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"{name}: duplicate objects {names}"
    for doc in docs:
        custom = CUSTOM.get((doc["apiVersion"], doc["kind"]))
        if custom is not None:
            jsonschema.Draft202012Validator(custom).validate(doc)
            continue
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} {where}: {e.message}")


def test_the_custom_schemas_catch_mistakes() -> None:
    monitor = one(kustomize(VARIANTS["cpu"], ["monitoring"]), "ServiceMonitor")
    jsonschema.Draft202012Validator(SERVICE_MONITOR).validate(monitor)
    typo = copy.deepcopy(monitor)
    typo["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SERVICE_MONITOR).validate(typo)
    isvc = one(kustomize(K8S / "kserve"), "InferenceService")
    del isvc["spec"]["predictor"]["triton"]["storageUri"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(INFERENCE_SERVICE).validate(isvc)


def test_strict_core_schemas_catch_mistakes() -> None:
    deployment = one(kustomize(VARIANTS["cpu"]), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSIONS[-1], strict=True)


# -- the renderer ---------------------------------------------------------------------------


def test_merge_follows_strategic_merge() -> None:
    base = {
        "containers": [{"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}]}],
        "tolerations": [{"key": "t1"}],
        "keep": 1,
        "drop": 2,
    }
    patch = {
        "containers": [
            {"name": "a", "env": [{"name": "B", "value": "2"}]},
            {"name": "b", "image": "y"},
        ],
        "tolerations": [{"key": "t2"}],
        "drop": None,
    }
    assert merge(base, patch) == {
        "containers": [
            {
                "name": "a",
                "image": "x",
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            },
            {"name": "b", "image": "y"},
        ],
        "tolerations": [{"key": "t2"}],
        "keep": 1,
    }
    with pytest.raises(NotImplementedError):
        merge(base, {"$patch": "replace"})
    with pytest.raises(NotImplementedError):
        merge({"ports": [{"port": 1}]}, {"ports": [{"port": 2}]})


def test_the_renderer_refuses_kustomize_features_it_lacks(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamePrefix: x-\n"
    )
    with pytest.raises(AssertionError, match="namePrefix"):
        kustomize(tmp_path)


def test_kubectl_kustomize_agrees_when_installed(tmp_path: Path) -> None:
    """Where kubectl is installed (not needed otherwise), its kustomize renders the same objects
    for every build: each variant with its components listed in a wrapping kustomization."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the merger above stands in for it")
    for variant, folder in VARIANTS.items():
        fitting = COMPONENTS if variant == "gpu" else CPU_COMPONENTS
        for combo in [(), *((c,) for c in fitting), tuple(fitting)]:
            wrapper = tmp_path / f"{variant}-{len(combo)}-{'-'.join(combo)}"
            wrapper.mkdir()
            kust = {  # kustomize refuses absolute paths
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(folder, wrapper)],
                "components": [os.path.relpath(K8S / "components" / c, wrapper) for c in combo],
            }
            (wrapper / "kustomization.yaml").write_text(yaml.safe_dump(kust))
            assert _kubectl_kustomize(kubectl, wrapper) == _sorted(kustomize(folder, list(combo)))
    kserve = K8S / "kserve"
    assert _kubectl_kustomize(kubectl, kserve) == _sorted(kustomize(kserve))


def _sorted(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(docs, key=lambda d: json.dumps(d, sort_keys=True))


def _kubectl_kustomize(kubectl: str, folder: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True
    ).stdout
    return _sorted([d for d in yaml.safe_load_all(out) if d])


# -- against the service --------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_routes() -> dict[str, set[str]]:
    """Paths and methods the real app serves, from its OpenAPI document (which sees routes in
    included routers too, however the app is split up); models are not loaded for this."""
    app = create_app(ServiceSettings(device="cpu", warmup=False))
    paths = app.openapi()["paths"]
    return {path: {method.upper() for method in ops} for path, ops in paths.items()}


def _dockerfile_port(name: str) -> int:
    (cmd,) = [
        ln for ln in (ROOT / "docker" / name).read_text().splitlines() if ln.startswith("CMD ")
    ]
    args = json.loads(cmd[4:])
    return int(args[args.index("--port") + 1])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_probes_and_ports_are_what_the_service_serves(
    variant: str, app_routes: dict[str, set[str]]
) -> None:
    docs = kustomize(VARIANTS[variant])
    c = container(docs)
    assert "command" not in c and "args" not in c  # the image's own command and port
    dockerfile = "Dockerfile" if variant == "cpu" else "Dockerfile.gpu"
    assert _dockerfile_port(dockerfile) == PORT == ServiceSettings.model_fields["port"].default
    (port,) = c["ports"]
    assert (port["name"], port["containerPort"]) == ("http", PORT)
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path and get["port"] in ("http", PORT), probe
        assert "GET" in app_routes[path], path
    # Loading may take as long as compose allows (start_period) before liveness applies.
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 300
    (svc_port,) = one(docs, "Service")["spec"]["ports"]
    assert svc_port["targetPort"] == "http" and svc_port["port"] == PORT
    selector = one(docs, "Service")["spec"]["selector"]
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert one(docs, "Deployment")["spec"]["selector"]["matchLabels"] == selector


def test_probe_routes_need_no_key_and_metrics_does() -> None:
    """The kubelet sends no Authorization header: with an API key set, /healthz and /readyz
    must still answer (readyz 503 here: the models are not loaded), while /metrics wants the key
    (hence the ServiceMonitor's documented authorization block)."""
    app = create_app(ServiceSettings(device="cpu", warmup=False, api_key="k"))

    async def statuses() -> dict[str, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
            return {
                p: (await client.get(p)).status_code for p in ("/healthz", "/readyz", "/metrics")
            }

    assert asyncio.run(statuses()) == {"/healthz": 200, "/readyz": 503, "/metrics": 401}


def test_service_monitor_scrapes_the_metrics_route(app_routes: dict[str, set[str]]) -> None:
    docs = kustomize(VARIANTS["cpu"], ["monitoring"])
    monitor = one(docs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and "GET" in app_routes["/metrics"]
    assert endpoint["port"] in {p["name"] for p in one(docs, "Service")["spec"]["ports"]}
    service_labels = one(docs, "Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    # Same path as the compose stack's Prometheus.
    compose_job = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert compose_job["scrape_configs"][0]["metrics_path"] == endpoint["path"]


def _gauges() -> set[str]:
    metrics = ServiceMetrics()
    return {m.name for m in metrics.registry.collect() if m.type == "gauge"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_autoscaler_metrics_exist(variant: str) -> None:
    docs = kustomize(VARIANTS[variant])
    hpa = one(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = one(docs, "Deployment")
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert target["apiVersion"] == deployment["apiVersion"]
    (cpu,) = hpa["spec"]["metrics"]
    assert cpu["resource"]["name"] == "cpu"
    assert "cpu" in container(docs)["resources"]["requests"]  # utilisation is of the request
    with_queue = one(kustomize(VARIANTS[variant], ["queue-depth"]), "HorizontalPodAutoscaler")
    pods = [m for m in with_queue["spec"]["metrics"] if m["type"] == "Pods"]
    (queue,) = pods
    name = queue["pods"]["metric"]["name"]
    assert name == "distill3d_queue_depth" and name in _gauges()
    assert {m["type"] for m in with_queue["spec"]["metrics"]} == {"Resource", "Pods"}


def test_prometheus_adapter_rule_serves_the_metric_the_autoscaler_reads() -> None:
    values = yaml.safe_load(
        (K8S / "components/queue-depth/prometheus-adapter-values.yaml").read_text()
    )
    (rule,) = values["rules"]["custom"]
    series = re.match(r"[a-z0-9_]+", rule["seriesQuery"].strip("'")).group(0)  # type: ignore[union-attr]
    assert series in _gauges()
    assert rule["name"]["as"] == "distill3d_queue_depth"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_settings_are_service_settings(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = kustomize(VARIANTS[variant])
    data = one(docs, "ConfigMap")["data"]
    fields = set(ServiceSettings.model_fields)
    for name in data:
        assert name.startswith("DISTILL3D_") and name[10:].lower() in fields, name
    for name in [n for n in os.environ if n.startswith("DISTILL3D_")]:
        monkeypatch.delenv(name)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = ServiceSettings()  # the environment the pod gets validates
    c = container(docs)
    assert settings.threads == int(c["resources"]["limits"]["cpu"])
    refs = [e.get("configMapRef", {}).get("name") for e in c["envFrom"]]
    assert one(docs, "ConfigMap")["metadata"]["name"] in refs
    (secret,) = [e["secretRef"] for e in c["envFrom"] if "secretRef" in e]
    assert secret["optional"] is True  # no key, no secret: the pod still starts


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_grace_period_outlasts_the_drain(variant: str) -> None:
    docs = kustomize(VARIANTS[variant])
    data = one(docs, "ConfigMap")["data"]
    fields = ServiceSettings.model_fields
    drain = float(data.get("DISTILL3D_DRAIN_TIMEOUT_S", fields["drain_timeout_s"].default))
    delay = float(data.get("DISTILL3D_SHUTDOWN_DELAY_S", fields["shutdown_delay_s"].default))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace == 45 and drain == 30
    assert grace >= float(pre_stop[1]) + drain + delay + 5  # 5 s left for the exit itself


def test_cpu_and_gpu_variants() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    cpu, gpu = (kustomize(VARIANTS[v]) for v in ("cpu", "gpu"))
    c_cpu, c_gpu = container(cpu), container(gpu)
    assert c_cpu["image"] == compose["distill3d"]["image"] == "distill3d:cpu"
    assert c_gpu["image"] == compose["distill3d-gpu"]["image"] == "distill3d:gpu"
    assert "nvidia.com/gpu" not in c_cpu["resources"]["limits"]
    assert c_gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod_gpu = one(gpu, "Deployment")["spec"]["template"]["spec"]
    assert {t["key"] for t in pod_gpu["tolerations"]} == {"nvidia.com/gpu"}
    assert "tolerations" not in one(cpu, "Deployment")["spec"]["template"]["spec"]
    assert one(cpu, "ConfigMap")["data"]["DISTILL3D_DEVICE"] == "cpu"
    assert one(gpu, "ConfigMap")["data"]["DISTILL3D_DEVICE"] == "cuda"
    # The GPU overlay keeps the base's probes and only lengthens the startup allowance.
    assert c_gpu["livenessProbe"] == c_cpu["livenessProbe"]
    assert c_gpu["startupProbe"]["failureThreshold"] > c_cpu["startupProbe"]["failureThreshold"]
    pinned = one(kustomize(VARIANTS["gpu"], ["gpu-product"]), "Deployment")
    assert "nvidia.com/gpu.product" in pinned["spec"]["template"]["spec"]["nodeSelector"]


def test_models_volume_is_where_compose_mounts_it() -> None:
    docs = kustomize(VARIANTS["gpu"], ["models-pvc"])
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    compose_mount = compose["x-service"]["volumes"][0].split(":")[1]
    (mount,) = container(docs)["volumeMounts"]
    assert mount["mountPath"] == compose_mount == "/models" and mount["readOnly"]
    claim = one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    (volume,) = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim


def test_kserve_serves_the_triton_repository() -> None:
    from distill3d.export.triton import TritonSettings

    isvc = one(kustomize(K8S / "kserve"), "InferenceService")
    triton = isvc["spec"]["predictor"]["triton"]
    claim = one(kustomize(VARIANTS["gpu"], ["models-pvc"]), "PersistentVolumeClaim")
    assert triton["storageUri"] == f"pvc://{claim['metadata']['name']}/triton-models"
    assert triton["protocolVersion"] == "v2"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert TritonSettings().instance_kind == "gpu"  # the export's default needs that GPU
    # Triton's release must carry the TensorRT the plans were built with: the GPU image's base.
    base = re.search(r"ARG BASE=\S+:(\S+)", (ROOT / "docker/Dockerfile.gpu").read_text())
    assert base is not None and triton["runtimeVersion"] == base.group(1)
