"""Architectures of the official EG3D checkpoints, and a tiny one for tests.

Used by ``distill3d init`` to build randomly initialised generators, so the whole pipeline can be
run and measured without NVIDIA's weights. Values follow EG3D's ``train.py`` configs; the ShapeNet
mapping depth (8) is inferred from mmagic's conversion config, not read from the official file.
"""

from __future__ import annotations

import dataclasses

from ..camera import SHAPENET_FOCAL
from ..errors import ConfigError
from .config import EG3DConfig, RenderingConfig, SuperResolutionConfig

FFHQ_RENDERING = RenderingConfig()  # the defaults are FFHQ's

# The demo world (training/demo/scenes.py): its latent size and its cameras.
DEMO_Z_DIM = 20
DEMO_CAMERA_RADIUS = 2.7
DEMO_FOCAL = 2.4  # normalised focal length: the frame spans ~1.1 world units at the pivot
# Framed the way FFHQ crops frame faces: the head fills the image (~0.84 world units across).
DEMO_FACE_FOCAL = 3.2


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


def _demo() -> EG3DConfig:
    """The demo world's teacher (``training/demo/teacher.py``): 128 px from a 32 px neural rendering,
    about 2.5 M parameters, trainable on a CPU in hours. The mapping ignores the camera
    (a scene does not depend on where it is seen from), like ShapeNet's."""
    return EG3DConfig(
        z_dim=DEMO_Z_DIM,
        w_dim=128,
        img_resolution=128,
        mapping_layers=2,
        channel_base=4096,
        channel_max=128,
        plane_resolution=64,
        plane_channels=16,
        decoder_hidden=32,
        feature_channels=16,
        neural_rendering_resolution=32,
        superresolution=SuperResolutionConfig(
            "custom", 32, (48, 24), (True, True), use_fp16=False, conv_clamp=None
        ),
        rendering=RenderingConfig(
            ray_start=2.05,
            ray_end=3.35,
            depth_resolution=24,
            depth_resolution_importance=24,
            c_gen_conditioning_zero=True,
            avg_camera_radius=DEMO_CAMERA_RADIUS,
            avg_camera_pivot=(0.0, 0.0, 0.0),
            focal_length=DEMO_FOCAL,
        ),
    )


def _demo_face() -> EG3DConfig:
    """The demo teacher framed like FFHQ: the face fills the 128 px image, so eyes, pupils,
    nose, mouth and brows cover several rays. It renders 64 x 64 rays (SR 2x, like ShapeNet's):
    a perfect 32 px rendering, upsampled, is only ~28 dB from the 128 px ground truth (17-18 dB
    inside the facial features), a perfect 64 px one ~32.5 dB, so a 29 dB teacher must render
    64 px. Finer tri-planes (128 px: a pupil spans ~5 texels) than ``demo``. Train it at batch 4
    on a CPU: 1.55 s a step on 2 cores, where batch 8 takes 4 s."""
    base = _demo()
    return dataclasses.replace(
        base,
        plane_resolution=128,
        neural_rendering_resolution=64,
        superresolution=SuperResolutionConfig(
            "custom", 64, (64, 32), (False, True), use_fp16=False, conv_clamp=None
        ),
        rendering=dataclasses.replace(base.rendering, focal_length=DEMO_FACE_FOCAL),
    )


PRESETS = {
    "ffhq512": _ffhq512,
    "afhq512": _afhq512,
    "shapenet128": _shapenet128,
    "tiny": _tiny,
    "demo": _demo,
    "demo-face": _demo_face,
}


def preset(name: str) -> EG3DConfig:
    """The ``EG3DConfig`` of a named architecture (see ``PRESETS``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def matching_preset(config: EG3DConfig) -> str | None:
    """The name of the preset whose architecture ``config`` is, if any."""
    for name, make in PRESETS.items():
        if make() == config:
            return name
    return None
