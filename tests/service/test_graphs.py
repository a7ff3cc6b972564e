"""GET /graphs/*: the student's graphs for the browser (exported once into a cache, or the
--onnx-dir files), their manifest, strong ETags and 304s, the API key, COOP/COEP on the viewer,
and the vendored onnxruntime-web sent gzip-compressed."""

from __future__ import annotations

import gzip
import hashlib
import io

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from service_helpers import run, serving

from distill3d.models.camera import Camera
from distill3d.models.latents import z_from_seed

ISOLATED = {
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-embedder-policy": "require-corp",
}


@pytest.fixture
def graph_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL3D_GRAPH_CACHE_DIR", str(tmp_path / "graphs"))
    return tmp_path / "graphs"


def _render_locally(student: bytes, mapping: bytes, manifest: dict, seed: int, yaw: float):
    """What the page does, in Python: z of the seed -> mapping.onnx -> student.onnx -> uint8."""
    mapper = ort.InferenceSession(mapping, providers=["CPUExecutionProvider"])
    runner = ort.InferenceSession(student, providers=["CPUExecutionProvider"])
    z = z_from_seed(seed, manifest["z_dim"]).numpy()
    (w,) = mapper.run(None, {"z": z, "truncation_psi": np.full((1, 1), 0.7, np.float32)})
    cam = manifest["camera"]
    c = Camera.orbit(yaw, 0.0, cam["radius"], cam["pivot"], cam["focal_length"]).to_label()
    (image,) = runner.run(["image"], {"w": w, "c": c.numpy()})
    x = np.clip(image[0] * 127.5 + 128, 0, 255).astype(np.uint8)
    return x.transpose(1, 2, 0).astype(np.int16)


def test_graphs_are_exported_once_hashed_and_match_the_service(settings_for, graph_cache):
    async def go():
        async with serving(settings_for()) as client:
            r = await client.get("/graphs/manifest.json")
            assert r.status_code == 200, r.text
            manifest = r.json()
            assert r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'
            again = await client.get(
                "/graphs/manifest.json", headers={"If-None-Match": r.headers["etag"]}
            )
            assert again.status_code == 304 and not again.content

            student = manifest["graphs"]["student"]
            assert student["inputs"] == {
                "w": {"shape": ["batch", manifest["w_dim"]], "dtype": "float32"},
                "c": {"shape": ["batch", 25], "dtype": "float32"},
            }
            assert list(student["outputs"]) == ["image"]
            assert set(manifest["graphs"]["mapping"]["inputs"]) == {"z", "truncation_psi"}
            assert manifest["pose_range"]["yaw_deg"] == 45  # the checkpoint's declared range
            assert len(manifest["w_avg"]) == manifest["w_dim"]

            files = {}
            for name in ("student", "mapping"):
                g = await client.get(f"/graphs/{name}.onnx")
                assert g.status_code == 200
                digest = hashlib.sha256(g.content).hexdigest()
                assert digest == manifest["graphs"][name]["sha256"]
                assert len(g.content) == manifest["graphs"][name]["bytes"]
                assert g.headers["etag"] == f'"{digest}"'
                cached = await client.get(
                    f"/graphs/{name}.onnx", headers={"If-None-Match": f'W/"x", "{digest}"'}
                )
                assert cached.status_code == 304
                files[name] = g.content
            assert (await client.get("/graphs/teacher.onnx")).status_code == 404

            ref = await client.get("/render", params={"seed": 3, "yaw": 20, "backend": "student"})
            want = np.asarray(Image.open(io.BytesIO(ref.content)), np.int16)
            got = _render_locally(files["student"], files["mapping"], manifest, 3, 20.0)
            assert np.abs(got - want).max() <= 2
            return manifest

    first = run(go())
    exported = [p for p in graph_cache.iterdir() if (p / "export.json").is_file()]
    assert len(exported) == 1
    stamp = (exported[0] / "student.onnx").stat().st_mtime_ns
    second = run(go())  # a new start finds the cached export and keeps it
    assert (exported[0] / "student.onnx").stat().st_mtime_ns == stamp
    assert second["graphs"] == first["graphs"]


