"""Inversion on the shipped demo teacher: an image the model drew is recovered in a bounded
number of steps, with the camera given or estimated; the model is left as it was.

(Random networks are no test of inversion: their images are chaotic functions of w.)
"""

from __future__ import annotations

import pytest
import torch

from distill3d.models.errors import ConfigError
from distill3d.models.inversion import InversionConfig, invert
from distill3d.models.latents import z_from_seed
from distill3d.models.load import load_model
from distill3d.models.render import RenderOptions, orbit_camera, render
from distill3d.models.rng import generator_for


@pytest.fixture(scope="module")
def teacher():
    return load_model("default").eval()


def _drawn(model, seed: int, yaw: float, pitch: float) -> torch.Tensor:
    z = z_from_seed(seed, model.z_dim)
    camera = orbit_camera(model, yaw, pitch)
    with torch.no_grad():
        out = render(model, z, camera, RenderOptions(truncation_psi=0.7), rng=generator_for(0))
    return out["image"][0]


def test_an_image_the_model_drew_is_recovered(teacher):
    target = _drawn(teacher, 11, 20.0, 5.0)
    config = InversionConfig(steps=80, lr=0.05)
    result = invert(teacher, target, config, camera=(20.0, 5.0))
    assert result.psnr_db > 30 and result.steps == 80 and result.seconds > 0
    assert result.ws.shape == (teacher.num_ws, teacher.w_dim)
    assert (result.yaw_deg, result.pitch_deg) == (20.0, 5.0)  # a given camera stays fixed
    assert result.history[-1] < result.history[0] / 4
    start = invert(teacher, target, InversionConfig(steps=1), camera=(20.0, 5.0))
    assert start.psnr_db < result.psnr_db - 8  # the average w alone is far off
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_the_camera_is_estimated_when_not_given(teacher):
    target = _drawn(teacher, 12, 25.0, 0.0)
    config = InversionConfig(steps=60, lr=0.05, search_yaws=(-30, 0, 30), search_pitches=(0,))
    result = invert(teacher, target, config)
    assert result.camera_estimated and abs(result.yaw_deg - 25.0) < 10
    assert result.psnr_db > 25 and len(result.camera_label) == 25


def test_w_plus_and_bad_input(teacher):
    target = _drawn(teacher, 13, 0.0, 0.0)
    result = invert(teacher, target, InversionConfig(steps=2, space="w+"), camera=(0.0, 0.0))
    assert result.space == "w+" and result.ws.shape == (teacher.num_ws, teacher.w_dim)
    assert result.latent().to_json()["space"] in ("w", "w+")
    with pytest.raises(ValueError, match="one RGB image"):
        invert(teacher, torch.zeros(2, 3, 64, 64), camera=(0.0, 0.0))
    with pytest.raises(ValueError, match="pitch"):
        invert(teacher, target, camera=(0.0, 85.0))
    with pytest.raises(ConfigError, match="space"):
        InversionConfig(space="z")  # type: ignore[arg-type]
