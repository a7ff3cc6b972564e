"""The turntable path: one function gives the yaw/pitch of every frame of an orbit, another
draws those frames.

The CLI (``distill3d orbit``), the service's ``/orbit``, evaluation and the demo report all draw
their turntables from :func:`orbit_angles`, so one request gives the same cameras everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .images import batch_to_uint8
from .render import Generator, RenderOptions, orbit_camera, render_ws
from .rng import generator_for

PITCH_LIMIT_DEG = 89.0  # an orbit camera straight above or below the pivot has no "up"


@dataclass(frozen=True)
class OrbitPath:
    """yaw = A sin(2 pi t), pitch = P + B cos(2 pi t) for t = k / frames, k = 0 .. frames - 1.

    ``pitch_center`` (P) is the identity's own pitch (a fitted latent's), 0 for seeds; the pitch
    is clipped to +-``PITCH_LIMIT_DEG`` so the orbit never passes over a pole.
    """

    frames: int
    yaw_amplitude_deg: float = 30.0
    pitch_amplitude_deg: float = 5.0
    pitch_center_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ValueError(f"an orbit needs at least 2 frames, got {self.frames}")
        values = (self.yaw_amplitude_deg, self.pitch_amplitude_deg, self.pitch_center_deg)
        if not all(math.isfinite(v) for v in values):
            raise ValueError("orbit amplitudes and centre must be finite numbers of degrees")


def orbit_angles(path: OrbitPath) -> tuple[list[float], list[float]]:
    """The (yaws, pitches) in degrees of every frame of ``path``."""
    yaws, pitches = [], []
    for k in range(path.frames):
        phase = 2 * math.pi * k / path.frames
        yaws.append(path.yaw_amplitude_deg * math.sin(phase))
        pitch = path.pitch_center_deg + path.pitch_amplitude_deg * math.cos(phase)
        pitches.append(min(PITCH_LIMIT_DEG, max(-PITCH_LIMIT_DEG, pitch)))
    return yaws, pitches


def orbit_batches(path: OrbitPath, batch_size: int) -> list[tuple[list[float], list[float]]]:
    """The (yaws, pitches) of ``path`` in consecutive groups of at most ``batch_size`` frames."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    yaws, pitches = orbit_angles(path)
    return [
        (yaws[i : i + batch_size], pitches[i : i + batch_size])
        for i in range(0, path.frames, batch_size)
    ]


@torch.no_grad()
def render_orbit(
    generator: Generator,
    ws: torch.Tensor,
    path: OrbitPath,
    options: RenderOptions | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> np.ndarray:
    """Every frame of ``path`` drawn from ws [1, num_ws, w_dim]: uint8 [frames, H, W, 3].

    Each frame gets the ray jitter of render seed 0, the same as a single ``distill3d render``
    of that view, so a still and the turntable frame at its angles agree.
    """
    device = next(generator.parameters()).device
    frames = []
    groups = orbit_batches(path, batch_size)
    for yaws, pitches in tqdm(groups, desc="orbit", unit="batch", disable=not progress):
        camera = orbit_camera(generator, yaws, pitches)
        rng = [generator_for(0, device) for _ in yaws]
        out = render_ws(generator, ws.expand(len(yaws), -1, -1), camera, options, rng=rng)
        frames.append(batch_to_uint8(out["image"]))
    return np.concatenate(frames)
