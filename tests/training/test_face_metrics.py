"""Face metrics: they tell a model that draws the facial features from one that paints skin there."""

from __future__ import annotations

import math

import pytest
import torch

from distill3d.training.demo.face_metrics import feature_psnr, pupil_contrast
from distill3d.training.demo.scenes import (
    PARTS,
    build_scenes,
    feature_mask,
    render_scenes,
    sample_z,
    scene_camera,
)


@pytest.fixture(scope="module")
def frontal() -> tuple[torch.Tensor, torch.Tensor]:
    """Four scenes seen from the front at the face framing: (image [4, 3, 96, 96], part map)."""
    truth = render_scenes(
        build_scenes(sample_z(3, 4)), scene_camera([0.0] * 4, [5.0] * 4, 3.2), 96, 1
    )
    return truth.image, truth.part


def _faceless(image: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """The image with every facial feature painted over in its skull's mean colour."""
    skull = (part == PARTS.index("skull")).float()
    skin = (image * skull).sum((2, 3), keepdim=True) / skull.sum((2, 3), keepdim=True)
    return torch.where(feature_mask(part), skin, image)


def test_ground_truth_has_dark_pupils_in_white_eyes(frontal):
    image, part = frontal
    contrast = pupil_contrast(image, part)
    assert contrast.shape == (4,) and bool((contrast > 0.25).all())


def test_a_face_without_features_scores_no_contrast_and_a_low_feature_psnr(frontal):
    image, part = frontal
    egg = _faceless(image, part)
    assert float(pupil_contrast(egg, part).abs().max()) < 1e-5
    noisy = image + 0.02 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    assert feature_psnr(noisy, image, part) > 30 > 20 > feature_psnr(egg, image, part)
    assert feature_psnr(image, image, part) == pytest.approx(100)  # the error's 1e-10 floor


def test_an_image_without_eyes_in_view_gives_nan_not_zero(frontal):
    image, part = frontal
    eyes = torch.tensor([PARTS.index(p) for p in ("eye_l", "eye_r", "pupil_l", "pupil_r")])
    no_eyes = torch.where(torch.isin(part, eyes), PARTS.index("skull"), part)
    assert all(math.isnan(v) for v in pupil_contrast(image, no_eyes).tolist())
    with pytest.raises(ValueError, match="does not match"):
        pupil_contrast(image, part[..., :48, :48])
