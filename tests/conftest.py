"""Shared fixtures: small seeded models so every test runs in seconds on CPU."""

from __future__ import annotations

import os

import pytest
import torch

from distill3d.models.eg3d.generator import TriPlaneGenerator
from distill3d.models.load import init_generator

# Services started by tests (in process or as `distill3d serve` subprocesses, which inherit the
# environment) neither export their tiny students to ONNX at start-up nor size batches from a
# warm-up timing: every test model has its own weights, so each start would pay for an export,
# and tests that count batches need the batch limit they set. Both features have their own
# tests (tests/service/test_backend_choice.py), which turn them on.
os.environ.setdefault("DISTILL3D_ONNX_EXPORT", "0")
os.environ.setdefault("DISTILL3D_TUNE_BATCH", "0")


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
