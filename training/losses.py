"""Distillation losses (docs/method.md, "Training"): low- and high-resolution reconstruction.

The adversarial terms (non-saturating logistic loss, R1) live with the discriminator in
``discriminator.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.lpips import LPIPS
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
    - ``hr_l1`` and ``hr_lpips``: L1 and LPIPS between the final images.
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
    return terms


def weighted_sum(terms: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """Sum of the terms times their weight in ``weights`` (matched by name)."""
    return sum(value * getattr(weights, name) for name, value in terms.items())  # type: ignore[return-value]
