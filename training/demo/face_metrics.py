"""How well a model draws the demo figures' faces, measured where the facial features are.

Whole-image PSNR is dominated by skin, hair and background: a model that paints a smooth patch
where the eyes, nose and mouth are loses little there (the first shipped teacher scored 26 dB with
no eyes at all). These metrics look only at the pixels that the ground truth's part map
(``SceneRender.part``) gives to facial features, so they tell a model that draws a face from one
that draws an egg.
"""

from __future__ import annotations

import torch

from .scenes import PARTS, feature_mask

PUPILS = (PARTS.index("pupil_l"), PARTS.index("pupil_r"))
EYE_WHITES = (PARTS.index("eye_l"), PARTS.index("eye_r"))


def feature_psnr(image: torch.Tensor, truth: torch.Tensor, part: torch.Tensor) -> float:
    """PSNR in dB over the facial-feature pixels of a batch (``scenes.feature_mask``) only: a
    model that draws a smooth face where the eyes, nose and mouth are scores low here however
    well it draws the rest."""
    mask = feature_mask(part).expand_as(truth)
    error = ((image.clamp(-1, 1) - truth) / 2).square()[mask]
    return float(-10 * torch.log10(error.mean().clamp_min(1e-10)))


def pupil_contrast(image: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """Per image [N]: mean brightness of the whites of the eyes minus that of the pupils ([0, 1]
    scale, brightness = mean of R, G, B), over the pixels where the ground truth's part map
    ``part`` [N, 1, R, R] puts them; NaN where an image shows no pupil or no white.

    Ground truth scores about 0.4 (near-white sclera around a dark iris); a model that draws
    no eyes scores about 0, because both regions get the same skin colour.
    """
    if part.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"part map {list(part.shape)} does not match images {list(image.shape)}")
    brightness = ((image.clamp(-1, 1) + 1) / 2).mean(dim=1).flatten(1)  # [N, R*R]
    part = part.flatten(1)

    def mean_over(ids: tuple[int, ...]) -> torch.Tensor:
        inside = torch.isin(part, torch.tensor(ids, device=part.device)).float()
        count = inside.sum(1)
        total = (brightness * inside).sum(1)
        return torch.where(count > 0, total / count.clamp(min=1), torch.nan)

    return mean_over(EYE_WHITES) - mean_over(PUPILS)
