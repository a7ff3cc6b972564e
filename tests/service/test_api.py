"""Every endpoint through the ASGI app: images and videos decode with the asked-for size and
frame count, metadata and metrics report what is loaded and what happened."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from service_helpers import metric, run, serving

from distill3d.models.camera import Camera
from distill3d.models.video import decode_video


def _image(response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def test_health_models_and_docs(settings_for):
    async def scenario():
        async with serving(settings_for()) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["backends"] == {"student": "torch", "volumetric": "volumetric"}
            models = (await client.get("/v1/models")).json()
            by_role = {m["role"]: m for m in models["models"]}
            assert set(by_role) == {"student", "volumetric"}
            student = by_role["student"]
            assert student["backend"] == "torch" and student["device"] == "cpu"
            assert student["img_resolution"] == 64 and len(student["sha256"]) == 64
            assert student["pose_range"]["yaw_deg"] == 45  # from the checkpoint's metadata
            assert student["warmup_s_per_image"] > 0
            assert by_role["volumetric"]["pose_range"]["yaw_deg"] == 90
            assert models["latent"] == {"z_dim": 32, "w_dim": 32, "num_ws": 8}
            assert (await client.get("/openapi.json")).json()["paths"].keys() >= {
                "/render",
                "/orbit",
                "/v1/models",
                "/metrics",
            }
            assert (await client.get("/docs")).status_code == 200

    run(scenario())


def test_render_post_get_formats_and_determinism(settings_for):
    async def scenario():
        async with serving(settings_for()) as client:
            r = await client.post("/render", json={"seed": 3, "yaw": 20, "pitch": 5})
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "image/png"
            assert r.headers["x-backend"] == "torch"
            assert float(r.headers["x-model-time-ms"]) > 0
            assert int(r.headers["x-batch-size"]) >= 1
            image = _image(r)
            assert image.shape == (64, 64, 3) and image.std() > 0
            # The same render as a URL, and again: identical pixels (PNG is lossless).
            g = await client.get("/render", params={"seed": 3, "yaw": 20, "pitch": 5})
            assert np.array_equal(_image(g), image)
            # Another pose or identity changes the image.
            other = await client.get("/render", params={"seed": 3, "yaw": -20, "pitch": 5})
            assert not np.array_equal(_image(other), image)
            # z as a comma-separated vector: seed 3's z gives seed 3's image.
            from distill3d.models.latents import z_from_seed

            z = ",".join(f"{v:.9g}" for v in z_from_seed(3, 32)[0].tolist())
            by_z = await client.get("/render", params={"z": z, "yaw": 20, "pitch": 5})
            assert np.abs(_image(by_z).astype(int) - image).max() <= 1
            # A raw camera label equals the same yaw/pitch.
            label = Camera.orbit(20.0, 5.0, 2.7, (0, 0, 0.2), 4.2647).to_label()[0].tolist()
            by_label = await client.post("/render", json={"seed": 3, "camera": label})
            assert np.abs(_image(by_label).astype(int) - image).max() <= 1
            for fmt, mime in (("jpeg", "image/jpeg"), ("webp", "image/webp")):
                r = await client.get("/render", params={"seed": 1, "format": fmt})
                assert r.headers["content-type"] == mime
                assert Image.open(io.BytesIO(r.content)).size == (64, 64)
            teacher = await client.get("/render", params={"seed": 3, "backend": "volumetric"})
            assert teacher.headers["x-backend"] == "volumetric"
            assert "x-fallback" not in teacher.headers

    run(scenario())


@pytest.mark.parametrize("fmt", ["mp4", "webm", "gif"])
def test_orbit_video_decodes_with_the_frames_asked_for(settings_for, fmt):
    async def scenario():
        async with serving(settings_for(max_batch_size=4)) as client:
            r = await client.get(
                "/orbit", params={"seed": 2, "frames": 10, "fps": 12, "format": fmt}
            )
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == {"mp4": "video/mp4", "webm": "video/webm"}.get(
                fmt, "image/gif"
            )
            assert r.headers["x-frames"] == "10" and r.headers["x-backend"] == "torch"
            assert decode_video(r.content) == (10, 64, 64)
            if fmt == "mp4":  # index before the data: plays while downloading
                assert r.content.find(b"moov") < r.content.find(b"mdat")
            metrics = (await client.get("/metrics")).text
            # The frames went through the batching engine, several per model call.
            assert metric(metrics, "distill3d_batch_size_sum", backend="torch") == 10
            assert metric(metrics, "distill3d_batch_size_count", backend="torch") < 10

    run(scenario())


def test_metrics_exposition(settings_for):
    async def scenario():
        async with serving(settings_for()) as client:
            await client.get("/render", params={"seed": 1})
            await client.get("/render", params={"seed": 1, "yaw": 500})
            r = await client.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            text = r.text
            ok = {"endpoint": "/render", "method": "GET", "status": "200", "backend": "torch"}
            assert metric(text, "distill3d_http_requests_total", **ok) == 1
            assert metric(text, "distill3d_http_request_duration_seconds_count", **ok) == 1
            bad = {"endpoint": "/render", "status": "422"}
            assert metric(text, "distill3d_http_requests_total", **bad) == 1
            assert metric(text, "distill3d_model_seconds_count", backend="torch") >= 1
            assert metric(text, "distill3d_queue_wait_seconds_count", backend="torch") >= 1
            assert metric(text, "distill3d_process_resident_memory_bytes") > 10e6
            assert "distill3d_queue_depth" in text and "distill3d_fallbacks_total" in text

    run(scenario())
