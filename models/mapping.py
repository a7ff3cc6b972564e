"""What the teacher and the student share as latent models, and z -> w with a conditioning
camera: one implementation for every caller that maps latents outside a training loop.

A seed names the same identity in the teacher, in a student (which carries a frozen copy of the
teacher's mapping) and in an exported graph only if all of them map z the same way; the service
relies on that when it falls back from one backend to another.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .camera import CameraConvention
from .editing import truncate


@runtime_checkable
class LatentModel(Protocol):
    """The latent side common to the volumetric teacher and the convolutional student."""

    @property
    def z_dim(self) -> int: ...

    @property
    def w_dim(self) -> int: ...

    @property
    def num_ws(self) -> int: ...

    @property
    def w_avg(self) -> torch.Tensor: ...

    @property
    def config(self) -> Any: ...

    def mapping(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor: ...


def camera_convention(model: LatentModel) -> CameraConvention:
    """The cameras ``model`` was trained with (from its rendering config)."""
    return CameraConvention.of_rendering(model.config.rendering)


@torch.no_grad()
def map_to_ws(
    model: LatentModel, z: torch.Tensor, c_cond: torch.Tensor | None = None
) -> torch.Tensor:
    """z [N, z_dim] -> ws [N, num_ws, w_dim], untruncated, conditioned on ``c_cond`` [N, 25]
    labels (the frontal camera, as EG3D's scripts use, when None): one seed, one identity in
    every view."""
    if c_cond is None:
        c_cond = camera_convention(model).frontal(len(z)).to_label()
    device = model.w_avg.device
    return model.mapping(z.to(device), c_cond.to(device))


def map_to_w(
    model: LatentModel, z: torch.Tensor, c_cond: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`map_to_ws`'s w [N, w_dim] (every row of ws is the same before truncation)."""
    return map_to_ws(model, z, c_cond)[:, 0]


def truncate_rows(w: np.ndarray, w_avg: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """:func:`~.editing.truncate` on float32 numpy rows ``w`` [N, w_dim], one psi per row."""
    rows = torch.from_numpy(np.asarray(w, np.float32))
    psi_t = torch.from_numpy(np.asarray(psi, np.float32)).reshape(-1, 1)
    return truncate(rows, torch.from_numpy(np.asarray(w_avg, np.float32)), psi_t).numpy()
