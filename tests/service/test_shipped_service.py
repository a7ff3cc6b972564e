"""With no configuration, the service serves the demo world's shipped student, with the shipped
teacher behind it."""

from __future__ import annotations

from service_helpers import run, serving

from distill3d.models.images import read_image
from distill3d.models.metrics import psnr
from distill3d.service.settings import ServiceSettings


def test_the_default_service_renders_the_shipped_models():
    async def scenario() -> dict[str, bytes]:
        async with serving(ServiceSettings(device="cpu")) as client:
            images = {}
            for backend, expected in (("auto", "torch"), ("volumetric", "volumetric")):
                params = {"seed": 0, "yaw": 30, "backend": backend}
                r = await client.get("/render", params=params)
                assert r.status_code == 200, r.text
                assert r.headers["x-backend"] == expected
                images[expected] = r.content
            return images

    images = {name: read_image(content) for name, content in run(scenario()).items()}
    for image in images.values():
        assert image.shape == (3, 128, 128)
        foreground = (image.amax(dim=0) > 20 / 127.5 - 1).float().mean()
        assert 0.15 < foreground < 0.9  # a figure on a black background, not noise or nothing
    # The student draws the teacher's figure (an untrained one scores about 12 dB).
    assert float(psnr(images["torch"][None], images["volumetric"][None])) > 22
