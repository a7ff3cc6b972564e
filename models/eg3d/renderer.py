"""Volume rendering of tri-plane features: rays, plane sampling, decoder, importance sampling.

Mirrors ``training/volumetric_rendering/`` and ``OSGDecoder`` of NVlabs/eg3d with the same
operation order (so CPU results match upstream bit for bit), with two deliberate differences,
both invisible at batch size 1:
- the composite depth is clamped to each sample's own depth range, not the whole batch's, so a
  render does not depend on the other requests it is batched with;
- random draws take an optional generator (see ``models/rng.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..rng import RandomSource, rand
from ..stylegan2 import FullyConnectedLayer
from .config import PLANE_AXES, RenderingConfig


def sample_rays(
    cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ray per pixel centre, row-major: origins and unit directions, each [N, R*R, 3].

    OpenCV camera (x right, y down, z forward) with normalised intrinsics: pixel (i, j) sits at
    u = (j + 0.5) / R, v = (i + 0.5) / R.
    """
    n = cam2world.shape[0]
    device = cam2world.device
    origins = cam2world[:, :3, 3]
    fx = intrinsics[:, 0, 0].unsqueeze(-1)
    fy = intrinsics[:, 1, 1].unsqueeze(-1)
    cx = intrinsics[:, 0, 2].unsqueeze(-1)
    cy = intrinsics[:, 1, 2].unsqueeze(-1)
    skew = intrinsics[:, 0, 1].unsqueeze(-1)

    steps = torch.arange(resolution, dtype=torch.float32, device=device) * (1.0 / resolution) + (
        0.5 / resolution
    )
    v, u = torch.meshgrid(steps, steps, indexing="ij")  # v: row, u: column
    u = u.reshape(1, -1).expand(n, -1)
    v = v.reshape(1, -1).expand(n, -1)
    z = torch.ones_like(u)

    x_cam = (u - cx + cy * skew / fy - skew * v / fy) / fx * z
    y_cam = (v - cy) / fy * z
    points_cam = torch.stack((x_cam, y_cam, z, torch.ones_like(z)), dim=-1)  # [N, M, 4]
    # Homogeneous product with the full matrix, then subtract the origin: the same rounding as
    # upstream (R @ [x, y, 1] alone differs in the last bit and flips a few uint8 pixels).
    points_world = torch.bmm(cam2world, points_cam.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]
    directions = F.normalize(points_world - origins[:, None, :], dim=2)
    return origins.unsqueeze(1).expand(-1, directions.shape[1], -1), directions


