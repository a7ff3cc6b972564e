"""The demo world: procedural head-like figures built from ellipsoids, ray-traced with exact depth.

Every scene is a function of a latent ``z`` ~ N(0, I) of ``SCENE_DIM`` numbers, so a generator
trained to reproduce ``render(scene(z), camera)`` turns *any* z into a valid scene, and a seed
fixes everything. The latent is first normalised to unit second moment (what EG3D's mapping
network does to its input, so the teacher sees exactly the information the scene depends on),
then each coordinate goes through the normal CDF to a uniform number in (0, 1) that sets one
attribute: head proportions, skin colour, eyes, nose, mouth, ears, headwear (hair, hat or none)
and its colour, eyebrows, neck.

Conventions are the teacher's (``models/camera.py``): world y up, faces look towards +z, the
head sits in the [-0.5, 0.5]^3 box the tri-planes span, cameras orbit the origin. Rays are
intersected analytically with each ellipsoid (a unit sphere after an affine change of
coordinates); the nearest hit gives depth (distance along the unit ray, as the teacher's
``image_depth``), the surface normal and the colour. Shading is Lambertian under a light fixed in
the world, so a surface point has the same colour from every view: the scenes are 3D-consistent
by construction. The background is black, as the teacher composites onto black.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...models.camera import Camera
from ...models.eg3d.presets import DEMO_CAMERA_RADIUS, DEMO_FOCAL, DEMO_Z_DIM
from ...models.eg3d.renderer import sample_rays
from ...models.errors import ConfigError

SCENE_DIM = DEMO_Z_DIM  # latent size: one number per attribute
CAMERA_RADIUS = DEMO_CAMERA_RADIUS
CAMERA_PIVOT = (0.0, 0.0, 0.0)
CAMERA_FOCAL = DEMO_FOCAL
LIGHT = (0.45, 0.6, 0.75)  # direction towards the light, world space (upper right, in front)
AMBIENT = 0.35

SKIN = ((0.96, 0.80, 0.69), (0.86, 0.64, 0.46), (0.55, 0.37, 0.24), (0.36, 0.23, 0.15),
        (0.45, 0.72, 0.45), (0.50, 0.62, 0.92))  # fmt: skip
HAIR = ((0.08, 0.06, 0.05), (0.35, 0.20, 0.10), (0.90, 0.78, 0.45), (0.75, 0.30, 0.10),
        (0.70, 0.70, 0.72))  # fmt: skip
HAT = ((0.80, 0.12, 0.12), (0.15, 0.30, 0.80), (0.15, 0.60, 0.25), (0.95, 0.80, 0.15),
       (0.55, 0.20, 0.65))  # fmt: skip
IRIS = ((0.08, 0.08, 0.08), (0.15, 0.35, 0.75), (0.15, 0.50, 0.20), (0.40, 0.22, 0.08))
SCLERA = (0.97, 0.97, 0.95)
LIPS = (0.60, 0.15, 0.18)

# Which primitive is which (rows of Primitives); "headwear" parts are switched on per scene.
PARTS = ("skull", "neck", "eye_l", "eye_r", "pupil_l", "pupil_r", "nose", "mouth", "ear_l",
         "ear_r", "hair", "hat_crown", "hat_brim", "brow_l", "brow_r")  # fmt: skip
# The facial features: what a teacher must draw for a face to read as one.
FEATURE_PARTS = ("eye_l", "eye_r", "pupil_l", "pupil_r", "nose", "mouth", "brow_l", "brow_r")


@dataclass(frozen=True)
class Primitives:
    """A batch of scenes, each ``K`` ellipsoids: world point p is inside ellipsoid k when
    |inverse[k] (p - centre[k])| < 1."""

    centre: torch.Tensor  # [N, K, 3]
    inverse: torch.Tensor  # [N, K, 3, 3] world -> unit-sphere coordinates: diag(1/radii) R^T
    colour: torch.Tensor  # [N, K, 3] albedo in [0, 1]
    band_colour: torch.Tensor  # [N, K, 3] albedo between band_y[0] and band_y[1] (hat band)
    band_y: torch.Tensor  # [N, K, 2]
    active: torch.Tensor  # [N, K] bool

    def __len__(self) -> int:
        return self.centre.shape[0]


@dataclass(frozen=True)
class SceneRender:
    image: torch.Tensor  # [N, 3, R, R] in [-1, 1], black background
    depth: torch.Tensor  # [N, 1, R, R] distance along the pixel-centre ray; inf where it misses
    mask: torch.Tensor  # [N, 1, R, R] fraction of the pixel covered by the figure
    part: torch.Tensor  # [N, 1, R, R] index into PARTS hit by the pixel-centre ray; -1 on a miss


def sample_z(seed: int, n: int) -> torch.Tensor:
    """The scene latents of a seed: [n, SCENE_DIM], the same on every machine."""
    return torch.randn(n, SCENE_DIM, generator=torch.Generator().manual_seed(seed))


def attributes(z: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in (0, 1), one per attribute, from latents [N, SCENE_DIM]."""
    if z.ndim != 2 or z.shape[1] != SCENE_DIM:
        raise ValueError(f"scene latents must be [N, {SCENE_DIM}], got {list(z.shape)}")
    z = z.to(torch.float32)
    z = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()  # EG3D's normalize_2nd_moment
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def headwear_of(u: torch.Tensor) -> list[str]:
    """'hair', 'hat' or 'none' for each scene's attributes [N, SCENE_DIM]."""
    return ["hair" if v < 0.45 else "hat" if v < 0.8 else "none" for v in u[:, 14].tolist()]


