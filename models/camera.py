"""Cameras in EG3D's conventions, and the 25-number label the networks take.

- World: y up; faces look towards +z. Camera: OpenCV (x right, y down, z forward).
- Label: cam2world (4x4, row-major, 16 numbers) + normalised intrinsics (3x3, 9 numbers):
  [[fx/W, s/W, cx/W], [0, fy/H, cy/H], [0, 0, 1]]. FFHQ/AFHQ use fx = fy = 4.2647, cx = cy = 0.5.
- Orbit: like EG3D's ``LookAtPoseSampler``, the camera sits on a sphere of ``radius`` around the
  world origin and looks at the ``pivot`` (FFHQ: radius 2.7, pivot (0, 0, 0.2)).
- Our angles: yaw 0, pitch 0 is EG3D's frontal view (horizontal and vertical angle pi/2). Yaw, in
  degrees, adds to the horizontal angle (positive yaw moves the camera towards +x); pitch, in
  degrees, is the camera's true elevation above the horizontal plane (positive raises it).
  EG3D's scripts use a "vertical angle" v that is not the elevation (polar = arccos(1 - 2v/pi));
  ``Camera.from_eg3d_angles`` takes those to reproduce their cameras exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

FFHQ_FOCAL = 4.2647  # = 2985.29 / 700, normalised by the image width (NVlabs/eg3d#114)
SHAPENET_FOCAL = 1.7074  # gen_videos.py's focal length for ShapeNet cars

LABEL_SIZE = 25


def intrinsics_matrix(focal: float, cx: float = 0.5, cy: float = 0.5) -> torch.Tensor:
    """Normalised 3x3 intrinsics with square pixels and no skew."""
    return torch.tensor([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)


def focal_from_fov(fov_deg: float) -> float:
    """Normalised focal length (fx / W) for a horizontal field of view, by the pinhole model.

    This is not EG3D's ``FOV_to_intrinsics``, which divides by an extra sqrt(2) (NVlabs/eg3d#81):
    its 18.837 degrees gives 4.2634, whereas a true 18.837-degree view is 3.015; use
    ``focal_from_eg3d_fov`` to reproduce EG3D's scripts.
    """
    if not 0 < fov_deg < 180:
        raise ValueError(f"fov_deg must be in (0, 180) degrees, got {fov_deg}")
    return 1 / (2 * math.tan(math.radians(fov_deg) / 2))


def focal_from_eg3d_fov(fov_deg: float) -> float:
    """EG3D's ``FOV_to_intrinsics`` focal length: 1 / (tan(fov/2) * 1.414), with pi as 3.14159."""
    if not 0 < fov_deg < 180:
        raise ValueError(f"fov_deg must be in (0, 180) degrees, got {fov_deg}")
    return float(1 / (math.tan(fov_deg * 3.14159 / 360) * 1.414))


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / torch.norm(v, dim=-1, keepdim=True)


