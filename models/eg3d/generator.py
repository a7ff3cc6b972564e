"""The EG3D tri-plane generator (``training/triplane.py`` of NVlabs/eg3d).

z, c -> mapping -> ws -> StyleGAN2 backbone -> three feature planes -> volume rendering of a
low-resolution feature image -> super-resolution -> image. Parameter names are upstream's, so an
official ``G_ema`` state dict loads with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..rng import RandomSource
from ..stylegan2 import NoiseMode, StyleGAN2Generator
from .config import EG3DConfig
from .renderer import ImportanceRenderer, TriPlaneDecoder, sample_rays
from .superres import SuperResolution


class TriPlaneGenerator(nn.Module):
    """EG3D's generator, built from an ``EG3DConfig``.

    Unlike upstream, ``synthesis`` never mutates the module (no stored rendering resolution, no
    cached planes): per-call settings are arguments, so one instance can serve concurrent requests.
    """

    def __init__(self, config: EG3DConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = StyleGAN2Generator(
            z_dim=config.z_dim,
            c_dim=config.c_dim,
            w_dim=config.w_dim,
            img_resolution=config.plane_resolution,
            img_channels=3 * config.plane_channels,
            mapping_layers=config.mapping_layers,
            channel_base=config.channel_base,
            channel_max=config.channel_max,
        )
        self.renderer = ImportanceRenderer(config.plane_order)
        self.decoder = TriPlaneDecoder(
            config.plane_channels,
            config.decoder_hidden,
            config.feature_channels,
            config.decoder_lr_mul,
        )
        self.superresolution = SuperResolution(
            config.superresolution,
            config.feature_channels,
            config.w_dim,
            config.rendering.sr_antialias,
        )
        # Registered by EG3D's training loop (std of the dataset's labels); kept so state dicts
        # round-trip. Not used at inference.
        self.register_buffer("dataset_label_std", torch.ones([config.c_dim]))

    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    @property
    def w_avg(self) -> torch.Tensor:
        """The average w that truncation pulls towards (as a student exposes its copy's)."""
        return self.backbone.mapping.w_avg

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def w_dim(self) -> int:
        return self.config.w_dim

    def mapping(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        """z [N, z_dim] and the conditioning camera c [N, 25] -> ws [N, num_ws, w_dim]."""
        c = self.config.rendering.mapping_condition(c)
        return self.backbone.mapping(z, c, truncation_psi, truncation_cutoff)

    def synthesize_planes(
        self,
        ws: torch.Tensor,
        noise_mode: NoiseMode = "random",
        fused_modconv: bool | None = None,
        rng: RandomSource = None,
    ) -> torch.Tensor:
        """ws -> tri-planes [N, 3, C, H, W]; reuse them to render many views of one identity."""
        with torch.autograd.profiler.record_function("eg3d.backbone"):
            planes = self.backbone.synthesis(ws, noise_mode, fused_modconv, rng)
        return planes.view(len(planes), 3, self.config.plane_channels, *planes.shape[-2:])

    def synthesis(
        self,
        ws: torch.Tensor,
        c: torch.Tensor,
        neural_rendering_resolution: int | None = None,
        noise_mode: NoiseMode = "random",
        depth_resolution: int | None = None,
        depth_resolution_importance: int | None = None,
        rng: RandomSource = None,
        fused_modconv: bool | None = None,
        planes: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Render ws from cameras c [N, 25].

        Returns ``image`` [N, 3, R, R] (not clamped, nominally [-1, 1]), ``image_raw`` [N, 3, r, r],
        ``feature`` [N, 32, r, r] (the rendered feature image, its first 3 channels are image_raw),
        ``image_depth`` [N, 1, r, r] (distance along the unit ray direction), ``image_alpha``
        [N, 1, r, r] (accumulated opacity: 0 where a ray sees only background).
        ``rng`` makes the stochastic parts reproducible (backbone noise in 'random' mode, ray
        jitter, importance samples); ``planes`` skips the backbone.
        """
        if c.ndim != 2 or c.shape[1] != 25:
            raise ValueError(
                f"camera label c must have shape [N, 25] (16 cam2world + 9 intrinsics), got {list(c.shape)}"
            )
        if c.shape[0] != ws.shape[0]:
            raise ValueError(f"batch of c ({c.shape[0]}) differs from batch of ws ({ws.shape[0]})")
        resolution = neural_rendering_resolution or self.config.neural_rendering_resolution
        cam2world = c[:, :16].view(-1, 4, 4)
        intrinsics = c[:, 16:25].view(-1, 3, 3)
        origins, directions = sample_rays(cam2world, intrinsics, resolution)
        n = ws.shape[0]

        if planes is None:
            planes = self.synthesize_planes(ws, noise_mode, fused_modconv, rng)
        with torch.autograd.profiler.record_function("eg3d.render"):
            features, depth, alpha = self.renderer(
                planes,
                self.decoder,
                origins,
                directions,
                self.config.rendering,
                depth_resolution,
                depth_resolution_importance,
                rng,
            )
        feature_image = features.permute(0, 2, 1).reshape(
            n, features.shape[-1], resolution, resolution
        )
        feature_image = feature_image.contiguous()
        depth_image = depth.permute(0, 2, 1).reshape(n, 1, resolution, resolution)
        alpha_image = alpha.permute(0, 2, 1).reshape(n, 1, resolution, resolution)
        rgb_image = feature_image[:, :3]
        with torch.autograd.profiler.record_function("eg3d.superresolution"):
            image = self.superresolution(
                rgb_image,
                feature_image,
                ws,
                noise_mode=self.config.rendering.superresolution_noise_mode,
                fused_modconv=fused_modconv,
                rng=rng,
            )
        return {
            "image": image,
            "image_raw": rgb_image,
            "image_depth": depth_image,
            "image_alpha": alpha_image,
            "feature": feature_image,
        }

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        **synthesis_kwargs: object,
    ) -> dict[str, torch.Tensor]:
        """Upstream's ``G(z, c)``: the same camera conditions the mapping and renders."""
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, c, **synthesis_kwargs)  # type: ignore[arg-type]