def test_onnx_dir_files_are_served_as_they_are(settings_for, checkpoints, graph_cache):
    async def go():
        async with serving(settings_for(onnx_dir=str(checkpoints["export"]))) as client:
            manifest = (await client.get("/graphs/manifest.json")).json()
            assert manifest["source"] == "onnx_dir"
            body = (await client.get("/graphs/student.onnx")).content
            assert body == (checkpoints["export"] / "student.onnx").read_bytes()

    run(go())
    assert not graph_cache.exists()  # nothing exported


def test_api_key_isolation_headers_and_the_vendored_runtime(settings_for, graph_cache):
    async def go():
        async with serving(settings_for(api_key="sesame")) as client:
            assert (await client.get("/graphs/manifest.json")).status_code == 401
            assert (await client.get("/graphs/student.onnx")).status_code == 401
            key = {"Authorization": "Bearer sesame"}
            assert (await client.get("/graphs/manifest.json", headers=key)).status_code == 200

            for path in (
                "/",
                "/static/viewer.js",
                "/static/vendor/onnxruntime-web/ort.wasm.min.mjs",
            ):
                r = await client.get(path, headers=key)
                assert r.status_code == 200, path
                assert {k: r.headers.get(k) for k in ISOLATED} == ISOLATED, path
            mjs = await client.get("/static/vendor/onnxruntime-web/ort.wasm.min.mjs", headers=key)
            assert mjs.headers["content-type"].startswith("text/javascript")

            wasm = "/static/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm"
            zipped = await client.get(wasm, headers={**key, "Accept-Encoding": "gzip"})
            assert zipped.headers["content-encoding"] == "gzip"
            assert zipped.headers["content-type"] == "application/wasm"
            assert zipped.content[:4] == b"\0asm"  # httpx decodes the gzip
            etag = zipped.headers["etag"]
            again = await client.get(wasm, headers={**key, "If-None-Match": etag})
            assert again.status_code == 304
            plain = await client.get(wasm, headers={**key, "Accept-Encoding": "identity"})
            assert "content-encoding" not in plain.headers and plain.content == zipped.content
            missing = await client.get("/static/vendor/onnxruntime-web/nothing.wasm", headers=key)
            assert missing.status_code == 404

    run(go())


def test_vendored_wasm_is_the_gzip_of_the_published_file():
    from distill3d.service.routers.graphs import VENDOR_DIR

    published = {}
    for line in (VENDOR_DIR / "VERSION").read_text().splitlines()[1:]:
        digest, name = line.split()[:2]
        published[name] = digest
    for name, digest in published.items():
        stored = VENDOR_DIR / (name + ".gz" if name.endswith(".wasm") else name)
        data = stored.read_bytes()
        if name.endswith(".wasm"):
            data = gzip.decompress(data)
        assert hashlib.sha256(data).hexdigest() == digest, name
    assert "MIT License" in (VENDOR_DIR / "LICENSE").read_text()


def test_a_failed_export_is_answered_404_and_not_retried(settings_for, graph_cache):
    """Without the export extra (here: an exporter that fails as it would) /graphs is 404
    naming the problem, and the export is attempted once, not on every request."""
    from distill3d.service.app import create_app

    calls = []

    def broken(student, folder, source):
        calls.append(folder)
        raise RuntimeError("ONNX export needs onnx: pip install 'distill3d[export]'")

    async def go():
        app = create_app(settings_for(), graph_exporter=broken)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
                for _ in range(3):
                    r = await client.get("/graphs/manifest.json")
                    assert r.status_code == 404 and "distill3d[export]" in r.text
        assert len(calls) == 1

    run(go())