def look_at(origin: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """cam2world [N, 4, 4] for cameras at ``origin`` [N, 3] looking at ``target`` [N, 3] with y up.

    Same construction and rounding as EG3D's ``create_cam2world_matrix``: columns are right,
    down (camera y) and forward (camera z).
    """
    forward = _normalize(_normalize(target - origin))
    up = torch.tensor([0.0, 1.0, 0.0], dtype=origin.dtype, device=origin.device).expand_as(forward)
    right = -_normalize(torch.cross(up, forward, dim=-1))
    down = _normalize(torch.cross(forward, right, dim=-1))
    n = origin.shape[0]
    rotation = torch.eye(4, dtype=origin.dtype, device=origin.device).repeat(n, 1, 1)
    rotation[:, :3, :3] = torch.stack((right, down, forward), dim=-1)
    translation = torch.eye(4, dtype=origin.dtype, device=origin.device).repeat(n, 1, 1)
    translation[:, :3, 3] = origin
    return translation @ rotation


def _orbit_origin(theta: torch.Tensor, phi: torch.Tensor, radius: float) -> torch.Tensor:
    """Point on the sphere: horizontal angle theta, polar angle phi (from +y), EG3D's formula."""
    origin = torch.zeros(theta.shape[0], 3, dtype=torch.float32)
    origin[:, 0] = radius * torch.sin(phi) * torch.cos(math.pi - theta)
    origin[:, 2] = radius * torch.sin(phi) * torch.sin(math.pi - theta)
    origin[:, 1] = radius * torch.cos(phi)
    return origin


@dataclass(frozen=True)
class Camera:
    """A batch of pinhole cameras: cam2world [N, 4, 4] and normalised intrinsics [N, 3, 3]."""

    cam2world: torch.Tensor
    intrinsics: torch.Tensor

    def __post_init__(self) -> None:
        if self.cam2world.ndim != 3 or self.cam2world.shape[1:] != (4, 4):
            raise ValueError(f"cam2world must be [N, 4, 4], got {list(self.cam2world.shape)}")
        if self.intrinsics.shape != (self.cam2world.shape[0], 3, 3):
            raise ValueError(
                f"intrinsics must be [N, 3, 3] with N={self.cam2world.shape[0]}, "
                f"got {list(self.intrinsics.shape)}"
            )

    def __len__(self) -> int:
        return self.cam2world.shape[0]

    @property
    def origin(self) -> torch.Tensor:
        return self.cam2world[:, :3, 3]

    def to_label(self) -> torch.Tensor:
        """The [N, 25] label: cam2world row-major, then intrinsics row-major."""
        return torch.cat([self.cam2world.reshape(-1, 16), self.intrinsics.reshape(-1, 9)], dim=1)

    @classmethod
    def from_label(cls, label: torch.Tensor | Sequence[float]) -> Camera:
        """Inverse of ``to_label``; accepts [25] or [N, 25]."""
        label = torch.as_tensor(label, dtype=torch.float32)
        if label.ndim == 1:
            label = label.unsqueeze(0)
        if label.ndim != 2 or label.shape[1] != LABEL_SIZE:
            raise ValueError(
                f"camera label needs 25 numbers (16 cam2world + 9 intrinsics), got shape {list(label.shape)}"
            )
        if not torch.isfinite(label).all():
            raise ValueError("camera label contains NaN or infinite numbers")
        return cls(label[:, :16].reshape(-1, 4, 4), label[:, 16:].reshape(-1, 3, 3))

    @classmethod
    def from_eg3d_angles(
        cls,
        horizontal: float | Sequence[float],
        vertical: float | Sequence[float],
        radius: float = 2.7,
        pivot: Sequence[float] = (0.0, 0.0, 0.2),
        focal: float = FFHQ_FOCAL,
    ) -> Camera:
        """EG3D's ``LookAtPoseSampler.sample(h, v, pivot, radius)`` (stddev 0), in radians.

        ``vertical`` is EG3D's v, mapped to the polar angle arccos(1 - 2 v / pi).
        """
        theta = torch.as_tensor(horizontal, dtype=torch.float32).reshape(-1)
        v = torch.as_tensor(vertical, dtype=torch.float32).reshape(-1)
        theta, v = torch.broadcast_tensors(theta, v)
        v = torch.clamp(v, 1e-5, math.pi - 1e-5) / math.pi
        phi = torch.arccos(1 - 2 * v)
        return cls._looking_at(_orbit_origin(theta, phi, radius), pivot, focal)

    @classmethod
    def orbit(
        cls,
        yaw_deg: float | Sequence[float] | torch.Tensor = 0.0,
        pitch_deg: float | Sequence[float] | torch.Tensor = 0.0,
        radius: float = 2.7,
        pivot: Sequence[float] = (0.0, 0.0, 0.2),
        focal: float = FFHQ_FOCAL,
    ) -> Camera:
        """Cameras at ``yaw_deg``/``pitch_deg`` (see the module docstring), ``radius`` from the origin."""
        yaw = torch.as_tensor(yaw_deg, dtype=torch.float32).reshape(-1)
        pitch = torch.as_tensor(pitch_deg, dtype=torch.float32).reshape(-1)
        yaw, pitch = torch.broadcast_tensors(yaw, pitch)
        if not (torch.isfinite(yaw).all() and torch.isfinite(pitch).all()):
            raise ValueError("yaw and pitch must be finite numbers of degrees")
        if (pitch.abs() >= 90).any():
            raise ValueError(
                f"pitch must be strictly between -90 and 90 degrees, got {pitch.tolist()}"
            )
        theta = math.pi / 2 + torch.deg2rad(yaw)
        phi = math.pi / 2 - torch.deg2rad(pitch)
        return cls._looking_at(_orbit_origin(theta, phi, radius), pivot, focal)

    @classmethod
    def frontal(
        cls,
        radius: float = 2.7,
        pivot: Sequence[float] = (0.0, 0.0, 0.2),
        focal: float = FFHQ_FOCAL,
        batch_size: int = 1,
    ) -> Camera:
        """The frontal conditioning camera EG3D's scripts map every latent with."""
        return cls.from_eg3d_angles(
            [math.pi / 2] * batch_size, [math.pi / 2] * batch_size, radius, pivot, focal
        )

    @classmethod
    def _looking_at(cls, origin: torch.Tensor, pivot: Sequence[float], focal: float) -> Camera:
        target = torch.as_tensor(pivot, dtype=torch.float32).reshape(1, 3).expand_as(origin)
        cam2world = look_at(origin, target)
        intrinsics = intrinsics_matrix(focal).expand(origin.shape[0], 3, 3).clone()
        return cls(cam2world, intrinsics)

    def turned(self, yaw_deg: float | torch.Tensor, pivot: Sequence[float]) -> Camera:
        """These cameras carried ``yaw_deg`` further around the vertical axis through ``pivot``:
        ``orbit(yaw, ...).turned(d, pivot)`` is ``orbit(yaw + d, ...)`` for an orbit around
        ``pivot``, and any pose (a dataset's labels too) keeps its pitch, distance and
        intrinsics. ``yaw_deg`` is one angle or one per camera."""
        cam2world = self.cam2world
        angle = torch.deg2rad(
            torch.as_tensor(yaw_deg, dtype=cam2world.dtype, device=cam2world.device)
        )
        angle = angle.reshape(-1).expand(len(self))
        cos, sin = torch.cos(angle), torch.sin(angle)
        turn = torch.eye(4, dtype=cam2world.dtype, device=cam2world.device).repeat(len(self), 1, 1)
        turn[:, 0, 0], turn[:, 0, 2], turn[:, 2, 0], turn[:, 2, 2] = cos, sin, -sin, cos
        centre = torch.as_tensor(pivot, dtype=cam2world.dtype, device=cam2world.device)
        moved = cam2world.clone()
        moved[:, :3, 3] -= centre
        moved = turn @ moved
        moved[:, :3, 3] += centre
        return Camera(moved, self.intrinsics.clone())

    def orbit_angles(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(yaw_deg, pitch_deg, radius) of each camera's position, the inverse of ``orbit``'s
        placement (its look-at target is not checked); [N] each."""
        x, y, z = self.origin.unbind(-1)
        radius = self.origin.norm(dim=-1)
        pitch = 90.0 - torch.rad2deg(torch.arccos((y / radius).clamp(-1, 1)))
        theta = math.pi - torch.atan2(z, x)
        yaw = torch.rad2deg(theta) - 90.0
        yaw = (yaw + 180.0) % 360.0 - 180.0
        return yaw, pitch, radius

    def fov_deg(self) -> torch.Tensor:
        """Horizontal field of view of each camera, degrees (pinhole model)."""
        return torch.rad2deg(2 * torch.atan(0.5 / self.intrinsics[:, 0, 0]))

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """World points [N, P, 3] -> normalised image coordinates [N, P, 2] (u right, v down, in [0, 1]
        across the image) and depth along the camera's z axis as a third column."""
        world2cam = torch.linalg.inv(self.cam2world)
        homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
        cam = (world2cam @ homogeneous.transpose(1, 2)).transpose(1, 2)[..., :3]
        uvw = (self.intrinsics @ cam.transpose(1, 2)).transpose(1, 2)
        return torch.cat([uvw[..., :2] / uvw[..., 2:3], cam[..., 2:3]], dim=-1)


@dataclass(frozen=True)
class CameraConvention:
    """The cameras a model was trained with: an orbit of ``radius`` around the origin looking at
    ``pivot``, with normalised focal length ``focal``.

    Everything that turns yaw/pitch into a camera for a model (rendering, the service, exports)
    goes through this one description, whether it comes from a checkpoint's rendering config or
    from an export's metadata.
    """

    radius: float
    pivot: tuple[float, float, float]
    focal: float

    @classmethod
    def of_rendering(cls, rendering: object) -> CameraConvention:
        """From a model's rendering config (``avg_camera_radius``, ``avg_camera_pivot``,
        ``focal_length``), as checkpoints record it."""
        return cls(
            float(rendering.avg_camera_radius),  # type: ignore[attr-defined]
            tuple(float(v) for v in rendering.avg_camera_pivot),  # type: ignore[attr-defined]
            float(rendering.focal_length),  # type: ignore[attr-defined]
        )

    @classmethod
    def from_json(cls, camera: dict[str, object]) -> CameraConvention:
        """From an export's ``camera`` entry (``radius``, ``pivot``, ``focal_length``)."""
        pivot = tuple(float(v) for v in camera["pivot"])  # type: ignore[attr-defined]
        return cls(float(camera["radius"]), pivot, float(camera["focal_length"]))  # type: ignore[arg-type]

    @property
    def fov_deg(self) -> float:
        """Horizontal field of view of the convention's cameras, degrees."""
        return math.degrees(2 * math.atan(0.5 / self.focal))

    def orbit(
        self,
        yaw_deg: float | Sequence[float] | torch.Tensor = 0.0,
        pitch_deg: float | Sequence[float] | torch.Tensor = 0.0,
        radius: float | None = None,
        fov_deg: float | None = None,
    ) -> Camera:
        """Cameras at yaw/pitch degrees; ``radius`` and ``fov_deg`` default to the convention's."""
        focal = focal_from_fov(fov_deg) if fov_deg is not None else self.focal
        return Camera.orbit(yaw_deg, pitch_deg, radius or self.radius, self.pivot, focal)

    def frontal(self, batch_size: int = 1) -> Camera:
        """The frontal camera EG3D conditions the mapping with."""
        return Camera.frontal(self.radius, self.pivot, self.focal, batch_size)
