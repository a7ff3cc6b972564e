"""Per-layer latents, style mixing, interpolation and POST /invert through the HTTP API."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from service_helpers import metric, run, serving

from distill3d.models.latents import z_from_seed
from distill3d.models.load import load_model
from distill3d.models.render import frontal_camera, w_avg_of


def _pixels(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)), np.int16)


def _png(size: int = 64, seed: int = 0) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _ws_of(checkpoints, seed: int) -> list[list[float]]:
    teacher = load_model(checkpoints["teacher"])
    with torch.no_grad():
        ws = teacher.mapping(z_from_seed(seed, teacher.z_dim), frontal_camera(teacher).to_label())
    return ws[0].tolist()


def test_mixing_and_interpolation_reach_both_ends(settings_for):
    async def go():
        async with serving(settings_for()) as client:
            one = _pixels(await client.post("/render", json={"seed": 1, "yaw": 10}))
            two = _pixels(await client.post("/render", json={"seed": 2, "yaw": 10}))
            assert np.abs(one - two).max() > 10
            mixed_all = {"seed": 1, "yaw": 10, "mix": {"seed": 2, "cutoff": 0}}
            assert np.abs(_pixels(await client.post("/render", json=mixed_all)) - two).max() <= 1
            mixed_none = {"seed": 1, "yaw": 10, "mix": {"seed": 2, "cutoff": 8}}
            assert np.abs(_pixels(await client.post("/render", json=mixed_none)) - one).max() <= 1
            mixed = _pixels(
                await client.post("/render", json={**mixed_all, "mix": {"seed": 2, "cutoff": 4}})
            )
            assert np.abs(mixed - one).max() > 1 and np.abs(mixed - two).max() > 1
            query = {"seed": 1, "yaw": 10, "mix_seed": 2, "mix_cutoff": 4}
            assert np.array_equal(_pixels(await client.get("/render", params=query)), mixed)
            for t, expected in ((0.0, one), (1.0, two)):
                body = {"seed": 1, "yaw": 10, "interpolate": {"seed": 2, "t": t}}
                assert (
                    np.abs(_pixels(await client.post("/render", json=body)) - expected).max() <= 1
                )
            bad = await client.post("/render", json={"seed": 1, "mix": {"seed": 2, "cutoff": 9}})
            assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == [
                "body",
                "mix",
                "cutoff",
            ]
            bad = await client.post("/render", json={"seed": 1, "interpolate": {"seed": 2, "t": 2}})
            assert bad.status_code == 422
            bad = await client.post("/render", json={"seed": 1, "mix": {"cutoff": 2}})
            assert bad.status_code == 422 and "exactly one of seed, z, w or ws" in bad.text

    run(go())


def test_per_layer_ws_renders_on_both_backends_and_in_orbits(settings_for, checkpoints):
    ws = _ws_of(checkpoints, 5)

    async def go():
        async with serving(settings_for()) as client:
            by_seed = _pixels(await client.post("/render", json={"seed": 5, "truncation": 1}))
            same = await client.post("/render", json={"ws": ws})
            assert np.abs(_pixels(same) - by_seed).max() <= 1
            edited = [row[:] for row in ws]
            edited[-1] = [v + 1.0 for v in edited[-1]]  # the last row drives the fine layers
            for backend in ("student", "volumetric"):
                r = await client.post("/render", json={"ws": edited, "backend": backend})
                assert r.status_code == 200 and r.headers["x-backend"] in ("torch", "volumetric")
            changed = _pixels(await client.post("/render", json={"ws": edited}))
            assert np.abs(changed - by_seed).max() > 1
            video = await client.post("/orbit", json={"ws": edited, "frames": 4, "format": "gif"})
            assert video.status_code == 200 and video.headers["x-frames"] == "4"
            bad = await client.post("/render", json={"ws": ws[:3]})
            assert bad.status_code == 422 and "ws needs 8 rows of 32 numbers" in bad.text
            bad = await client.get("/render", params={"ws": "1,2"})
            assert bad.status_code == 422

    run(go())


def test_an_exported_student_refuses_per_layer_latents_by_name(settings_for, checkpoints):
    ws = _ws_of(checkpoints, 5)
    ws[-1] = [v + 1.0 for v in ws[-1]]
    settings = settings_for(teacher=None, student=None, onnx_dir=str(checkpoints["export"]))

    async def go():
        async with serving(settings) as client:
            # mapping.onnx yields the average w (truncation's target) finite and exact
            w_avg = client.app.state.service.models.mapper.w_avg
            expected = w_avg_of(load_model(checkpoints["student"])).numpy()
            assert np.allclose(w_avg, expected, atol=1e-5)
            r = await client.post("/render", json={"ws": ws})
            assert r.status_code == 422 and "exported graph" in r.text
            r = await client.post("/render", json={"seed": 1, "interpolate": {"seed": 2, "t": 0.5}})
            assert r.status_code == 200, r.text  # one w after interpolation: the export takes it
            r = await client.post("/invert", content=_png(), headers={"content-type": "image/png"})
            assert r.status_code == 422 and "no gradients" in r.text

    run(go())


def test_invert_fits_raw_and_form_uploads_and_returns_a_latent_file(settings_for):
    async def go():
        async with serving(settings_for(invert_steps=3)) as client:
            r = await client.post(
                "/invert",
                params={"yaw": 20, "pitch": 5},
                content=_png(),
                headers={"content-type": "image/png"},
            )
            assert r.status_code == 200, r.text
            latent = r.json()
            assert latent["format"] == "distill3d-latent" and len(latent["w"]) == 32
            assert (latent["yaw"], latent["pitch"]) == (20.0, 5.0)
            assert latent["metadata"]["fit"]["steps"] == 3 and r.headers["x-backend"] == "student"
            again = await client.post("/render", json={"w": latent["w"], "yaw": 20, "pitch": 5})
            assert again.status_code == 200
            files = {"image": ("photo.png", _png(48, seed=1), "image/png")}
            data = {"steps": "2", "space": "w+", "backend": "volumetric"}
            r = await client.post("/invert", files=files, data=data)
            assert r.status_code == 200, r.text
            latent = r.json()
            assert latent["space"] == "w+" and len(latent["ws"]) == 8
            assert (
                latent["metadata"]["fit"]["camera_estimated"]
                and r.headers["x-backend"] == "volumetric"
            )
            r = await client.post("/render", json={"ws": latent["ws"], "yaw": latent["yaw"]})
            assert r.status_code == 200
            text = (await client.get("/metrics")).text
            assert metric(text, "distill3d_inversions_total", role="student", outcome="ok") == 1
            assert metric(text, "distill3d_inversion_seconds_count", role="volumetric") == 1

    run(go())


def test_invert_rejects_bad_uploads_with_4xx(settings_for):
    async def go():
        settings = settings_for(max_upload_bytes=4096, max_upload_pixels=40 * 40)
        async with serving(settings) as client:
            png = {"content-type": "image/png"}
            r = await client.post("/invert", content=b"not an image at all", headers=png)
            assert r.status_code == 422 and "not an image" in r.text
            r = await client.post("/invert", content=_png(32)[:200], headers=png)
            assert r.status_code == 422 and "damaged or truncated" in r.text
            r = await client.post(
                "/invert", content=b"hello", headers={"content-type": "text/plain"}
            )
            assert r.status_code == 415 and "multipart/form-data" in r.text
            r = await client.post("/invert", content=_png(64), headers=png)
            assert r.status_code == 413  # 64x64 random pixels: a PNG over 4096 bytes
            small = np.zeros((48, 48, 3), np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(small).save(buffer, format="PNG")
            r = await client.post("/invert", content=buffer.getvalue(), headers=png)
            assert r.status_code == 413 and "more than the limit" in r.text
            r = await client.post(
                "/invert",
                content=b"--xx\r\nbroken",
                headers={"content-type": "multipart/form-data; boundary=xx"},
            )
            assert r.status_code in (400, 422)
            r = await client.post("/invert", files={"photo": ("a.png", _png(16), "image/png")})
            assert r.status_code == 422 and "'image'" in r.text
            r = await client.post("/invert", params={"pitch": 5}, content=_png(16), headers=png)
            assert r.status_code == 422 and "pitch without yaw" in r.text
            r = await client.post("/invert", params={"steps": 5000}, content=_png(16), headers=png)
            assert r.status_code == 422 and "at most 1000" in r.text
            text = (await client.get("/metrics")).text
            assert (
                metric(text, "distill3d_inversions_total", role="student", outcome="bad_input") >= 2
            )

    run(go())


def test_the_viewer_page_and_its_assets_are_served(settings_for):
    async def go():
        async with serving(settings_for()) as client:
            page = await client.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert 'id="yaw"' in page.text and "/static/viewer.js" in page.text
            script = await client.get("/static/viewer.js")
            assert script.status_code == 200 and "/render" in script.text
            assert (await client.get("/static/viewer.css")).status_code == 200
            assert (await client.get("/static/missing.js")).status_code == 404

    run(go())
