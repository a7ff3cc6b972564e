"""PSNR, SSIM and the reprojection 3D-consistency error, on images whose answers are known."""

from __future__ import annotations

import math

import torch

from distill3d.models.camera import Camera
from distill3d.models.eg3d.renderer import sample_rays
from distill3d.models.metrics import psnr, reprojection_error, ssim


def test_psnr_and_ssim_on_known_images():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    assert torch.allclose(psnr(x, x), torch.full((2,), 100.0))
    # A uniform offset of 0.1 on the [0, 1] scale (0.2 in [-1, 1]) is 20 dB.
    shifted = (x * 0.8) + 0.0  # keep inside [-1, 1] before the offset
    assert torch.allclose(psnr(shifted, shifted + 0.2), torch.full((2,), 20.0), atol=1e-4)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    s_noisy = ssim(x, noisy)
    assert (s_noisy < 0.9).all() and torch.allclose(s_noisy, ssim(noisy, x), atol=1e-6)
    assert (ssim(x, (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)) > s_noisy).all()


def _render_sphere(camera: Camera, size: int, texture_shift: float = 0.0):
    """A textured unit-radius sphere at the origin, ray-traced: image in [-1, 1] and ray depth."""
    origins, directions = sample_rays(camera.cam2world, camera.intrinsics, size)
    b = (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - 0.5**2
    disc = b * b - c
    hit = disc > 0
    t = torch.where(hit, -b - disc.clamp_min(0).sqrt(), torch.full_like(b, 10.0))
    p = origins + directions * t[..., None]
    q = p + texture_shift
    colour = torch.stack(
        [torch.sin(9 * q[..., 0]), torch.cos(7 * q[..., 1]), torch.sin(5 * q[..., 2] + q[..., 0])],
        -1,
    )
    colour = torch.where(hit[..., None], colour * 0.9, torch.full_like(colour, -1.0))
    n = camera.cam2world.shape[0]
    image = colour.permute(0, 2, 1).reshape(n, 3, size, size)
    return image, t.reshape(n, 1, size, size)


def test_reprojection_is_near_zero_for_consistent_views_and_not_otherwise():
    a = Camera.orbit(0.0, 0.0, 2.7, (0, 0, 0), 4.0)
    b = Camera.orbit(15.0, 5.0, 2.7, (0, 0, 0), 4.0)
    img_a, depth_a = _render_sphere(a, 96)
    img_b, depth_b = _render_sphere(b, 96)
    consistent = reprojection_error(img_a, depth_a, a, img_b, depth_b, b)
    assert consistent.error.item() < 0.01
    assert 0.2 < consistent.valid_fraction.item() <= 1.0
    # B with its texture slid over the surface: the same geometry, different content.
    drifted_b, _ = _render_sphere(b, 96, texture_shift=0.15)
    drifted = reprojection_error(img_a, depth_a, a, drifted_b, depth_b, b)
    assert drifted.error.item() > 5 * consistent.error.item() and drifted.error.item() > 0.05
    # Depth at half resolution (like the teacher's) still works: it is upsampled.
    half = torch.nn.functional.avg_pool2d(depth_a, 2)
    coarse = reprojection_error(img_a, half, a, img_b, depth_b, b)
    assert coarse.error.item() < 0.03


def test_reprojection_with_no_overlap_is_nan():
    a = Camera.orbit(0.0, 0.0, 2.7, (0, 0, 0), 4.0)
    img, depth = _render_sphere(a, 32)
    away = Camera.orbit(180.0, 0.0, 2.7, (0, 0, 0), 4.0)
    img_b, depth_b = _render_sphere(away, 32)
    result = reprojection_error(img, depth, a, img_b, depth_b, away)
    # What A sees of the sphere is hidden from the opposite camera, and A's background lies
    # behind that camera: nothing to compare, so the error is undefined rather than 0.
    assert result.valid_fraction.item() == 0.0
    assert math.isnan(result.error.item())
