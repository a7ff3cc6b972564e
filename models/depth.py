"""A teacher's depth map, and the files it is written to.

Depth is the teacher's ``image_depth``: the expected distance along each pixel's unit ray
direction from the camera centre (not the camera's z), in world units, at the neural-rendering
resolution. Two encodings:

- ``.npy``: float32 [H, W] ray distances as rendered, every pixel (empty rays hold the far bound
  the renderer clamps them to).
- ``.png``: 16-bit greyscale, a fixed linear map ``value = round(distance / DEPTH_PNG_UNIT)``
  with ``DEPTH_PNG_UNIT`` = 1e-4 world units (0.1 mm if a world unit is a metre), so
  ``distance = value * 1e-4`` needs no per-file numbers and two files compare directly. Values
  reach 6.5535 units, beyond every preset's far bound (3.35 at most). ``0`` means no surface:
  pixels whose accumulated opacity (``image_alpha``) is below ``min_alpha`` (0.5: more
  background than figure), because the renderer gives empty rays the far bound, a surface that
  is not there. The PNG carries the mapping in a text chunk (``DEPTH_PNG_KEY``).

An 8-bit near-bright preview for eyes is ``models/images.py``'s ``depth_to_uint8``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .camera import Camera
from .errors import ConfigError
from .mesh import require_teacher
from .render import RenderOptions, render_ws
from .rng import RandomSource

DEPTH_PNG_UNIT = 1e-4  # world units per 16-bit step
DEPTH_PNG_MAX = 65535 * DEPTH_PNG_UNIT
NO_SURFACE = 0  # the 16-bit value of a pixel without a surface
DEFAULT_MIN_ALPHA = 0.5
DEPTH_PNG_KEY = "distill3d:depth"
DEPTH_PNG_DESCRIPTION = (
    "ray distance from the camera centre in world units = value * 0.0001; 0 = no surface"
)
DEPTH_FORMATS = (".png", ".npy")


def render_depth(
    model: object,
    ws: torch.Tensor,
    camera: Camera,
    options: RenderOptions | None = None,
    rng: RandomSource = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's depth [H, W] (ray distances, world units) and opacity [H, W] for one latent
    (ws [1, num_ws, w_dim] or w [1, w_dim]) seen from one camera. A student is refused: it
    renders no depth (see ``models/mesh.py``'s ``require_teacher``)."""
    teacher = require_teacher(model)
    if len(camera) != 1 or ws.shape[0] != 1:
        raise ValueError("one latent and one camera at a time")
    out = render_ws(teacher, ws, camera, options, rng)
    return out["image_depth"][0, 0].float().cpu(), out["image_alpha"][0, 0].float().cpu()


def depth_to_uint16(
    depth: torch.Tensor | np.ndarray,
    alpha: torch.Tensor | np.ndarray | None = None,
    min_alpha: float = DEFAULT_MIN_ALPHA,
) -> np.ndarray:
    """Ray distances [H, W] -> uint16 [H, W] by the fixed map (module docstring); ``NO_SURFACE``
    where ``alpha`` < ``min_alpha`` or the distance is not finite. A surface farther than
    ``DEPTH_PNG_MAX`` is an error rather than silently clipped: write .npy instead."""
    d = np.asarray(torch.as_tensor(depth).detach().float().cpu().numpy(), dtype=np.float64)
    d = d.reshape(d.shape[-2], d.shape[-1])
    surface = np.isfinite(d)
    if alpha is not None:
        a = np.asarray(torch.as_tensor(alpha).detach().float().cpu().numpy()).reshape(d.shape)
        surface &= a >= min_alpha
    if (d[surface] < 0).any() or (d[surface] > DEPTH_PNG_MAX).any():
        raise ConfigError(
            f"depth outside [0, {DEPTH_PNG_MAX:g}] world units cannot go into a 16-bit PNG at "
            f"{DEPTH_PNG_UNIT:g} units a step; write .npy instead"
        )
    # A surface at distance 0 would read as "no surface": the camera never sits on one, but
    # keep the smallest step anyway.
    values = np.clip(np.round(d / DEPTH_PNG_UNIT), 1, 65535)
    return np.where(surface, values, NO_SURFACE).astype(np.uint16)


def uint16_to_depth(values: np.ndarray) -> np.ndarray:
    """The inverse of :func:`depth_to_uint16`: float32 ray distances, NaN where no surface."""
    values = np.asarray(values)
    depth = values.astype(np.float32) * np.float32(DEPTH_PNG_UNIT)
    return np.where(values == NO_SURFACE, np.float32(np.nan), depth).astype(np.float32)


def encode_depth_png(
    depth: torch.Tensor | np.ndarray,
    alpha: torch.Tensor | np.ndarray | None = None,
    min_alpha: float = DEFAULT_MIN_ALPHA,
) -> bytes:
    """A 16-bit greyscale PNG of the depth map, with the mapping in its text chunk."""
    info = PngInfo()
    info.add_text(DEPTH_PNG_KEY, DEPTH_PNG_DESCRIPTION)
    buffer = io.BytesIO()
    Image.fromarray(depth_to_uint16(depth, alpha, min_alpha)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def decode_depth_png(data: bytes) -> np.ndarray:
    """Ray distances (float32, NaN where no surface) from :func:`encode_depth_png`'s bytes."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in ("I;16", "I"):
            raise ValueError(f"not a 16-bit depth PNG (mode {image.mode})")
        return uint16_to_depth(np.asarray(image).astype(np.uint16))


def save_depth(
    depth: torch.Tensor | np.ndarray,
    path: str | Path,
    alpha: torch.Tensor | np.ndarray | None = None,
    min_alpha: float = DEFAULT_MIN_ALPHA,
) -> Path:
    """Write a depth map [H, W] (or [1, 1, H, W]) as .npy (float32 ray distances, every pixel)
    or .png (16-bit, the fixed map, ``alpha`` masks empty pixels); the suffix decides."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DEPTH_FORMATS:
        raise ConfigError(f"depth file must end in .png or .npy, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        d = torch.as_tensor(depth).detach().float().cpu().numpy()
        np.save(path, d.reshape(d.shape[-2], d.shape[-1]).astype(np.float32))
    else:
        path.write_bytes(encode_depth_png(depth, alpha, min_alpha))
    return path
