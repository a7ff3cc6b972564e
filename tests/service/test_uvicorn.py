"""The service as users run it: `distill3d serve` in its own process on loopback, then the load
script against it, then `distill3d loadtest` starting services itself."""

from __future__ import annotations

import asyncio
import io
import json

import httpx
import pytest
from PIL import Image

from distill3d.cli import main
from distill3d.models.video import decode_video
from distill3d.service.loadtest import require_loopback, run_level, spawn_service


def test_serve_process_answers_every_endpoint(checkpoints):
    args = ["--teacher", str(checkpoints["teacher"]), "--student", str(checkpoints["student"])]
    with spawn_service([*args, "--max-wait-ms", "20"]) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            assert client.get("/readyz").json()["status"] == "ready"
            roles = {m["role"] for m in client.get("/v1/models").json()["models"]}
            assert roles == {"student", "volumetric"}
            r = client.post("/render", json={"seed": 7, "yaw": -15, "format": "jpeg"})
            assert r.status_code == 200 and r.headers["x-backend"] == "torch"
            assert Image.open(io.BytesIO(r.content)).size == (64, 64)
            video = client.get("/orbit", params={"seed": 7, "frames": 6, "format": "webm"})
            assert decode_video(video.content) == (6, 64, 64)
            assert client.get("/render", params={"seed": 7, "pitch": 100}).status_code == 422
            assert client.get("/docs").status_code == 200
            assert "distill3d_http_requests_total" in client.get("/metrics").text
        result = asyncio.run(run_level(url, 4, 12, "test"))
        assert result.ok == 12 and result.errors == {}
        assert result.requests_per_s > 0 and 0 < result.p50_ms <= result.p99_ms
        assert result.mean_batch >= 1
        # The model time each response reports, and what the service added on top of it.
        assert 0 < result.model_p50_ms < result.p50_ms
        assert 0 < result.over_model_p50_ms < result.p50_ms
        assert 0 < result.server_over_model_p50_ms <= result.over_model_p50_ms


def test_loadtest_command_compares_batching_on_and_off(checkpoints, tmp_path, capsys):
    out = tmp_path / "load.json"
    argv = ["loadtest", "--student", str(checkpoints["student"]), "--teacher", "none"]
    argv += ["--concurrency", "1,4", "--requests", "8", "--max-wait-ms", "50", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "batching on" in printed and "batching off" in printed and "p99 ms" in printed
    assert "model ms" in printed and "+client" in printed and "+server" in printed
    rows = json.loads(out.read_text())
    assert [(r["label"], r["concurrency"]) for r in rows] == [
        ("batching on", 1),
        ("batching on", 4),
        ("batching off", 1),
        ("batching off", 4),
    ]
    assert all(r["ok"] == 8 for r in rows)
    by = {(r["label"], r["concurrency"]): r for r in rows}
    assert by[("batching off", 4)]["mean_batch"] == 1.0
    assert by[("batching on", 4)]["mean_batch"] > 1.0


def test_load_script_stays_on_this_machine():
    for url in ("http://127.0.0.1:8000", "http://localhost:1", "http://[::1]:80"):
        require_loopback(url)
    for url in ("http://example.com", "http://10.0.0.1:8000", "http://0.0.0.0:8000"):
        with pytest.raises(ValueError, match="loopback"):
            require_loopback(url)
