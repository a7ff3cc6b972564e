"""Super-resolution: StyleGAN2 blocks that turn the rendered feature image into the final image.

One module covers EG3D's ``SuperresolutionHybrid8XDC``, ``SuperresolutionHybrid8X`` and
``SuperresolutionHybrid2X`` (``training/superresolution.py``) and smaller custom variants; the
layout comes from ``SuperResolutionConfig``. Parameter names are upstream's (``block0``, ``block1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..rng import RandomSource
from ..stylegan2 import NoiseMode, SynthesisBlock
from .config import SuperResolutionConfig


class SuperResolution(nn.Module):
    """(rgb [N, 3, r, r], features [N, C, r, r], ws) -> image [N, 3, R, R].

    Every block is modulated by the last w only (upstream repeats ``ws[:, -1]``). The rgb image is
    the skip branch each block's toRGB output is added to.
    """

    def __init__(
        self, config: SuperResolutionConfig, in_channels: int, w_dim: int, antialias: bool
    ) -> None:
        super().__init__()
        self.config = config
        self.input_resolution = config.input_resolution
        self.antialias = antialias
        resolution = config.input_resolution
        channels = in_channels
        n_blocks = len(config.block_channels)
        for idx, (out_channels, upsample) in enumerate(
            zip(config.block_channels, config.block_upsample, strict=True)
        ):
            resolution = resolution * 2 if upsample else resolution
            block = SynthesisBlock(
                channels,
                out_channels,
                w_dim,
                resolution,
                img_channels=3,
                is_last=idx == n_blocks - 1,
                use_fp16=config.use_fp16,
                conv_clamp=config.conv_clamp,
                upsample=upsample,
            )
            setattr(self, f"block{idx}", block)
            channels = out_channels
        self.num_blocks = n_blocks
        if config.filter_buffer:
            # Unused by the computation; present in the 8X / 2X checkpoints, so kept for loading.
            self.register_buffer("resample_filter", ops.setup_filter([1, 3, 3, 1]))

    def forward(
        self,
        rgb: torch.Tensor,
        x: torch.Tensor,
        ws: torch.Tensor,
        noise_mode: NoiseMode = "none",
        fused_modconv: bool | None = None,
        rng: RandomSource = None,
    ) -> torch.Tensor:
        ws = ws[:, -1:, :].repeat(1, 3, 1)
        if x.shape[-1] != self.input_resolution:
            size = (self.input_resolution, self.input_resolution)
            x = F.interpolate(
                x, size=size, mode="bilinear", align_corners=False, antialias=self.antialias
            )
            rgb = F.interpolate(
                rgb, size=size, mode="bilinear", align_corners=False, antialias=self.antialias
            )
        for idx in range(self.num_blocks):
            x, rgb = getattr(self, f"block{idx}")(x, rgb, ws, noise_mode, fused_modconv, rng)
        return rgb
