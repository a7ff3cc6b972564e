"""SIGTERM to a real `distill3d serve` process: it drains (/readyz 503 at once, new work 503 with
Retry-After, requests in flight finish), answers 503 (not 500) for whatever outlives the drain
timeout, and exits 0."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
from server_process import serve_process
from service_helpers import metric

from distill3d.models.video import decode_video

# A turntable through the tiny teacher, one frame per model call: a few seconds on one core.
LONG_ORBIT = {"seed": 5, "frames": 240, "format": "gif", "backend": "volumetric"}


def _teacher_args(checkpoints) -> list[str]:
    return ["--teacher", str(checkpoints["teacher"]), "--student", str(checkpoints["student"])]


def _orbit_in_background(url: str, params: dict, out: list) -> threading.Thread:
    def go() -> None:
        try:
            out.append(httpx.get(f"{url}/orbit", params=params, timeout=120))
        except httpx.HTTPError as exc:
            out.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def _wait_in_flight(url: str, timeout_s: float = 20.0) -> None:
    """Until the orbit's frames are being rendered (the teacher's batches are counted)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics", timeout=5).text
        if metric(text, "distill3d_batch_size_count", backend="volumetric") >= 3:
            return
        time.sleep(0.05)
    raise TimeoutError("the orbit did not start")


def test_sigterm_drains_then_exits_0(checkpoints, tmp_path):
    env = {"DISTILL3D_TEACHER_MAX_BATCH_SIZE": "1", "DISTILL3D_DRAIN_TIMEOUT_S": "60"}
    with serve_process(_teacher_args(checkpoints), tmp_path / "serve.log", env) as server:
        results: list = []
        orbit = _orbit_in_background(server.url, LONG_ORBIT, results)
        _wait_in_flight(server.url)
        os.kill(server.process.pid, signal.SIGTERM)
        sent = time.monotonic()
        time.sleep(0.1)  # the signal is handled between two of the server's loop iterations
        with httpx.Client(base_url=server.url, timeout=5) as client:
            ready = client.get("/readyz")
            render = client.post("/render", json={"seed": 1})
            alive = client.get("/healthz")
        assert orbit.is_alive(), "the orbit ended before the drain could be seen; make it longer"
        orbit.join(120)
        code = server.wait(30)
        exited_s = time.monotonic() - sent
        log = server.log()
    assert ready.status_code == 503 and ready.json() == {"status": "draining"}
    assert render.status_code == 503 and render.headers["retry-after"] == "5"
    assert alive.status_code == 200
    (response,) = results
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 200, response.text
    assert decode_video(response.content)[0] == 240
    assert code == 0, log
    assert exited_s < 60
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert "draining" in log and "drained after" in log


def test_requests_outliving_the_drain_timeout_get_503_not_500(checkpoints, tmp_path):
    env = {"DISTILL3D_TEACHER_MAX_BATCH_SIZE": "1", "DISTILL3D_DRAIN_TIMEOUT_S": "0.5"}
    with serve_process(_teacher_args(checkpoints), tmp_path / "serve.log", env) as server:
        results: list = []
        orbit = _orbit_in_background(server.url, LONG_ORBIT, results)
        _wait_in_flight(server.url)
        os.kill(server.process.pid, signal.SIGTERM)
        orbit.join(60)
        code = server.wait(30)
        log = server.log()
    (response,) = results
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert "shut down before this request finished" in response.json()["detail"]
    assert code == 0, log
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert "drain timeout: 1 request(s) still running answered 503" in log


def test_an_idle_service_exits_at_once_on_sigterm(checkpoints, tmp_path):
    args = ["--student", str(checkpoints["student"]), "--teacher", "none"]
    with serve_process(args, tmp_path / "serve.log") as server:
        os.kill(server.process.pid, signal.SIGTERM)
        start = time.monotonic()
        code = server.wait(20)
    assert code == 0 and time.monotonic() - start < 10
