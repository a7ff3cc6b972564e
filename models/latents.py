"""Latent codes from seeds, as EG3D's scripts make them."""

from __future__ import annotations

import numpy as np
import torch


def z_from_seed(seed: int, z_dim: int) -> torch.Tensor:
    """z = numpy ``RandomState(seed).randn(1, z_dim)`` as float32 [1, z_dim].

    This is what ``gen_samples.py`` / ``gen_videos.py`` do, so a seed names the same identity in
    EG3D's tools and in ours.
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim)).to(torch.float32)