def _palette(colours: tuple[tuple[float, float, float], ...], t: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear walk through ``colours`` for t in [0, 1]: [N] -> [N, 3]."""
    table = torch.tensor(colours, dtype=torch.float32)
    x = t.clamp(0, 1) * (len(colours) - 1)
    lo = x.floor().long().clamp(max=len(colours) - 2)
    frac = (x - lo).unsqueeze(-1)
    return table[lo] * (1 - frac) + table[lo + 1] * frac


def _rotation_z(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], dim=-1).view(-1, 3, 3)


def _on_surface(x: torch.Tensor, y: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """z of the skull's front surface above (x, y), relative to the skull centre."""
    inside = 1 - (x / radii[:, 0]).square() - (y / radii[:, 1]).square()
    return radii[:, 2] * inside.clamp(min=0.02).sqrt()


def build_scenes(z: torch.Tensor) -> Primitives:
    """The ellipsoids of each latent's figure."""
    u = attributes(z)
    n = len(u)
    one = torch.ones(n)
    skull_c = torch.stack([0 * one, 0.05 * one, 0 * one], dim=-1)
    skull_r = torch.stack([0.24 + 0.08 * u[:, 0], 0.30 + 0.07 * u[:, 1], 0.26 + 0.08 * u[:, 2]], -1)
    skin = _palette(SKIN, u[:, 3]) * (0.85 + 0.3 * u[:, 4]).unsqueeze(-1)
    skin = skin.clamp(0, 1)
    headwear = u[:, 14]
    hair_colour = _palette(HAIR, u[:, 15]) * (0.8 + 0.4 * u[:, 16]).unsqueeze(-1)
    hat_colour = _palette(HAT, u[:, 15]) * (0.8 + 0.4 * u[:, 16]).unsqueeze(-1)

    parts: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # centre, radii, colour
    parts["skull"] = (skull_c, skull_r, skin)
    neck_w = 0.10 + 0.04 * u[:, 18]
    parts["neck"] = (
        torch.stack([0 * one, -0.33 * one, -0.03 * one], -1),
        torch.stack([neck_w, 0.15 * one, neck_w], -1),
        skin * 0.9,
    )
    ex, ey, er = 0.075 + 0.05 * u[:, 5], 0.0 + 0.08 * u[:, 6], 0.035 + 0.025 * u[:, 7]
    iris = _palette(IRIS, u[:, 8])
    brow_size = 0.012 + 0.012 * u[:, 19]
    for side, sign in (("l", -1.0), ("r", 1.0)):
        x = sign * ex
        zs = _on_surface(x, ey, skull_r) - 0.45 * er
        eye_c = torch.stack([x, skull_c[:, 1] + ey, zs], -1)
        parts[f"eye_{side}"] = (eye_c, er.unsqueeze(-1).expand(-1, 3), _const(SCLERA, n))
        outward = F.normalize(
            torch.stack(
                [x / skull_r[:, 0] ** 2, ey / skull_r[:, 1] ** 2, zs / skull_r[:, 2] ** 2], -1
            ),
            dim=-1,
        )
        pupil_r = (0.55 * er).unsqueeze(-1).expand(-1, 3)
        parts[f"pupil_{side}"] = (eye_c + outward * (0.62 * er).unsqueeze(-1), pupil_r, iris)
        by = ey + er + 0.03
        brow_c = torch.stack([x, skull_c[:, 1] + by, _on_surface(x, by, skull_r) - 0.005], -1)
        brow_r = torch.stack([er * 1.3, brow_size, 0.02 * one], -1)
        parts[f"brow_{side}"] = (brow_c, brow_r, hair_colour * 0.8)
    nose_len, nose_size = 0.05 + 0.06 * u[:, 9], 0.028 + 0.022 * u[:, 10]
    ny = -0.07 * one
    parts["nose"] = (
        torch.stack([0 * one, skull_c[:, 1] + ny, _on_surface(0 * one, ny, skull_r)], -1),
        torch.stack([nose_size, nose_size * 1.5, nose_len], -1),
        skin * 0.93,
    )
    my = -0.17 * one
    parts["mouth"] = (
        torch.stack([0 * one, skull_c[:, 1] + my, _on_surface(0 * one, my, skull_r) - 0.012], -1),
        torch.stack([0.045 + 0.06 * u[:, 11], 0.018 * one, 0.03 * one], -1),
        _const(LIPS, n),
    )
    ear_size = 0.05 + 0.07 * u[:, 12]
    ear_angle = torch.deg2rad((u[:, 13] - 0.3) * 50)
    ear_rot = {}
    for side, sign in (("l", -1.0), ("r", 1.0)):
        parts[f"ear_{side}"] = (
            torch.stack([sign * (skull_r[:, 0] - 0.01), 0.02 * one, -0.02 * one], -1),
            torch.stack([0.025 * one, ear_size, ear_size * 0.6], -1),
            skin * 0.95,
        )
        ear_rot[f"ear_{side}"] = _rotation_z(-sign * ear_angle)
    volume = 1.05 + 0.08 * u[:, 17]
    parts["hair"] = (
        skull_c + torch.stack([0 * one, 0.05 * one, -0.08 - 0.03 * u[:, 17]], -1),
        skull_r * volume.unsqueeze(-1),
        hair_colour,
    )
    top = skull_c[:, 1] + 0.72 * skull_r[:, 1]
    crown_h = 0.08 + 0.06 * u[:, 17]
    parts["hat_crown"] = (
        torch.stack([0 * one, top + 0.4 * crown_h, -0.02 * one], -1),
        torch.stack([skull_r[:, 0] * 0.98, crown_h, skull_r[:, 2] * 0.98], -1),
        hat_colour,
    )
    parts["hat_brim"] = (
        torch.stack([0 * one, top, -0.02 * one], -1),
        torch.stack([skull_r[:, 0] * 1.5, 0.014 * one, skull_r[:, 2] * 1.5], -1),
        hat_colour * 0.85,
    )

    centre = torch.stack([parts[p][0] for p in PARTS], dim=1)
    radii = torch.stack([parts[p][1] for p in PARTS], dim=1)
    colour = torch.stack([parts[p][2] for p in PARTS], dim=1).clamp(0, 1)
    rotation = torch.eye(3).expand(n, len(PARTS), 3, 3).clone()
    for name, rot in ear_rot.items():
        rotation[:, PARTS.index(name)] = rot
    inverse = torch.diag_embed(1 / radii) @ rotation.transpose(-1, -2)
    active = torch.ones(n, len(PARTS), dtype=torch.bool)
    active[:, PARTS.index("hair")] = headwear < 0.45
    for name in ("hat_crown", "hat_brim"):
        active[:, PARTS.index(name)] = (headwear >= 0.45) & (headwear < 0.8)
    band_colour = colour.clone()
    band_y = torch.full((n, len(PARTS), 2), 10.0)  # empty band
    k = PARTS.index("hat_crown")
    band_colour[:, k] = (1 - hat_colour) * 0.8 + 0.1  # a contrasting band above the brim
    band_y[:, k, 0] = top
    band_y[:, k, 1] = top + 0.35 * crown_h
    return Primitives(centre, inverse, colour, band_colour, band_y, active)


def _const(colour: tuple[float, float, float], n: int) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.float32).expand(n, 3)


