"""The teacher's geometry through HTTP: GET /mesh (the demo teacher's coloured mesh opens in
trimesh; the resolution limit is a 422 and is in the OpenAPI schema; a student request is
answered by the teacher, said so) and GET /depth (the 16-bit PNG and the .npy are models.depth's
encodings of the same latent and camera)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from service_helpers import run, serving

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("skimage")


def test_mesh_of_the_demo_teacher(settings_for):
    async def scenario():
        settings = settings_for(teacher="default", student=None, warmup=False)
        async with serving(settings) as client:
            spec = (await client.get("/openapi.json")).json()
            params = {p["name"]: p for p in spec["paths"]["/mesh"]["get"]["parameters"]}
            assert params["resolution"]["schema"]["maximum"] == 256
            assert params["resolution"]["schema"]["minimum"] == 16
            assert params["format"]["schema"]["enum"] == ["glb", "ply", "obj"]
            for bad in (100000, 8):
                r = await client.get("/mesh", params={"seed": 3, "resolution": bad})
                assert r.status_code == 422, r.text
                assert r.json()["detail"][0]["loc"] == ["query", "resolution"]

            query = {"seed": 3, "resolution": 24, "format": "ply"}
            r = await client.get("/mesh", params=query)
            assert r.status_code == 200, r.text
            assert r.headers["x-backend"] == "volumetric"
            assert r.headers["content-disposition"] == (
                'attachment; filename="distill3d-seed3-24.ply"'
            )
            mesh = trimesh.load(io.BytesIO(r.content), file_type="ply", process=False)
            assert len(mesh.vertices) > 100 and len(mesh.faces) > 100
            assert int(r.headers["x-vertices"]) == len(mesh.vertices)
            colours = np.asarray(mesh.visual.vertex_colors)[:, :3]
            assert colours.shape == (len(mesh.vertices), 3) and colours.std() > 1
            # The student has no geometry: the teacher's mesh (the same bytes, from the cache).
            student = await client.get("/mesh", params={**query, "backend": "student"})
            assert student.status_code == 200
            assert "teacher" in student.headers["x-backend-note"]
            assert student.headers["x-cache"] == "hit" and student.content == r.content
            again = await client.get(
                "/mesh", params=query, headers={"If-None-Match": r.headers["etag"]}
            )
            assert again.status_code == 304
            glb = await client.get("/mesh", params={**query, "format": "glb"})
            assert glb.headers["content-type"] == "model/gltf-binary"
            scene = trimesh.load(io.BytesIO(glb.content), file_type="glb")
            assert sum(len(g.vertices) for g in scene.geometry.values()) == len(mesh.vertices)

    run(scenario())


def test_depth_matches_models_depth(settings_for):
    from distill3d.models.depth import DEPTH_PNG_KEY, depth_to_uint16, render_depth
    from distill3d.models.load import load_model
    from distill3d.models.render import RenderOptions, orbit_camera
    from distill3d.models.rng import generator_for

    teacher = load_model("default", device="cpu")  # the demo teacher: a figure to measure
    from distill3d.models.latents import z_from_seed
    from distill3d.models.render import frontal_camera

    # Seed 3's w (truncated): sent as w, so the service renders exactly these numbers.
    with torch.no_grad():
        ws = teacher.mapping(z_from_seed(3, teacher.z_dim), frontal_camera(teacher).to_label(), 0.7)
    w = ws[0, 0].numpy().astype(np.float32)
    camera = orbit_camera(teacher, 10.0, 5.0)
    depth, alpha = render_depth(
        teacher,
        torch.from_numpy(w)[None],
        camera,
        RenderOptions(noise_mode="const"),
        [generator_for(0)],
    )
    query = {"w": ",".join(f"{v:.9g}" for v in w), "yaw": 10, "pitch": 5}

    async def scenario():
        settings = settings_for(teacher="default", student=None, warmup=False)
        async with serving(settings) as client:
            png = await client.get("/depth", params=query)
            assert png.status_code == 200, png.text
            assert png.headers["content-type"] == "image/png"
            assert png.headers["x-depth-scale"] == "0.0001"
            assert png.headers["x-depth-unit"] == "world"
            assert png.headers["x-depth-quantity"] == "ray-distance"
            assert png.headers["x-backend"] == "volumetric" and "etag" in png.headers
            image = Image.open(io.BytesIO(png.content))
            assert image.mode in ("I;16", "I") and DEPTH_PNG_KEY in image.text
            values = np.asarray(image).astype(np.uint16)
            assert np.array_equal(values, depth_to_uint16(depth, alpha))
            surface = values > 0
            assert surface.mean() > 0.05  # the figure covers part of the frame
            npy = await client.get("/depth", params={**query, "format": "npy"})
            assert npy.headers["x-depth-scale"] == "1"
            assert 'filename="depth.npy"' in npy.headers["content-disposition"]
            array = np.load(io.BytesIO(npy.content))
            assert array.dtype == np.float32 and array.shape == tuple(depth.shape)
            assert np.array_equal(array, depth.numpy())
            # The stated scale: value x 0.0001 is the ray distance, to half a step.
            scaled = values[surface].astype(np.float64) * float(png.headers["x-depth-scale"])
            assert np.abs(scaled - array[surface]).max() <= 0.5e-4 + 1e-7
            # The student renders no depth: the teacher answers and says so.
            student = await client.get("/depth", params={**query, "backend": "student"})
            assert student.status_code == 200 and student.content == png.content
            assert "teacher" in student.headers["x-backend-note"]
            # Outside the teacher's pose range: 422 as for /render.
            far = await client.get("/depth", params={**query, "yaw": 120})
            assert far.status_code == 422

    run(scenario())
