"""Distillation losses (docs/method.md, "Training"): low- and high-resolution reconstruction.

The adversarial terms (non-saturating logistic loss, R1) live with the discriminator in
``discriminator.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.camera import Camera
from ..models.errors import ConfigError
from ..models.lpips import LPIPS
from ..models.metrics import warp_into_view
from .config import LossWeights
from .data import TeacherBatch


def reconstruction_losses(
    student_out: dict[str, torch.Tensor],
    target: TeacherBatch,
    weights: LossWeights,
    lpips: LPIPS | None,
) -> dict[str, torch.Tensor]:
    """Each term, unweighted (for logging); ``weighted_sum`` combines them.

    - ``lr_feature``: L1 over the whole low-resolution feature image (it carries what the
      teacher's super-resolution needs beyond RGB);
    - ``lr_rgb``: L1 over its first three channels, the raw RGB image, weighted on its own so
      the low-resolution image stays a faithful preview;
    - ``hr_l1`` and ``hr_lpips``: L1 and LPIPS between the final images;
    - ``consistency`` (when weighted): ``consistency_loss`` on a paired batch.
    """
    feature = student_out["feature"].float()
    image = student_out["image"].float()
    terms = {
        "lr_feature": F.l1_loss(feature, target.feature.float()),
        "lr_rgb": F.l1_loss(feature[:, :3], target.feature[:, :3].float()),
        "hr_l1": F.l1_loss(image, target.image.float()),
    }
    if lpips is not None and weights.hr_lpips > 0:
        terms["hr_lpips"] = lpips(image, target.image.float()).mean()
    if weights.consistency > 0:
        terms["consistency"] = consistency_loss(image, target)
    return terms


def consistency_loss(image: torch.Tensor, target: TeacherBatch) -> torch.Tensor:
    """Multi-view consistency of the student's final images on a paired batch: each view A
    (rows ..B/2) against the student's own view B of the same identity (rows B/2..), resampled
    at A's surface points with the teacher's depth of both views (``warp_into_view``, the
    reprojection metric's warp); L1 over the pixels B sees, on the images' [-1, 1] scale.

    The reconstruction terms ask each view to match the teacher; this one asks the student's
    views to agree with each other where the teacher's geometry says they show the same point,
    which is what its reprojection error measures.
    """
    if not target.paired or target.depth is None:
        raise ConfigError(
            "the consistency loss needs paired views with the teacher's depth: live teacher "
            "renders (not --cache) with pair_offset_deg set"
        )
    half = len(image) // 2
    cameras = Camera.from_label(target.c.detach().float())
    camera_a = Camera(cameras.cam2world[:half], cameras.intrinsics[:half])
    camera_b = Camera(cameras.cam2world[half:], cameras.intrinsics[half:])
    depth = target.depth.float()
    seen, valid = warp_into_view(image[half:], depth[:half], camera_a, depth[half:], camera_b)
    diff = torch.where(valid, (seen - image[:half]).abs(), 0.0)  # inf depth: NaN off the mask
    return diff.sum() / (valid.sum() * image.shape[1]).clamp_min(1)


def weighted_sum(terms: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """Sum of the terms times their weight in ``weights`` (matched by name)."""
    return sum(value * getattr(weights, name) for name, value in terms.items())  # type: ignore[return-value]
