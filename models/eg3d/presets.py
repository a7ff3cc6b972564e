"""Architectures of the official EG3D checkpoints, and a tiny one for tests.

Used by ``distill3d init`` to build randomly initialised generators, so the whole pipeline can be
run and measured without NVIDIA's weights. Values follow EG3D's ``train.py`` configs; the ShapeNet
mapping depth (8) is inferred from mmagic's conversion config, not read from the official file.
"""

from __future__ import annotations

from ..camera import SHAPENET_FOCAL
from ..errors import ConfigError
from .config import EG3DConfig, RenderingConfig, SuperResolutionConfig

FFHQ_RENDERING = RenderingConfig()  # the defaults are FFHQ's


def _ffhq512() -> EG3DConfig:
    return EG3DConfig()


def _afhq512() -> EG3DConfig:
    return EG3DConfig(
        superresolution=SuperResolutionConfig.preset("hybrid8x"),
        rendering=RenderingConfig(avg_camera_pivot=(0.0, 0.0, -0.06)),
    )


def _shapenet128() -> EG3DConfig:
    return EG3DConfig(
        img_resolution=128,
        mapping_layers=8,
        neural_rendering_resolution=64,
        superresolution=SuperResolutionConfig.preset("hybrid2x"),
        rendering=RenderingConfig(
            ray_start=0.1,
            ray_end=2.6,
            box_warp=1.6,
            depth_resolution=64,
            depth_resolution_importance=64,
            white_back=True,
            c_gen_conditioning_zero=True,
            avg_camera_radius=1.7,
            avg_camera_pivot=(0.0, 0.0, 0.0),
            focal_length=SHAPENET_FOCAL,
        ),
    )


def _tiny() -> EG3DConfig:
    """A few hundred thousand parameters: renders in milliseconds, for tests and smoke runs."""
    return EG3DConfig(
        z_dim=32,
        w_dim=32,
        img_resolution=64,
        mapping_layers=2,
        channel_base=1024,
        channel_max=32,
        plane_resolution=32,
        plane_channels=8,
        decoder_hidden=16,
        feature_channels=8,
        neural_rendering_resolution=16,
        superresolution=SuperResolutionConfig(
            "custom", 16, (32, 16), (True, True), use_fp16=False, conv_clamp=None
        ),
        rendering=RenderingConfig(depth_resolution=12, depth_resolution_importance=12),
    )


PRESETS = {
    "ffhq512": _ffhq512,
    "afhq512": _afhq512,
    "shapenet128": _shapenet128,
    "tiny": _tiny,
}


def preset(name: str) -> EG3DConfig:
    """The ``EG3DConfig`` of a named architecture (see ``PRESETS``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
