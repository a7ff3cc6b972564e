"""Latent-space edits: interpolation, style mixing and truncation, on ws [..., K, w_dim].

All three work in W (the mapping's output), where StyleGAN-family latents are well behaved:
straight lines between two identities stay on the data manifold, rows of ws control features
from coarse (first rows) to fine (last rows), and pulling towards the average w trades variety
for typicality.

For a student, ws rows are read in two places only: the first row drives its pose-conditioned
mapping and S2D (shape, layout, colours) and the last row its super-resolution (fine texture), so
style mixing at any cutoff between 1 and K - 1 takes the geometry from one latent and the fine
detail from the other. The volumetric teacher reads every row.
"""

from __future__ import annotations

import torch


def _as_ws(w: torch.Tensor, num_ws: int) -> torch.Tensor:
    """[..., w_dim] -> [..., num_ws, w_dim] (broadcast); [..., num_ws, w_dim] is kept."""
    if w.ndim >= 2 and w.shape[-2] == num_ws:
        return w
    return w.unsqueeze(-2).expand(*w.shape[:-1], num_ws, w.shape[-1])


def interpolate(w_a: torch.Tensor, w_b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Linear interpolation in W: ``t`` = 0 gives ``w_a``, 1 gives ``w_b``; a tensor of ``t``
    values [T] gives a sequence [T, *w_a.shape] (for videos)."""
    if w_a.shape != w_b.shape:
        raise ValueError(f"latents differ in shape: {list(w_a.shape)} vs {list(w_b.shape)}")
    t = torch.as_tensor(t, dtype=w_a.dtype, device=w_a.device)
    if t.ndim == 0:
        return torch.lerp(w_a, w_b, t)
    if t.ndim != 1:
        raise ValueError("t must be a number or a 1-D tensor of numbers")
    return torch.lerp(w_a.unsqueeze(0), w_b.unsqueeze(0), t.view(-1, *([1] * w_a.ndim)))


def style_mix(
    ws_coarse: torch.Tensor, ws_fine: torch.Tensor, cutoff: int, num_ws: int
) -> torch.Tensor:
    """Rows ``[:cutoff]`` from ``ws_coarse`` and ``[cutoff:]`` from ``ws_fine``.

    Either input may be one w [..., w_dim] (broadcast to ``num_ws`` rows) or ws
    [..., num_ws, w_dim]; ``cutoff`` must be in [0, num_ws].
    """
    if not 0 <= cutoff <= num_ws:
        raise ValueError(f"cutoff must be between 0 and {num_ws}, got {cutoff}")
    a, b = _as_ws(ws_coarse, num_ws), _as_ws(ws_fine, num_ws)
    if a.shape != b.shape:
        raise ValueError(f"latents differ in shape: {list(a.shape)} vs {list(b.shape)}")
    return torch.cat([a[..., :cutoff, :], b[..., cutoff:, :]], dim=-2)


def truncate(
    w: torch.Tensor, w_avg: torch.Tensor, psi: float | torch.Tensor, cutoff: int | None = None
) -> torch.Tensor:
    """``w_avg + psi (w - w_avg)``; with ``cutoff`` only on the first ``cutoff`` rows of ws.

    The one truncation of the project: the mapping networks, rendering, the service's batches
    and the exported mapping graph all call it. ``psi`` is a number or a tensor that broadcasts
    against ``w`` (one psi per latent in a batch: shape [N, 1]).
    """
    if isinstance(psi, torch.Tensor):
        psi = psi.to(w)
    if cutoff is None:
        return torch.lerp(w_avg.to(w), w, psi)
    if w.ndim < 2:
        raise ValueError("a truncation cutoff needs ws [..., K, w_dim]")
    head = torch.lerp(w_avg.to(w), w[..., :cutoff, :], psi)
    return torch.cat([head, w[..., cutoff:, :]], dim=-2)
