"""The API key is checked before anything is parsed and guards every route but the probes;
/invert refuses formats it does not decode and, when busy, answers before reading the upload."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from service_helpers import run, serving

KEY = {"Authorization": "Bearer s3cret"}


def _image(fmt: str, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def test_malformed_json_without_a_key_is_401_not_a_parse_error(settings_for):
    async def go():
        async with serving(settings_for(api_key="s3cret")) as client:
            headers = {"content-type": "application/json"}
            r = await client.post("/render", content="{not json", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            r = await client.post("/render", content="{not json", headers={**headers, **KEY})
            assert r.status_code == 422

    run(go())


def test_docs_and_metrics_need_the_key_probes_and_the_viewer_shell_do_not(settings_for):
    """With a key set, the API docs and schema and /metrics are 401 without it; the probes and
    the viewer's page and static files (no model work, no data) answer, and the page then asks
    for the key for every API call."""

    async def go():
        async with serving(settings_for(api_key="s3cret")) as client:
            for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
                r = await client.get(path)
                assert r.status_code == 401, path
                assert (await client.get(path, headers=KEY)).status_code == 200, path
            for path in ("/healthz", "/readyz", "/", "/static/viewer.js"):
                assert (await client.get(path)).status_code == 200, path
            # An open prefix does not open what a dot-dot path resolves to.
            assert (await client.get("/static/../openapi.json")).status_code in (401, 404)
            assert (await client.get("/render", params={"seed": 0})).status_code == 401

    run(go())


def test_invert_refuses_formats_it_does_not_decode_whatever_the_content_type(settings_for):
    async def go():
        async with serving(settings_for(invert_steps=1)) as client:
            png = {"content-type": "image/png"}
            for fmt, name in (("BMP", "BMP"), ("TIFF", "TIFF"), ("GIF", "GIF")):
                r = await client.post("/invert", content=_image(fmt), headers=png)
                assert r.status_code == 415, (fmt, r.text)
                assert name in r.text and "PNG, JPEG or WebP" in r.text
            r = await client.post("/invert", content=_image("WEBP"), headers=png)
            assert r.status_code == 200, r.text

    run(go())


def test_a_busy_invert_answers_429_without_reading_the_upload(settings_for):
    async def go():
        async with serving(settings_for()) as client:
            read = []

            async def body():
                read.append(True)
                yield _image("PNG")

            service = client.app.state.service
            with service.inversions.take("held by the test"):
                r = await client.post(
                    "/invert", content=body(), headers={"content-type": "image/png"}
                )
            assert r.status_code == 429 and r.headers["retry-after"] == "5"
            assert "already running" in r.text
            assert read == []

    run(go())
