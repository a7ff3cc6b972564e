"""Conversions between network outputs and image files."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[3, H, W] or [1, 3, H, W] in [-1, 1] -> uint8 [H, W, 3]."""
    if img.ndim == 4:
        if img.shape[0] != 1:
            raise ValueError(f"expected a single image, got a batch of {img.shape[0]}")
        img = img[0]
    return batch_to_uint8(img.unsqueeze(0))[0]


def batch_to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3].

    Upstream's conversion ``(x * 127.5 + 128).clamp(0, 255)`` then truncation, kept exactly so pixels
    match EG3D's saved images.
    """
    x = torch.as_tensor(images).detach().float()
    x = (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def depth_to_uint8(depth: torch.Tensor) -> np.ndarray:
    """[1, H, W] or [1, 1, H, W] ray distances -> uint8 [H, W], near = bright, scaled to its range."""
    d = depth.detach().float().reshape(depth.shape[-2], depth.shape[-1])
    lo, hi = d.min(), d.max()
    scaled = (hi - d) / (hi - lo) if hi > lo else torch.zeros_like(d)
    return (scaled * 255).round().to(torch.uint8).cpu().numpy()


def save_image(array: np.ndarray, path: str | Path) -> Path:
    """Save a uint8 [H, W, 3] or [H, W] array; the format follows the suffix (png, jpg, webp)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


DEFAULT_MAX_PIXELS = 4096 * 4096


def read_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """An image file (path or bytes) -> RGB float [3, H, W] in [-1, 1], the networks' range.

    The size is checked from the header before any pixel is decoded, so a small file that
    declares a huge image (a decompression bomb) costs nothing. Transparency is dropped.
    Raises ValueError for anything that is not a readable image of at most ``max_pixels``.
    """
    name = "the upload" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise FileNotFoundError(f"image {source} does not exist")
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with io.BytesIO(data) as stream, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(stream)
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(
                    f"{name} is {width}x{height} pixels, more than the limit of {max_pixels}; "
                    "resize it first"
                )
            image.load()
        except (
            Image.UnidentifiedImageError,
            Image.DecompressionBombWarning,
            Image.DecompressionBombError,
        ) as exc:
            raise ValueError(f"{name} is not an image that can be read: {exc}") from exc
        except (OSError, SyntaxError) as exc:  # truncated or corrupt data
            raise ValueError(f"{name} is a damaged or truncated image: {exc}") from exc
        array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0
