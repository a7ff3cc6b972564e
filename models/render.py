"""Render a latent from a yaw/pitch: the few lines every caller (CLI, service, tests) needs.

w = G.mapping(z, frontal_c)          # the identity, fixed by the frontal camera
c = Camera.orbit(yaw, pitch).label   # the view
out = G.synthesis(w, c)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .camera import Camera, CameraConvention
from .editing import truncate
from .eg3d.generator import TriPlaneGenerator
from .rng import RandomSource
from .student import Student
from .stylegan2 import NoiseMode

# Both render the same way: ``mapping(z, frontal c)`` then ``synthesis(ws, c)``.
Generator = TriPlaneGenerator | Student


@dataclass(frozen=True)
class RenderOptions:
    """Per-render settings; None means the model's own value."""

    truncation_psi: float = 1.0  # 1 = no truncation; smaller values pull w towards the average
    truncation_cutoff: int | None = None  # truncate only the first N ws (None = all)
    noise_mode: NoiseMode = "const"  # backbone noise: the checkpoint's fixed maps by default
    neural_rendering_resolution: int | None = None
    depth_resolution: int | None = None
    depth_resolution_importance: int | None = None
    # The three above apply to the volumetric teacher only; a student ignores them.


def w_avg_of(generator: Generator) -> torch.Tensor:
    """The average w that truncation pulls towards (the teacher's, also inside a student)."""
    return generator.w_avg


def frontal_camera(generator: Generator, batch_size: int = 1) -> Camera:
    """The camera EG3D conditions the mapping with: frontal, at the model's radius and pivot."""
    return CameraConvention.of_rendering(generator.config.rendering).frontal(batch_size)


def orbit_camera(
    generator: Generator,
    yaw_deg: float | list[float] | torch.Tensor,
    pitch_deg: float | list[float] | torch.Tensor,
) -> Camera:
    """A camera at yaw/pitch degrees around the model's pivot, at its radius and focal length
    (differentiable in tensor angles, which inversion optimises)."""
    return CameraConvention.of_rendering(generator.config.rendering).orbit(yaw_deg, pitch_deg)


@torch.no_grad()
def render(
    generator: Generator,
    z: torch.Tensor,
    camera: Camera,
    options: RenderOptions | None = None,
    rng: RandomSource = None,
) -> dict[str, torch.Tensor]:
    """Map ``z`` [N, z_dim] with the frontal camera and render it from ``camera`` (N views)."""
    options = options or RenderOptions()
    device = next(generator.parameters()).device
    z = z.to(device)
    c_cond = frontal_camera(generator, z.shape[0]).to_label().to(device)
    ws = generator.mapping(z, c_cond, options.truncation_psi, options.truncation_cutoff)
    return render_ws(generator, ws, camera, replace(options, truncation_psi=1.0), rng)


def check_ws(generator: Generator, ws: torch.Tensor) -> torch.Tensor:
    """ws [N, num_ws, w_dim] (a single w [N, w_dim] is broadcast), or a ValueError saying why
    these latents do not belong to this model."""
    if ws.ndim == 2:
        ws = ws.unsqueeze(1).expand(-1, generator.num_ws, -1)
    expected = (generator.num_ws, generator.w_dim)
    if ws.ndim != 3 or tuple(ws.shape[1:]) != expected:
        raise ValueError(
            f"latent has shape {list(ws.shape[1:])}, this model takes [{expected[0]}, "
            f"{expected[1]}] (num_ws, w_dim): it was fitted to another model"
        )
    return ws


def render_ws(
    generator: Generator,
    ws: torch.Tensor,
    camera: Camera,
    options: RenderOptions | None = None,
    rng: RandomSource = None,
) -> dict[str, torch.Tensor]:
    """Render latents already in W (``ws`` [N, num_ws, w_dim] or [N, w_dim]) from ``camera``;
    truncation in ``options`` pulls them towards the average w first."""
    options = options or RenderOptions()
    device = next(generator.parameters()).device
    ws = check_ws(generator, ws.to(device))
    if options.truncation_psi != 1.0:
        ws = truncate(ws, w_avg_of(generator), options.truncation_psi, options.truncation_cutoff)
    return generator.synthesis(
        ws,
        camera.to_label().to(device),
        neural_rendering_resolution=options.neural_rendering_resolution,
        noise_mode=options.noise_mode,
        depth_resolution=options.depth_resolution,
        depth_resolution_importance=options.depth_resolution_importance,
        rng=rng,
    )
