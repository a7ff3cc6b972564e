"""Bad input gets a 4xx whose message names the field and the allowed range; never a 5xx."""

from __future__ import annotations

import pytest
from service_helpers import run, serving

from distill3d.service.settings import ServiceSettings, load_settings

FRONTAL = [
    1.0,
    0,
    0,
    0,
    0,
    -1,
    0,
    0,
    0,
    0,
    -1,
    2.7,
    0,
    0,
    0,
    1,
    4.26,
    0,
    0.5,
    0,
    4.26,
    0.5,
    0,
    0,
    1,
]

BAD_POSTS = [
    ({"yaw": 10}, 422, "exactly one of seed, z, w or ws (got none)"),
    ({"seed": 1, "z": [0.0] * 32}, 422, "got seed, z"),
    ({"z": [0.0] * 31}, 422, "z needs 32 numbers, got 31"),
    ({"w": [0.0] * 512}, 422, "w needs 32 numbers, got 512"),
    ({"seed": -1}, 422, "greater than or equal to 0"),
    ({"seed": 2**32}, 422, "less than 4294967296"),
    ({"seed": 1, "pitch": 95}, 422, "less than 90"),
    ({"seed": 1, "yaw": "left"}, 422, "valid number"),
    ({"seed": 1, "truncation": 7}, 422, "truncation"),
    ({"seed": 1, "format": "bmp"}, 422, "'png', 'jpeg' or 'webp'"),
    ({"seed": 1, "camera": [0.0] * 24}, 422, "at least 25 items"),
    ({"seed": 1, "camera": FRONTAL, "yaw": 10}, 422, "not both (got camera and yaw)"),
    ({"seed": 1, "colour": "red"}, 422, "Extra inputs are not permitted"),
    ({"w": [0.0] * 32, "conditioning_camera": FRONTAL}, 422, "applies to seed or z"),
    ({"seed": 1, "backend": "tensorrt"}, 422, "'auto', 'student' or 'volumetric'"),
]


def _messages(response) -> str:
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else " | ".join(str(d) for d in detail)


def test_bad_bodies_are_named(settings_for):
    async def scenario():
        async with serving(settings_for()) as client:
            for body, status, needle in BAD_POSTS:
                r = await client.post("/render", json=body)
                assert r.status_code == status, (body, r.text)
                assert needle in _messages(r), (body, r.text)

    run(scenario())


def test_non_finite_malformed_and_oversized_bodies(settings_for):
    async def scenario():
        async with serving(settings_for(max_body_bytes=4096)) as client:
            headers = {"content-type": "application/json"}
            for raw in ('{"seed": 1, "yaw": NaN}', '{"z": [Infinity' + ", 0" * 31 + "]}"):
                r = await client.post("/render", content=raw, headers=headers)
                assert r.status_code == 422 and "finite number" in r.text, raw
            r = await client.post("/render", content="{not json", headers=headers)
            assert r.status_code == 422 and "JSON" in r.text
            big = '{"z": [' + ", ".join(["0.0"] * 2000) + "]}"
            r = await client.post("/render", content=big, headers=headers)
            assert r.status_code == 413 and "4096 bytes" in r.json()["detail"]

            async def chunks():  # no Content-Length: the limit still holds
                for _ in range(10):
                    yield b" " * 1000

            r = await client.post("/render", content=chunks(), headers=headers)
            assert r.status_code == 413
            assert (await client.post("/render", json={"seed": 1})).status_code == 200

    run(scenario())


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"seed": 1, "yaw_amplitude": "nan"}, "finite number"),
        ({"z": "1,2,3"}, "z needs 32 numbers, got 3"),
        ({"seed": 1, "yaw": 10}, "Extra inputs are not permitted"),
        ({"seed": 1, "frames": 1000}, "frames must be at most 240"),
        ({"seed": 1, "frames": 1}, "greater than or equal to 2"),
        ({"seed": 1, "fps": 100}, "fps must be at most 60"),
        ({"seed": 1, "frames": 100000}, "less than or equal to 10000"),  # the schema's ceiling
        ({"seed": 1, "fov_deg": 1e-300}, "greater than or equal to 0.1"),  # no focal length
        ({"seed": 1, "format": "avi"}, "'mp4', 'webm' or 'gif'"),
        ({"seed": 1, "yaw_amplitude": 120}, "is outside [-90, 90]"),
        ({"frames": 10}, "exactly one of seed, z, w or ws"),
    ],
)
def test_bad_orbit_queries_are_named(settings_for, params, needle):
    async def scenario():
        async with serving(settings_for()) as client:
            r = await client.get("/orbit", params=params)
            assert r.status_code == 422, r.text
            assert needle in _messages(r)
            assert r.json()["detail"][0]["loc"][0] == "query"

    run(scenario())


def test_backend_that_is_not_loaded(settings_for):
    async def scenario():
        async with serving(settings_for(student=None)) as client:
            r = await client.get("/render", params={"seed": 1, "backend": "student"})
            assert r.status_code == 422
            assert "backend student is not loaded (loaded: volumetric)" in r.text
            r = await client.get("/render", params={"seed": 1})  # auto: the teacher serves
            assert r.status_code == 200 and r.headers["x-backend"] == "volumetric"
            assert "x-fallback" not in r.headers

    run(scenario())


def test_settings_layering_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL3D_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("DISTILL3D_QUEUE_SIZE", "7")
    config = tmp_path / "service.yaml"
    config.write_text("queue_size: 9\nmax_wait_ms: 2.5\nteacher: default\n")
    settings = load_settings(config, max_wait_ms=4.0, port=None)
    assert settings.max_batch_size == 3  # environment
    assert settings.queue_size == 9  # the file beats the environment
    assert settings.max_wait_ms == 4.0  # flags beat the file
    assert settings.port == 8000  # None flags do not mask anything
    monkeypatch.setenv("DISTILL3D_API_KEY", "xyzzy-key")
    assert ServiceSettings().api_key.get_secret_value() == "xyzzy-key"
    assert "xyzzy" not in repr(ServiceSettings())
    with pytest.raises(ValueError, match="nothing to serve"):
        ServiceSettings(teacher="none", student="none")
    with pytest.raises(ValueError, match="max_batch_size"):
        ServiceSettings(max_batch_size=0)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="plan_dir needs onnx_dir"):
        ServiceSettings(plan_dir=tmp_path)
