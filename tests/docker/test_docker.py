"""Docker files without a Docker engine: the compose file against the compose-spec schema, and
each image's entrypoint command run directly."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from distill3d.service.loadtest import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))


def _exec_form(dockerfile: Path, instruction: str) -> list[str]:
    lines = [ln for ln in dockerfile.read_text().splitlines() if ln.startswith(instruction + " ")]
    assert lines, f"{dockerfile.name} has no {instruction}"
    return json.loads(lines[-1][len(instruction) + 1 :])  # exec form: a JSON array


def test_compose_file_matches_the_compose_spec() -> None:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    proc = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_builds_the_dockerfiles_that_exist() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    built = {n: s["build"]["dockerfile"] for n, s in compose["services"].items() if "build" in s}
    assert sorted(built.values()) == ["docker/Dockerfile", "docker/Dockerfile.gpu"]
    for name, dockerfile in built.items():
        assert (ROOT / dockerfile).is_file(), name
    gpu = compose["services"]["distill3d-gpu"]["deploy"]["resources"]["reservations"]
    assert gpu["devices"][0]["capabilities"] == ["gpu"]
    assert "readyz" in " ".join(compose["services"]["distill3d"]["healthcheck"]["test"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_command_serves_outside_docker(dockerfile: Path) -> None:
    """The image's command, on a free loopback port instead of 0.0.0.0:8000, with the
    environment compose gives it: the service becomes ready and renders."""
    entrypoint = _exec_form(dockerfile, "ENTRYPOINT")
    cmd = _exec_form(dockerfile, "CMD")
    assert entrypoint == ["distill3d"] and cmd[0] == "serve"
    port = free_port()
    args = [a.replace("0.0.0.0", "127.0.0.1").replace("8000", str(port)) for a in cmd]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = {
        k: _compose_default(v) for k, v in compose["services"]["distill3d"]["environment"].items()
    }
    exe = Path(sys.executable).parent / "distill3d"
    proc = subprocess.Popen([str(exe), *args], env={**os.environ, **env})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, "the service exited"
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "not ready in 90 s"
            time.sleep(0.3)
        # The compose healthcheck's own command, against this port.
        check = compose["services"]["distill3d"]["healthcheck"]["test"]
        assert check[0] == "CMD"
        probe = [
            sys.executable if a == "python" else a.replace("8000", str(port)) for a in check[1:]
        ]
        assert subprocess.run(probe, check=False, timeout=30).returncode == 0
        r = httpx.get(f"{url}/render", params={"seed": 0, "yaw": 30}, timeout=60)
        assert r.status_code == 200
        assert Image.open(io.BytesIO(r.content)).size == (128, 128)  # the shipped demo teacher
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _compose_default(value: str) -> str:
    """'${NAME:-default}' -> 'default' (what compose substitutes when NAME is unset)."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:-(.*)\}", str(value))
    return match.group(1) if match else str(value)


def test_prometheus_scrapes_the_compose_services() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {"distill3d:8000", "distill3d-gpu:8000"}
    assert {t.split(":")[0] for t in targets} <= set(compose["services"])
    mounted = compose["services"]["prometheus"]["volumes"][0].split(":")[0]
    assert (ROOT / mounted).resolve() == (ROOT / "docker" / "prometheus.yml").resolve()


def test_grafana_dashboard_queries_metrics_the_service_exports() -> None:
    from distill3d.service.app import create_app
    from distill3d.service.settings import ServiceSettings

    metrics = create_app(ServiceSettings(device="cpu")).state.metrics  # routes known, no models
    metrics.precreate_backend("torch")  # what every Batcher does at start
    # Names as PromQL sees them (counters _total, histograms _bucket/_sum/_count), as the
    # service exposes them at start, before any request; GPU and render-cache families are
    # added by collectors that need a GPU or a cache.
    text = metrics.exposition().decode()
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    exported |= {
        # By exact status and backend: a series per answer seen (the status classes of
        # distill3d_http_responses_total are the ones that exist from the start).
        "distill3d_http_requests_total",
        "distill3d_http_request_duration_seconds_bucket",
        "distill3d_torch_cuda_memory_bytes",  # GPU only
        "distill3d_gpu_memory_bytes",  # GPU with nvidia-ml-py
        "distill3d_render_cache_events_total",  # service/cache.py, tracked by the app
        "distill3d_render_cache_bytes",
        "distill3d_render_cache_max_bytes",
    }
    datasource = yaml.safe_load(
        (ROOT / "docker/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    dashboard = json.loads((ROOT / "docker/grafana/dashboards/distill3d.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["current"]["value"] == datasource["uid"]
    assert variables["instance"]["includeAll"] and "instance" in variables["instance"]["definition"]
    assert dashboard["panels"]
    used_anywhere: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])
            used = set(re.findall(r"\b(?:distill3d|process)_[a-z_]+", target["expr"]))
            assert used and used <= exported, (panel["title"], used - exported)
            used_anywhere |= used
    # The panels the issue asked for: encode time, inversions, cache hits, batch fill, fallbacks.
    for name in (
        "distill3d_encode_seconds_bucket",
        "distill3d_inversions_total",
        "distill3d_render_cache_events_total",
        "distill3d_batch_size_sum",
        "distill3d_fallbacks_total",
        "distill3d_rejected_total",
        "process_resident_memory_bytes",
    ):
        assert name in used_anywhere, name
    assert "distill3d_process_resident_memory_bytes" not in used_anywhere  # deprecated copy


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_every_package(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    for package in ("distill3d", "models", "training", "service", "export"):
        assert f"COPY {package} ./{package}" in text
    assert "torch==2.13.0" in text
