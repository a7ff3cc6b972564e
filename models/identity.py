"""Which latent to draw: a seed or a fitted latent file, edited in W, and the view it comes with.

``distill3d render`` and ``distill3d orbit`` name an identity the same way (``--seed`` or
``--latent``, then ``--interpolate-seed`` / ``--mix-seed``); :func:`resolve_identity` turns that
request into ws, so both commands (and any other caller) draw exactly the same face.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .editing import interpolate, style_mix
from .errors import ConfigError
from .latents import load_latent, z_from_seed
from .mapping import map_to_ws
from .render import Generator, check_ws


@dataclass(frozen=True)
class IdentityRequest:
    """An identity and its edits as a user names them; None fields take their defaults.

    ``yaw`` / ``pitch`` override the default view: the latent's fitted camera, else frontal.
    """

    seed: int | None = None
    latent: Path | None = None
    interpolate_seed: int | None = None
    interpolate_t: float = 0.5
    mix_seed: int | None = None
    mix_cutoff: int | None = None
    yaw: float | None = None
    pitch: float | None = None


@dataclass(frozen=True)
class Identity:
    """ws [1, num_ws, w_dim] (untruncated, edited), a description for messages, and the view."""

    ws: torch.Tensor
    description: str
    yaw_deg: float
    pitch_deg: float


def seed_ws(generator: Generator, seed: int, device: torch.device) -> torch.Tensor:
    """A seed's ws, mapped with the frontal camera as EG3D's scripts do (one seed, one face)."""
    return map_to_ws(generator, z_from_seed(seed, generator.z_dim)).to(device)  # type: ignore[arg-type]


def _interpolated(
    generator: Generator, ws: torch.Tensor, request: IdentityRequest, device: torch.device
) -> tuple[torch.Tensor, str]:
    """ws moved towards ``interpolate_seed``'s latent, and the words for it ("" when unused)."""
    if request.interpolate_seed is None:
        return ws, ""
    if not 0.0 <= request.interpolate_t <= 1.0:
        raise ConfigError("--interpolate-t must be between 0 and 1")
    other = seed_ws(generator, request.interpolate_seed, device)
    words = f" -> seed {request.interpolate_seed} at t={request.interpolate_t:g}"
    return interpolate(ws, other, request.interpolate_t), words


def _mixed(
    generator: Generator, ws: torch.Tensor, request: IdentityRequest, device: torch.device
) -> tuple[torch.Tensor, str]:
    """ws with rows from ``mix_cutoff`` on taken from ``mix_seed``'s latent ("" when unused)."""
    if (request.mix_seed is None) != (request.mix_cutoff is None):
        raise ConfigError("style mixing needs both --mix-seed and --mix-cutoff")
    if request.mix_seed is None or request.mix_cutoff is None:
        return ws, ""
    num_ws = int(generator.num_ws)
    if not 0 <= request.mix_cutoff <= num_ws:
        raise ConfigError(f"--mix-cutoff must be between 0 and {num_ws} (this model's num_ws)")
    fine = seed_ws(generator, request.mix_seed, device)
    words = f", layers {request.mix_cutoff}+ from seed {request.mix_seed}"
    return style_mix(ws, fine, request.mix_cutoff, num_ws), words


def edit_identity(
    generator: Generator, ws: torch.Tensor, request: IdentityRequest, device: torch.device
) -> tuple[torch.Tensor, str]:
    """Interpolation, then style mixing, applied to untruncated ws, and the words for both.

    Truncation is linear and row-wise, so truncating afterwards equals truncating each latent
    first: render options can still truncate the edited ws.
    """
    ws, towards = _interpolated(generator, ws, request, device)
    ws, mixed = _mixed(generator, ws, request, device)
    return ws, towards + mixed


def _latent_identity(
    generator: Generator, path: Path, request: IdentityRequest, device: torch.device
) -> tuple[torch.Tensor, str, float, float]:
    """A latent file's ws and its fitted view (unless the request overrides it)."""
    latent = load_latent(path)
    try:
        ws = check_ws(generator, latent.ws[None].to(device))
    except ValueError as exc:
        raise ConfigError(f"--latent {path}: {exc}") from None
    yaw = latent.yaw_deg if request.yaw is None else request.yaw
    pitch = latent.pitch_deg if request.pitch is None else request.pitch
    return ws, f"latent {path.name}", yaw, pitch


def _seed_identity(
    generator: Generator, request: IdentityRequest, device: torch.device
) -> tuple[torch.Tensor, str, float, float]:
    """A seed's ws (seed 0 by default) and the frontal view (unless the request overrides it)."""
    seed = 0 if request.seed is None else request.seed
    yaw = 0.0 if request.yaw is None else request.yaw
    pitch = 0.0 if request.pitch is None else request.pitch
    return seed_ws(generator, seed, device), f"seed {seed}", yaw, pitch


def resolve_identity(
    generator: Generator, request: IdentityRequest, device: torch.device
) -> Identity:
    """The edited ws of ``request`` (from its latent file, else its seed) and its view."""
    if request.latent is not None:
        ws, words, yaw, pitch = _latent_identity(generator, request.latent, request, device)
    else:
        ws, words, yaw, pitch = _seed_identity(generator, request, device)
    ws, edits = edit_identity(generator, ws, request, device)
    return Identity(ws, words + edits, yaw, pitch)
