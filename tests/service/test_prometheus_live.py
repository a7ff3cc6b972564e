"""A real Prometheus (Debian's `prometheus` package) scrapes a real `distill3d serve` on
loopback; after a scripted sequence (one render, one image-level rejection, one fallback) every
expression of the Grafana dashboard returns data, and the rates of rejections and fallbacks move
on their first event (the labelled series exist at 0 before it, so Prometheus sees the 0 -> 1
step).

Skipped when the `prometheus` binary is missing, except where DISTILL3D_REQUIRE_PROMETHEUS=1
(CI installs the package and sets it). Bounded: one service, one Prometheus, a few dozen
loopback requests, about 30 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from distill3d.service.loadtest import spawn_service

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "distill3d.json"
GPU_ONLY = ("distill3d_torch_cuda_memory_bytes", "distill3d_gpu_memory_bytes")
SCRAPE_S = 1


def _prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("DISTILL3D_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("prometheus is required here (apt-get install prometheus)")
        pytest.skip("no prometheus binary (Debian: apt-get install prometheus)")
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def prometheus_scraping(target: str, folder: Path) -> Iterator[httpx.Client]:
    """A Prometheus process scraping ``target`` (host:port) every second; yields its API."""
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "scrape_configs": [
            {
                "job_name": "distill3d",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    process = subprocess.Popen(
        [
            _prometheus_binary(),
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "prometheus.log").open("w"),
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            _wait(lambda: _up(api), 30, "Prometheus never scraped the service")
            yield api
    finally:
        process.terminate()
        process.wait(timeout=20)


def _query(api: httpx.Client, expr: str) -> list[dict]:
    body = api.get("/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _up(api: httpx.Client) -> bool:
    try:
        return any(r["value"][1] == "1" for r in _query(api, "up"))
    except httpx.HTTPError:
        return False


def _wait(ready, timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(message)
        time.sleep(0.25)


def _dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$instance", ".*"))
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def test_every_dashboard_query_has_data_and_rates_move_on_the_first_event(
    checkpoints, tmp_path
) -> None:
    args = ["--teacher", str(checkpoints["teacher"]), "--student", str(checkpoints["student"])]
    with spawn_service([*args, "--queue-size", "4", "--max-wait-ms", "5"]) as url:
        target = url.removeprefix("http://")
        with (
            prometheus_scraping(target, tmp_path) as api,
            httpx.Client(base_url=url, timeout=60) as client,
        ):
            time.sleep(3 * SCRAPE_S)  # a few scrapes with every counter still at 0
            first = 'distill3d_rejected_total{reason="queue_full"}'
            assert [r["value"][1] for r in _query(api, f"sum({first})")] == ["0"]

            assert client.get("/render", params={"seed": 1, "yaw": 10}).status_code == 200
            orbit = client.get("/orbit", params={"seed": 2, "frames": 6, "format": "gif"})
            assert orbit.status_code == 429  # 6 images for a queue of 4: refused, 6 images
            fallback = client.get("/render", params={"seed": 3, "yaw": 60})  # student: +-45
            assert fallback.status_code == 200 and fallback.headers.get("x-fallback")
            time.sleep(3 * SCRAPE_S)

            moved = {
                "rejected images": f"sum(increase({first}[1m]))",
                "rejected requests": (
                    'sum(increase(distill3d_rejected_requests_total{reason="queue_full"}[1m]))'
                ),
                "fallbacks": (
                    "sum(increase(distill3d_fallbacks_total"
                    '{reason="pose_out_of_student_range"}[1m]))'
                ),
            }
            increases = {}
            for name, expr in moved.items():
                (row,) = _query(api, expr)
                increases[name] = float(row["value"][1])
            # increase() extrapolates to the window's edges, so 6 images read as about 6.
            assert increases["rejected images"] > 4, increases
            assert 0.5 < increases["rejected requests"] < 2, increases
            assert 0.5 < increases["fallbacks"] < 2, increases

            empty = []
            for title, expr in _dashboard_expressions():
                if any(name in expr for name in GPU_ONLY):
                    continue  # exported on CUDA machines only
                if not _query(api, expr):
                    empty.append(f"{title}: {expr}")
            assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
