"""FID and KID between two image sets, from FID-Inception pool3 features (``training.evaluation.inception``).

- FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the two feature
  sets, ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``. The trace of the matrix
  square root is computed from the eigenvalues of ``S1^(1/2) S2 S1^(1/2)`` (symmetric and
  positive semi-definite, so real and non-negative), in float64: no scipy, and no complex
  round-off to discard as ``scipy.linalg.sqrtm`` needs.
- KID (Bińkowski et al. 2018): the unbiased squared MMD with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets as StyleGAN's metrics do
  (subsets of at most 1000, 100 of them). Unlike FID it is unbiased in the number of samples,
  so it is the one to read when only a few hundred images exist.

Both compare distributions: numbers from a few dozen images are noisy and biased (FID
especially), so reports state the sample count next to them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ...models.errors import ConfigError
from .inception import INPUT_SIZE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class FeatureStats:
    """Features of one image set: kept whole because KID needs the samples, not the moments."""

    features: torch.Tensor  # [N, D] float64

    @property
    def count(self) -> int:
        return int(self.features.shape[0])

    def mean(self) -> torch.Tensor:
        return self.features.mean(dim=0)

    def covariance(self) -> torch.Tensor:
        if self.count < 2:
            raise ValueError("a covariance needs at least 2 samples")
        return torch.cov(self.features.T)


@dataclass(frozen=True)
class KID:
    mean: float
    std: float
    subsets: int
    subset_size: int


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2, sigma1, sigma2 = (t.to(torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    middle = (middle + middle.T) / 2  # symmetric up to round-off; make eigvalsh's input exact
    trace_sqrt = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(float(distance), 0.0)


def fid(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean(), a.covariance(), b.mean(), b.covariance())


def kid(
    a: FeatureStats,
    b: FeatureStats,
    subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> KID:
    """Unbiased MMD^2 with the cubic polynomial kernel, mean and std over random subsets."""
    m = min(a.count, b.count, max_subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    x_all, y_all = a.features, b.features
    dim = x_all.shape[1]
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = x_all[torch.randperm(a.count, generator=gen)[:m]]
        y = y_all[torch.randperm(b.count, generator=gen)[:m]]
        kxx = (x @ x.T / dim + 1) ** 3
        kyy = (y @ y.T / dim + 1) ** 3
        kxy = (x @ y.T / dim + 1) ** 3
        within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m - 1)
        values.append(float((within - 2 * kxy.sum() / m) / m))
    v = np.asarray(values)
    return KID(float(v.mean()), float(v.std()), subsets, m)


@torch.no_grad()
def features_of(
    inception: torch.nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str = "cpu"
) -> FeatureStats:
    """Pool3 features of image batches given in [-1, 1] (the generators' range), [N, 3, H, W]."""
    chunks = []
    for images in batches:
        x = ((images.to(device, torch.float32) + 1) / 2).clamp(0, 1)
        chunks.append(inception(x).to("cpu", torch.float64))
    if not chunks:
        raise ValueError("no images to compute features of")
    return FeatureStats(torch.cat(chunks))


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted; a clear error when there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"image folder {folder} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(
            f"image folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}); point "
            "--fid-real at a folder of real images, or use --fid-real teacher"
        )
    return files


def folder_batches(
    files: list[Path], batch_size: int, limit: int | None = None
) -> Iterator[torch.Tensor]:
    """Images as [-1, 1] batches, each resized to Inception's 299x299 the way the network does
    (bilinear), so images of different sizes can share a batch."""
    chosen = files[:limit] if limit is not None else files
    for start in range(0, len(chosen), batch_size):
        batch = [_read_image(p) for p in chosen[start : start + batch_size]]
        yield torch.cat(batch) * 2 - 1


def _read_image(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise ConfigError(f"cannot read image {path} ({e}); remove it from the folder") from e
    x = torch.from_numpy(array).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def format_kid(value: KID) -> str:
    """KID is conventionally printed x 10^3."""
    if not math.isfinite(value.mean):
        return "n/a"
    return f"{value.mean * 1e3:.3f} ± {value.std * 1e3:.3f}"
