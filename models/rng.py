"""Random draws that can be made reproducible per render.

EG3D draws random numbers at inference (backbone noise, stratified ray jitter, importance
samples). Every such draw goes through these helpers so a caller can pass:
- ``None``: torch's global generator, exactly like upstream (same draws, same order);
- one ``torch.Generator``: the same stream as ``torch.manual_seed`` on the global one would give;
- one generator per sample: each sample's draws depend only on its own generator, so a render
  does not change with the batch it happens to be served in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

RandomSource = torch.Generator | Sequence[torch.Generator] | None


def _draw(
    kind: str, shape: Sequence[int], rng: RandomSource, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    fn = torch.randn if kind == "randn" else torch.rand
    if rng is None or isinstance(rng, torch.Generator):
        return fn(list(shape), generator=rng, device=device, dtype=dtype)
    if len(rng) != shape[0]:
        raise ValueError(
            f"got {len(rng)} generators for a batch of {shape[0]}; pass one per sample"
        )
    return torch.stack(
        [fn(list(shape[1:]), generator=g, device=device, dtype=dtype) for g in rng], dim=0
    )


def randn(
    shape: Sequence[int],
    rng: RandomSource,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal samples of ``shape``; dim 0 is the batch when ``rng`` is per sample."""
    return _draw("randn", shape, rng, torch.device(device), dtype)


def rand(
    shape: Sequence[int],
    rng: RandomSource,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform [0, 1) samples of ``shape``; dim 0 is the batch when ``rng`` is per sample."""
    return _draw("rand", shape, rng, torch.device(device), dtype)


def generator_for(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(int(seed))
