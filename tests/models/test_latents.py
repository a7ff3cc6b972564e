"""Latent files and image reading: round trips, and every malformed input named in its error."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from distill3d.models.images import read_image
from distill3d.models.latents import FittedLatent, load_latent, save_latent
from distill3d.models.load import init_generator
from distill3d.models.render import (
    RenderOptions,
    frontal_camera,
    orbit_camera,
    render,
    render_ws,
)


def test_w_and_w_plus_latents_round_trip(tmp_path):
    w = torch.randn(6)
    single = FittedLatent(ws=w.expand(4, -1).clone(), yaw_deg=12.5, pitch_deg=-3.0)
    body = json.loads(save_latent(single, tmp_path / "a.json").read_text())
    assert body["space"] == "w" and "ws" not in body and len(body["w"]) == 6
    back = load_latent(tmp_path / "a.json")
    assert torch.equal(back.ws, single.ws) and (back.yaw_deg, back.pitch_deg) == (12.5, -3.0)
    per_layer = FittedLatent(ws=torch.randn(4, 6), camera_label=[0.5] * 25, metadata={"k": 1})
    back = load_latent(save_latent(per_layer, tmp_path / "b.json"))
    assert back.space == "w+" and back.w is None and torch.equal(back.ws, per_layer.ws)
    assert back.camera_label == [0.5] * 25 and back.metadata == {"k": 1}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"format": "other"}, "not a distill3d latent file"),
        ({"format": "distill3d-latent", "version": 9, "num_ws": 2}, "version 9"),
        ({"format": "distill3d-latent", "version": 1, "num_ws": 2}, "neither 'w' nor 'ws'"),
        ({"format": "distill3d-latent", "version": 1, "num_ws": 3, "ws": [[1.0], [2.0]]}, "rows"),
        ({"format": "distill3d-latent", "version": 1, "num_ws": 1, "w": ["a"]}, "list of numbers"),
        (
            {"format": "distill3d-latent", "version": 1, "num_ws": 1, "w": [1.0], "camera": [1.0]},
            "25-number",
        ),
        (
            {"format": "distill3d-latent", "version": 1, "num_ws": 1, "w": [1.0], "yaw": "x"},
            "finite numbers of degrees",
        ),
    ],
)
def test_malformed_latent_files_are_refused_by_name(tmp_path, body, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(body))
    with pytest.raises(ValueError, match=message):
        load_latent(path)


def test_non_json_and_missing_latent_files(tmp_path):
    (tmp_path / "x.json").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match="not JSON"):
        load_latent(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError):
        load_latent(tmp_path / "none.json")


def test_render_ws_of_the_mapped_w_equals_render_of_z(tiny_generator):
    z = torch.randn(2, tiny_generator.z_dim, generator=torch.Generator().manual_seed(1))
    camera = orbit_camera(tiny_generator, [10.0, -10.0], [0.0, 5.0])
    options = RenderOptions(truncation_psi=0.7)
    rng = [torch.Generator().manual_seed(0) for _ in range(2)]
    expected = render(tiny_generator, z, camera, options, rng=rng)["image"]
    with torch.no_grad():
        ws = tiny_generator.mapping(z, frontal_camera(tiny_generator, 2).to_label())
    rng = [torch.Generator().manual_seed(0) for _ in range(2)]
    got = render_ws(tiny_generator, ws, camera, options, rng=rng)["image"]
    assert torch.allclose(got, expected, atol=1e-5)
    other = init_generator("tiny", seed=0)
    with pytest.raises(ValueError, match="fitted to another model"):
        render_ws(other, torch.zeros(1, 3, other.w_dim), camera)


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_read_image_scales_to_minus_one_one_and_drops_alpha(tmp_path):
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0] = 255
    image = read_image(_png(rgba))
    assert image.shape == (3, 5, 7)
    assert torch.allclose(image[0], torch.ones(5, 7)) and torch.allclose(
        image[1], -torch.ones(5, 7)
    )
    (tmp_path / "a.jpg").write_bytes(_png(rgba[..., :3], "JPEG"))
    assert read_image(tmp_path / "a.jpg").shape == (3, 5, 7)


def test_read_image_refuses_non_images_truncated_files_and_huge_sizes():
    with pytest.raises(ValueError, match="not an image"):
        read_image(b"hello, world")
    data = _png(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="damaged or truncated"):
        read_image(data[: len(data) // 2])
    with pytest.raises(ValueError, match="more than the limit"):
        read_image(data, max_pixels=1000)
    with pytest.raises(FileNotFoundError):
        read_image("/no/such/image.png")