def _nearest_hits(
    scenes: Primitives, i: int, o: torch.Tensor, d: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scene ``i``'s nearest ellipsoid along rays o + t d [M, 3]: distance [M] (inf on a miss),
    the ellipsoid's index [M], and the rays in every ellipsoid's unit-sphere frame [M, K, 3].

    The change of frame x -> inv_k (x - c_k) of all K ellipsoids is one [M, 3] x [3, 3K] matrix
    product (a batched einsum of 3x3 matrices was most of the ground truth's render time).
    """
    inv, c = scenes.inverse[i], scenes.centre[i]  # [K, 3, 3], [K, 3]
    k_count = len(c)
    frames = inv.permute(2, 0, 1).reshape(3, 3 * k_count)  # x @ frames = (inv_k x)_k
    shift = (inv @ c.unsqueeze(-1)).reshape(1, 3 * k_count)  # inv_k c_k
    o_local = (o @ frames - shift).view(-1, k_count, 3)
    d_local = (d @ frames).view(-1, k_count, 3)
    a = d_local.square().sum(-1)
    b = 2 * (o_local * d_local).sum(-1)
    q = o_local.square().sum(-1) - 1
    disc = b.square() - 4 * a * q
    t = (-b - disc.clamp(min=0).sqrt()) / (2 * a)
    hit = (disc > 0) & (t > 0) & scenes.active[i][None]
    t = torch.where(hit, t, torch.full_like(t, math.inf))
    depth, k = t.min(dim=1)  # [M]
    return depth, k, o_local, d_local


def trace(
    scenes: Primitives, origins: torch.Tensor, directions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shade rays [N, M, 3] (unit directions): colour [N, M, 3] in [0, 1] (black on a miss) and
    hit distance [N, M] (inf on a miss)."""
    colours, depths = [], []
    light = F.normalize(torch.tensor(LIGHT), dim=0)
    for i in range(len(scenes)):  # one scene at a time bounds memory to M x K
        o, d = origins[i], directions[i]  # [M, 3]
        depth, k, o_local, d_local = _nearest_hits(scenes, i, o, d)
        missed = torch.isinf(depth)
        idx = torch.arange(len(k))
        p_local = o_local[idx, k] + depth.clamp(max=1e3)[:, None] * d_local[idx, k]
        # The ellipsoid's normal: the unit sphere's, pulled back through the affine map.
        normal = F.normalize(torch.einsum("mji,mj->mi", scenes.inverse[i][k], p_local), dim=-1)
        point = o + depth.clamp(max=1e3)[:, None] * d
        band = scenes.band_y[i][k]
        in_band = (point[:, 1] > band[:, 0]) & (point[:, 1] < band[:, 1])
        albedo = torch.where(in_band[:, None], scenes.band_colour[i][k], scenes.colour[i][k])
        shade = AMBIENT + (1 - AMBIENT) * (normal @ light).clamp(min=0)
        colour = torch.where(missed[:, None], 0.0, albedo * shade[:, None])
        colours.append(colour)
        depths.append(depth)
    return torch.stack(colours), torch.stack(depths)


def _depth_and_parts(
    scenes: Primitives, origins: torch.Tensor, directions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hit distance [N, M] (inf on a miss) and index into ``PARTS`` of the primitive hit first
    [N, M] (-1 on a miss) of rays [N, M, 3], without shading them."""
    depths, parts = [], []
    for i in range(len(scenes)):
        depth, k, _, _ = _nearest_hits(scenes, i, origins[i], directions[i])
        depths.append(depth)
        parts.append(torch.where(torch.isinf(depth), -1, k))
    return torch.stack(depths), torch.stack(parts)


def hit_parts(scenes: Primitives, origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Index into ``PARTS`` of the primitive each ray [N, M, 3] hits first: [N, M], -1 on a miss."""
    return _depth_and_parts(scenes, origins, directions)[1]


def feature_mask(part: torch.Tensor) -> torch.Tensor:
    """Where a part map (``SceneRender.part``) shows a facial feature (``FEATURE_PARTS``)."""
    ids = torch.tensor([PARTS.index(p) for p in FEATURE_PARTS])
    return torch.isin(part, ids)


def render_scenes(
    scenes: Primitives, camera: Camera, resolution: int, supersample: int = 2
) -> SceneRender:
    """Images with ``supersample``^2 rays per pixel (box-filtered), exact pixel-centre depth."""
    if len(camera) != len(scenes):
        raise ValueError(f"{len(scenes)} scenes but {len(camera)} cameras")
    n, r = len(scenes), resolution
    origins, directions = sample_rays(camera.cam2world, camera.intrinsics, r * supersample)
    colour, depth = trace(scenes, origins, directions)
    image = colour.permute(0, 2, 1).reshape(n, 3, r * supersample, r * supersample)
    covered = (~torch.isinf(depth)).float().reshape(n, 1, r * supersample, r * supersample)
    if supersample > 1:
        image = F.avg_pool2d(image, supersample)
        covered = F.avg_pool2d(covered, supersample)
        origins, directions = sample_rays(camera.cam2world, camera.intrinsics, r)
    depth, part = _depth_and_parts(scenes, origins, directions)  # at pixel centres
    part = part.reshape(n, 1, r, r)
    return SceneRender(image * 2 - 1, depth.reshape(n, 1, r, r), covered, part)


def check_focal(focal: float) -> float:
    """``focal`` if it is a usable normalised focal length (fx / width) for the demo world's
    framing (the demo teacher's 2.4, demo-face's 3.2), else a ConfigError naming the range."""
    if not math.isfinite(focal) or not 0.5 <= focal <= 20:
        raise ConfigError(f"focal must be a normalised focal length in [0.5, 20], got {focal}")
    return focal


def scene_camera(
    yaw_deg: list[float], pitch_deg: list[float], focal: float = CAMERA_FOCAL
) -> Camera:
    """Orbit cameras of the demo world (its radius and pivot); ``focal`` sets the framing and is
    the model's own (``EG3DConfig.rendering.focal_length``) when one is measured."""
    return Camera.orbit(yaw_deg, pitch_deg, CAMERA_RADIUS, CAMERA_PIVOT, focal)