def sample_from_planes(
    planes: torch.Tensor, coordinates: torch.Tensor, box_warp: float, plane_order: str
) -> torch.Tensor:
    """Bilinear features of points from the three planes: [N, 3, C, H, W] x [N, M, 3] -> [N, 3, M, C].

    The box of side ``box_warp`` maps to the planes' [-1, 1] range; points outside read zeros.
    """
    n, n_planes, c, h, w = planes.shape
    m = coordinates.shape[1]
    coordinates = (2 / box_warp) * coordinates
    # Each plane reads two world axes, in the order the checkpoint was trained with.
    uv = torch.stack([coordinates[..., list(axes)] for axes in PLANE_AXES[plane_order]], dim=1)
    grid = uv.reshape(n * n_planes, 1, m, 2)
    features = F.grid_sample(
        planes.reshape(n * n_planes, c, h, w),
        grid.float(),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # [N*3, C, 1, M]
    return features.permute(0, 3, 2, 1).reshape(n, n_planes, m, c)


class TriPlaneDecoder(nn.Module):
    """EG3D's OSGDecoder: mean of the plane features -> MLP -> density and 32 feature channels.

    Keeps upstream's ``net.0`` / ``net.2`` parameter names (a Sequential with Softplus between).
    """

    def __init__(
        self, in_features: int, hidden: int, out_features: int, lr_mul: float = 1.0
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            FullyConnectedLayer(in_features, hidden, lr_multiplier=lr_mul),
            nn.Softplus(),
            FullyConnectedLayer(hidden, 1 + out_features, lr_multiplier=lr_mul),
        )

    def forward(self, sampled_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, M, C] -> (features [N, M, out] in (-0.001, 1.001), raw density [N, M, 1])."""
        x = sampled_features.mean(1)
        n, m, c = x.shape
        x = self.net(x.reshape(n * m, c)).reshape(n, m, -1)
        rgb = torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001  # MipNeRF's widened sigmoid
        sigma = x[..., 0:1]
        return rgb, sigma


def ray_box_bounds(
    origins: torch.Tensor, directions: torch.Tensor, box_side: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances of rays through the axis-aligned cube of side ``box_side``.

    Rays that miss get start > end. Each is [N, M, 1].
    """
    half = box_side / 2
    inv = 1.0 / directions
    t0 = (-half - origins) * inv
    t1 = (half - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1, keepdim=True)
    t_far = torch.maximum(t0, t1).amin(dim=-1, keepdim=True)
    return t_near, t_far


def stratified_depths(
    n: int,
    m: int,
    ray_start: float | torch.Tensor,
    ray_end: float | torch.Tensor,
    depth_resolution: int,
    rng: RandomSource,
    device: torch.device,
) -> torch.Tensor:
    """Evenly spaced depths per ray, each jittered forward by up to one step: [N, M, D, 1].

    EG3D jitters at inference too; the last sample may pass ``ray_end``.
    """
    if isinstance(ray_start, torch.Tensor):
        assert isinstance(ray_end, torch.Tensor)
        steps = torch.arange(depth_resolution, dtype=torch.float32, device=device) / (
            depth_resolution - 1
        )
        steps = steps.reshape(1, 1, -1, 1)
        depths = ray_start.unsqueeze(2) + steps * (ray_end - ray_start).unsqueeze(2)
        delta = ((ray_end - ray_start) / (depth_resolution - 1)).unsqueeze(2)
    else:
        assert not isinstance(ray_end, torch.Tensor)
        depths = torch.linspace(ray_start, ray_end, depth_resolution, device=device)
        depths = depths.reshape(1, 1, depth_resolution, 1).repeat(n, m, 1, 1)
        delta = (ray_end - ray_start) / (depth_resolution - 1)
    return depths + rand(depths.shape, rng, device=device) * delta


def march_rays(
    colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor, white_back: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Alpha-composite sorted samples (MipRayMarcher2): features, depth, weights per ray.

    Inputs [N, M, D, C], [N, M, D, 1], [N, M, D, 1]. Quantities are averaged between
    neighbouring samples; density goes through softplus(sigma - 1). Returns features scaled to
    [-1, 1] (all channels) [N, M, C], the expected ray distance [N, M, 1] and the weights
    [N, M, D-1, 1].
    """
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2

    densities_mid = F.softplus(densities_mid - 1)  # the -1 bias makes initial densities small
    alpha = 1 - torch.exp(-(densities_mid * deltas))
    transmittance = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
    weights = alpha * torch.cumprod(transmittance, -2)[:, :, :-1]

    composite_rgb = torch.sum(weights * colors_mid, -2)
    weight_total = weights.sum(2)
    # Upstream divides by weight_total as is: an empty ray gives NaN, turned into +inf and then
    # clamped to the far bound. Same values here, but the division only sees non-negligible
    # totals, so the backward pass (training with a depth loss) never meets 0/0 or x/denormal.
    occupied = weight_total > 1e-20
    safe_total = torch.where(occupied, weight_total, torch.ones_like(weight_total))
    composite_depth = torch.sum(weights * depths_mid, -2) / safe_total
    composite_depth = torch.where(occupied, composite_depth, float("inf"))
    composite_depth = torch.nan_to_num(composite_depth, float("inf"))
    # Per-sample bounds (upstream uses the whole batch's; identical at batch size 1).
    lo = depths.flatten(1).amin(dim=1).reshape(-1, 1, 1)
    hi = depths.flatten(1).amax(dim=1).reshape(-1, 1, 1)
    composite_depth = torch.minimum(torch.maximum(composite_depth, lo), hi)

    if white_back:
        composite_rgb = composite_rgb + 1 - weight_total
    return composite_rgb * 2 - 1, composite_depth, weights


def sample_pdf(
    bins: torch.Tensor, weights: torch.Tensor, n_samples: int, rng: RandomSource, eps: float = 1e-5
) -> torch.Tensor:
    """Inverse-transform sampling of ``n_samples`` depths per ray from piecewise-constant weights.

    ``bins`` [R, B+1] are bin edges, ``weights`` [R, B]; NeRF's ``sample_pdf`` with random u.
    With per-sample generators, R must be batch x rays (rows grouped by sample).
    """
    n_rays, n_bins = weights.shape
    weights = weights + eps
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cumsum(pdf, -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)  # [R, B+1]
    if rng is None or isinstance(rng, torch.Generator):
        u = rand([n_rays, n_samples], rng, device=bins.device)
    else:
        u = rand([len(rng), n_rays // len(rng), n_samples], rng, device=bins.device)
        u = u.reshape(n_rays, n_samples)
    u = u.contiguous()
    inds = torch.searchsorted(cdf, u, right=True)
    below = torch.clamp_min(inds - 1, 0)
    above = torch.clamp_max(inds, n_bins)
    inds_sampled = torch.stack([below, above], -1).view(n_rays, 2 * n_samples)
    cdf_g = torch.gather(cdf, 1, inds_sampled).view(n_rays, n_samples, 2)
    bins_g = torch.gather(bins, 1, inds_sampled).view(n_rays, n_samples, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    # A zero-width bin has zero weight and is never sampled; any denominator will do.
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


def importance_depths(
    depths: torch.Tensor, weights: torch.Tensor, n_importance: int, rng: RandomSource
) -> torch.Tensor:
    """Depths drawn where the coarse pass found density: [N, M, D, 1] -> [N, M, n_importance, 1]."""
    n, m, d, _ = depths.shape
    z = depths.reshape(n * m, d)
    w = weights.reshape(n * m, -1)
    # Smooth the weights (max then mean over neighbours) and give every bin a floor.
    w = F.max_pool1d(w.unsqueeze(1).float(), 2, 1, padding=1)
    w = F.avg_pool1d(w, 2, 1).squeeze(1)
    w = w + 0.01
    z_mid = 0.5 * (z[:, :-1] + z[:, 1:])
    samples = sample_pdf(z_mid, w[:, 1:-1], n_importance, rng)
    return samples.detach().reshape(n, m, n_importance, 1)


class ImportanceRenderer(nn.Module):
    """Coarse stratified pass, importance pass, then compositing over all samples sorted by depth."""

    def __init__(self, plane_order: str = "original") -> None:
        super().__init__()
        if plane_order not in PLANE_AXES:
            raise ValueError(f"plane_order must be one of {tuple(PLANE_AXES)}, got {plane_order!r}")
        self.plane_order = plane_order

    def _query(
        self,
        planes: torch.Tensor,
        decoder: TriPlaneDecoder,
        origins: torch.Tensor,
        directions: torch.Tensor,
        depths: torch.Tensor,
        box_warp: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, m, d, _ = depths.shape
        points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(n, -1, 3)
        features = sample_from_planes(planes, points, box_warp, self.plane_order)
        rgb, sigma = decoder(features)
        return rgb.reshape(n, m, d, rgb.shape[-1]), sigma.reshape(n, m, d, 1)

    def forward(
        self,
        planes: torch.Tensor,
        decoder: TriPlaneDecoder,
        origins: torch.Tensor,
        directions: torch.Tensor,
        options: RenderingConfig,
        depth_resolution: int | None = None,
        depth_resolution_importance: int | None = None,
        rng: RandomSource = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render rays through ``planes`` [N, 3, C, H, W]: features [N, M, C], depth [N, M, 1],
        total weight [N, M, 1]."""
        n_coarse = depth_resolution or options.depth_resolution
        n_fine = (
            options.depth_resolution_importance
            if depth_resolution_importance is None
            else depth_resolution_importance
        )
        n, m, _ = origins.shape
        if options.ray_start is None:
            start, end = ray_box_bounds(origins, directions, options.box_warp)
            start, end = _fill_missed_rays(start, end)
            depths = stratified_depths(n, m, start, end, n_coarse, rng, origins.device)
        else:
            assert options.ray_end is not None
            depths = stratified_depths(
                n, m, options.ray_start, options.ray_end, n_coarse, rng, origins.device
            )
        colors, densities = self._query(
            planes, decoder, origins, directions, depths, options.box_warp
        )

        if n_fine > 0:
            _, _, weights = march_rays(colors, densities, depths, options.white_back)
            depths_fine = importance_depths(depths, weights, n_fine, rng)
            colors_fine, densities_fine = self._query(
                planes, decoder, origins, directions, depths_fine, options.box_warp
            )
            depths = torch.cat([depths, depths_fine], dim=-2)
            colors = torch.cat([colors, colors_fine], dim=-2)
            densities = torch.cat([densities, densities_fine], dim=-2)
            _, order = torch.sort(depths, dim=-2)
            depths = torch.gather(depths, -2, order)
            colors = torch.gather(colors, -2, order.expand(-1, -1, -1, colors.shape[-1]))
            densities = torch.gather(densities, -2, order)

        rgb, depth, weights = march_rays(colors, densities, depths, options.white_back)
        return rgb, depth, weights.sum(2)


def _fill_missed_rays(start: torch.Tensor, end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Give rays that miss the box the bounds of the rays that hit it, per sample.

    Upstream uses the whole batch's valid rays and sets the end to the largest *start* (kept for
    parity: such rays see empty space either way).
    """
    valid = end > start
    big = torch.finfo(start.dtype).max
    valid_min = torch.where(valid, start, torch.full_like(start, big)).flatten(1).amin(1)
    valid_max = torch.where(valid, start, torch.full_like(start, -big)).flatten(1).amax(1)
    any_valid = valid.flatten(1).any(1).reshape(-1, 1, 1)
    fill_start = torch.where(any_valid, valid_min.reshape(-1, 1, 1), start)
    fill_end = torch.where(any_valid, valid_max.reshape(-1, 1, 1), end)
    return torch.where(valid, start, fill_start), torch.where(valid, end, fill_end)
