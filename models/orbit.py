"""The turntable path: one function gives the yaw/pitch of every frame of an orbit.

The CLI (``distill3d orbit``), the service's ``/orbit``, evaluation and the demo report all draw
their turntables from :func:`orbit_angles`, so one request gives the same cameras everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
