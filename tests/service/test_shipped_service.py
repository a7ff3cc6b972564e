"""With no configuration, the service serves the demo world's shipped teacher."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from service_helpers import run, serving

from distill3d.service.settings import ServiceSettings


def test_the_default_service_renders_the_shipped_model():
    async def scenario() -> bytes:
        async with serving(ServiceSettings(device="cpu")) as client:
            r = await client.get("/render", params={"seed": 0, "yaw": 30})
            assert r.status_code == 200, r.text
            assert r.headers["x-backend"] == "volumetric"
            return r.content

    image = np.asarray(Image.open(io.BytesIO(run(scenario()))).convert("RGB"))
    assert image.shape == (128, 128, 3)
    foreground = (image.max(axis=2) > 20).mean()
    assert 0.15 < foreground < 0.9  # a figure on a black background, not noise or nothing
