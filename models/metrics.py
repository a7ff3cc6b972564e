"""Image metrics shared by training, export checks and evaluation.

Images are [N, 3, H, W] in [-1, 1] (the networks' range); metrics work on the [0, 1] scale.
- ``psnr``: per image, peak 1.
- ``ssim``: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, the mean
  over valid (unpadded) positions and channels, as in the reference implementation.
- ``reprojection_error``: 3D consistency without any face model. Pixels of view A are lifted to 3D
  with a depth map (distance along each unit ray, as the teacher renders it), projected into view
  B, and A's colour is compared with B's colour there. Pixels that leave B's image, or that B sees
  occluded (B's own depth disagrees), are excluded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .camera import Camera
from .eg3d.renderer import sample_rays


def _unit(x: torch.Tensor) -> torch.Tensor:
    return (x.float().clamp(-1, 1) + 1) / 2


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (clamped), peak 1 on the [0, 1] scale.

    Identical images give 100 dB (MSE floored at 1e-10) rather than infinity.
    """
    mse = (_unit(a) - _unit(b)).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of images in [-1, 1] (clamped), on the [0, 1] scale; 1 = identical."""
    x, y = _unit(a), _unit(b)
    channels = x.shape[1]
    window = _gaussian_window().to(x.device).expand(channels, 1, 11, 11).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return s.flatten(1).mean(1)


@dataclass
class Reprojection:
    error: torch.Tensor  # [N] mean absolute colour difference over valid pixels, [0, 1] scale
    valid_fraction: torch.Tensor  # [N] share of A's pixels that B sees


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def warp_into_view(
    image_b: torch.Tensor,
    depth_a: torch.Tensor,
    camera_a: Camera,
    depth_b: torch.Tensor,
    camera_b: Camera,
    occlusion_tolerance: float = 0.02,
) -> tuple[torch.Tensor, torch.Tensor]:
    """View B's image at the surface points view A sees: ``image_b`` [N, C, H, W] resampled on
    A's pixel grid, and the mask [N, 1, H, W] of A's pixels that B sees.

    Each of A's pixels is lifted to 3D with ``depth_a`` (ray distances [N, 1, h, w], upsampled to
    H; ``inf`` where a ray hits nothing) and projected into B. It counts when it lands inside B
    and its distance from B's camera is within ``occlusion_tolerance`` (relative) of B's depth
    there (B does not see it occluded). Differentiable in ``image_b``: the reprojection metric
    and the student's consistency loss (``training/losses.py``) share it.
    """
    n, _, size, _ = image_b.shape
    device = image_b.device
    depth_a = _resize(depth_a.float(), size).reshape(n, -1, 1)
    depth_b = _resize(depth_b.float(), size)
    origins, directions = sample_rays(
        camera_a.cam2world.to(device), camera_a.intrinsics.to(device), size
    )
    points = origins + directions * depth_a  # [N, H*W, 3]
    cam_b = Camera(camera_b.cam2world.to(device), camera_b.intrinsics.to(device))
    uvz = cam_b.project(points)
    uv = uvz[..., :2]
    grid = (uv * 2 - 1).reshape(n, size, size, 2)
    seen = F.grid_sample(image_b, grid, mode="bilinear", align_corners=False)
    b_depth = F.grid_sample(depth_b, grid, mode="bilinear", align_corners=False).reshape(n, -1)
    distance = (points - cam_b.origin[:, None, :]).norm(dim=-1)
    inside = ((uv > 0) & (uv < 1)).all(-1) & (uvz[..., 2] > 0)
    visible = (distance - b_depth).abs() <= occlusion_tolerance * b_depth
    return seen, (inside & visible).reshape(n, 1, size, size)


def reprojection_error(
    image_a: torch.Tensor,
    depth_a: torch.Tensor,
    camera_a: Camera,
    image_b: torch.Tensor,
    depth_b: torch.Tensor,
    camera_b: Camera,
    occlusion_tolerance: float = 0.02,
) -> Reprojection:
    """How well view B agrees with view A once A is moved into B's camera.

    ``image_*`` [N, 3, H, W] in [-1, 1]; ``depth_*`` [N, 1, h, w] ray distances (upsampled to the
    image size; ``inf`` where a ray hits nothing, as the demo world's ground truth has); the
    pixels compared are ``warp_into_view``'s. A view pair that is consistent by construction
    scores near 0; a student whose views drift apart scores higher than its teacher.
    """
    size = image_a.shape[-1]
    seen, valid = warp_into_view(
        _unit(image_b), depth_a, camera_a, depth_b, camera_b, occlusion_tolerance
    )
    diff = (seen - _unit(image_a)).abs().mean(1, keepdim=True)
    diff = torch.where(valid, diff, 0.0)  # not a product: an infinite depth makes NaN there
    count = valid.flatten(1).sum(1).float()
    error = diff.flatten(1).sum(1) / count.clamp_min(1)
    error = torch.where(count > 0, error, torch.full_like(error, float("nan")))
    return Reprojection(error, count / (size * size))
