"""Shared fixtures: small seeded models so every test runs in seconds on CPU."""

from __future__ import annotations

import pytest
import torch

from distill3d.models.eg3d.generator import TriPlaneGenerator
from distill3d.models.load import init_generator


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_generator() -> TriPlaneGenerator:
    """The tiny preset with non-trivial noise strengths, biases and w_avg (defaults are zeros)."""
    g = init_generator("tiny", seed=3)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise_strength") or name.endswith(".bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        g.backbone.mapping.w_avg.copy_(torch.randn(g.w_dim, generator=gen))
    return g
