"""Typed configuration of the EG3D tri-plane generator.

Upstream keeps this in free-form ``rendering_kwargs`` dicts read with ``.get(key, default)`` in
several files; here every setting is a field with a unit and a check. ``from_dict``/``to_dict``
give the JSON stored in our checkpoints; ``official.py`` builds these from an official pickle.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError

PlaneOrder = Literal["original", "corrected"]

# Which two world axes index (u, v) on each of the three planes.
# "original" is EG3D's as released (xy, xz, zx), which every official checkpoint was trained with;
# "corrected" (xy, yz, zx) is the fix of NVlabs/eg3d#67 used by some fine-tuned forks.
PLANE_AXES: dict[str, tuple[tuple[int, int], ...]] = {
    "original": ((0, 1), (0, 2), (2, 0)),
    "corrected": ((0, 1), (1, 2), (2, 0)),
}

SR_VARIANTS = ("hybrid8xdc", "hybrid8x", "hybrid2x", "custom")


@dataclass(frozen=True)
class RenderingConfig:
    """Volume-rendering settings (EG3D's ``rendering_kwargs``, the inference-relevant subset)."""

    ray_start: float | None = 2.25  # near bound along the ray; None = ray/box intersection ('auto')
    ray_end: float | None = 3.3  # far bound; None together with ray_start
    box_warp: float = 1.0  # side length of the cube the tri-planes span, world units
    depth_resolution: int = 48  # stratified (coarse) samples per ray
    depth_resolution_importance: int = 48  # importance (fine) samples per ray; 0 disables
    white_back: bool = False  # composite onto white instead of black (ShapeNet)
    c_gen_conditioning_zero: bool = False  # mapping ignores the camera (ShapeNet)
    c_scale: float = 1.0  # multiplies the conditioning camera before the mapping
    superresolution_noise_mode: Literal["random", "const", "none"] = "none"
    sr_antialias: bool = True  # antialias when resizing the SR input to its native size
    avg_camera_radius: float = 2.7  # camera distance from the world origin, world units
    avg_camera_pivot: tuple[float, float, float] = (0.0, 0.0, 0.2)  # look-at point
    focal_length: float = 4.2647  # default normalised focal length (fx / width) of cameras

    def __post_init__(self) -> None:
        if (self.ray_start is None) != (self.ray_end is None):
            raise ConfigError("ray_start and ray_end must both be numbers or both be None ('auto')")
        if self.ray_start is not None and not 0 <= self.ray_start < self.ray_end:  # type: ignore[operator]
            raise ConfigError(
                f"need 0 <= ray_start < ray_end, got {self.ray_start}, {self.ray_end}"
            )
        if self.depth_resolution < 2:
            raise ConfigError(f"depth_resolution must be >= 2, got {self.depth_resolution}")
        if self.depth_resolution_importance < 0:
            raise ConfigError("depth_resolution_importance must be >= 0")
        if self.box_warp <= 0 or self.avg_camera_radius <= 0 or self.focal_length <= 0:
            raise ConfigError("box_warp, avg_camera_radius and focal_length must be positive")
        if self.superresolution_noise_mode not in ("random", "const", "none"):
            raise ConfigError(
                f"superresolution_noise_mode must be random, const or none, "
                f"got {self.superresolution_noise_mode!r}"
            )
        object.__setattr__(self, "avg_camera_pivot", tuple(float(v) for v in self.avg_camera_pivot))
        if len(self.avg_camera_pivot) != 3:
            raise ConfigError(f"avg_camera_pivot needs 3 numbers, got {self.avg_camera_pivot}")

    def mapping_condition(self, c: Any) -> Any:
        """The camera label as the mapping network sees it: zeroed (ShapeNet) or scaled."""
        return c.new_zeros(c.shape) if self.c_gen_conditioning_zero else c * self.c_scale


@dataclass(frozen=True)
class SuperResolutionConfig:
    """The super-resolution network: StyleGAN2 blocks that refine the rendered feature image.

    EG3D's three modules are presets of this one description (``SuperResolutionConfig.preset``):
    - hybrid8xdc (FFHQ): 128 -> 512, channels 256, 128;
    - hybrid8x (AFHQ): 128 -> 512, channels 128, 64, plus an unused top-level filter buffer;
    - hybrid2x (ShapeNet): 64 -> 128, channels 128 (no upsampling), 64, plus that buffer.
    """

    variant: str = "hybrid8xdc"  # one of SR_VARIANTS; "custom" for smaller students / demo models
    input_resolution: int = 128  # the feature image is resized to this before the first block
    block_channels: tuple[int, ...] = (256, 128)  # output channels of each block
    block_upsample: tuple[bool, ...] = (True, True)  # whether each block doubles the resolution
    filter_buffer: bool = False  # a top-level ``resample_filter`` buffer (8X and 2X have one)
    use_fp16: bool = True  # fp16 blocks on CUDA (upstream: sr_num_fp16_res > 0); CPU stays fp32
    conv_clamp: float | None = 256.0  # activation clamp (upstream: 256 when fp16 is enabled)

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_channels", tuple(int(c) for c in self.block_channels))
        object.__setattr__(self, "block_upsample", tuple(bool(u) for u in self.block_upsample))
        if self.variant not in SR_VARIANTS:
            raise ConfigError(
                f"unknown super-resolution variant {self.variant!r}; use {SR_VARIANTS}"
            )
        if not self.block_channels or len(self.block_channels) != len(self.block_upsample):
            raise ConfigError("block_channels and block_upsample need the same, non-zero length")
        if self.input_resolution < 4:
            raise ConfigError(f"input_resolution must be >= 4, got {self.input_resolution}")

    @property
    def output_resolution(self) -> int:
        return self.input_resolution * 2 ** sum(self.block_upsample)

    @classmethod
    def preset(cls, variant: str) -> SuperResolutionConfig:
        if variant == "hybrid8xdc":
            return cls(variant, 128, (256, 128), (True, True), filter_buffer=False)
        if variant == "hybrid8x":
            return cls(variant, 128, (128, 64), (True, True), filter_buffer=True)
        if variant == "hybrid2x":
            return cls(variant, 64, (128, 64), (False, True), filter_buffer=True)
        raise ConfigError(f"no preset for super-resolution variant {variant!r}")


@dataclass(frozen=True)
class EG3DConfig:
    """Architecture and rendering settings of a tri-plane generator."""

    z_dim: int = 512  # latent size
    w_dim: int = 512  # intermediate latent size
    c_dim: int = 25  # conditioning label size (16 cam2world + 9 intrinsics)
    img_resolution: int = 512  # final image side, pixels
    mapping_layers: int = 2  # fully connected layers in the mapping network
    # Backbone channels at resolution r: min(channel_base / r, channel_max).
    channel_base: int = 32768
    channel_max: int = 512
    plane_resolution: int = 256  # tri-plane side, pixels (the backbone's output resolution)
    plane_channels: int = 32  # feature channels per plane
    decoder_hidden: int = 64  # hidden width of the tri-plane decoder MLP
    feature_channels: int = 32  # channels of the rendered feature image (first 3 are RGB)
    decoder_lr_mul: float = 1.0
    neural_rendering_resolution: int = 128  # side of the volume-rendered feature image, pixels
    plane_order: PlaneOrder = "original"  # see PLANE_AXES
    superresolution: SuperResolutionConfig = field(default_factory=SuperResolutionConfig)
    rendering: RenderingConfig = field(default_factory=RenderingConfig)

    def __post_init__(self) -> None:
        positive = (
            "z_dim",
            "w_dim",
            "c_dim",
            "mapping_layers",
            "plane_channels",
            "decoder_hidden",
            "feature_channels",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("plane_resolution", "neural_rendering_resolution", "img_resolution"):
            value = getattr(self, name)
            if value < 4 or 2 ** int(math.log2(value)) != value:
                raise ConfigError(f"{name} must be a power of two >= 4, got {value}")
        if self.feature_channels < 3:
            raise ConfigError(
                f"feature_channels must be >= 3 (RGB first), got {self.feature_channels}"
            )
        if self.plane_order not in PLANE_AXES:
            raise ConfigError(
                f"plane_order must be one of {tuple(PLANE_AXES)}, got {self.plane_order!r}"
            )
        if self.superresolution.output_resolution != self.img_resolution:
            raise ConfigError(
                f"super-resolution turns {self.superresolution.input_resolution} px into "
                f"{self.superresolution.output_resolution} px, but img_resolution is {self.img_resolution}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EG3DConfig:
        """Inverse of ``to_dict``; unknown keys are an error so typos do not pass silently."""
        data = dict(data)
        sr = SuperResolutionConfig(**_known(SuperResolutionConfig, data.pop("superresolution", {})))
        rendering = RenderingConfig(**_known(RenderingConfig, data.pop("rendering", {})))
        return cls(**_known(cls, data), superresolution=sr, rendering=rendering)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(names)}"
        )
    return data
