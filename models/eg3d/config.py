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

# Bounds every config from a file is held to before anything is built from it: generous around
# the official models (512-wide latents, 512 channels, 256 px planes, 48 + 48 samples per ray), and
# small enough that building the model from an in-range config cannot exhaust memory by itself.
MAX_LATENT_DIM = 4096  # z_dim, w_dim
MAX_C_DIM = 1024
MAX_RESOLUTION = 4096  # image, plane, neural-rendering and SR input sides, pixels
MAX_LAYERS = 64  # mapping layers
MAX_CHANNEL_BASE = 1 << 20
MAX_CHANNELS = 4096  # channel_max, decoder width, SR block widths, plane / feature channels
MAX_SR_BLOCKS = 8
MAX_DEPTH_SAMPLES = 1024  # samples per ray, each of the two passes
MAX_WORLD = 1e4  # distances, box size, focal length and pivot coordinates, world units
MAX_SCALE = 1e4  # learning-rate multipliers, the camera-label scale
MAX_CLAMP = 1e6  # activation clamps


def shown(value: object) -> str:
    """A short description of a config value for an error (never a huge or nested repr)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return f"a {type(value).__name__}"


def check_int(owner: str, name: str, value: object, low: int, high: int) -> int:
    """An integer in [low, high]; bool is refused (JSON ``true`` is not a size)."""
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(
            f"{owner}{name} must be an integer in [{low}, {high}], got {shown(value)}"
        )
    return value


def check_power_of_two(owner: str, name: str, value: object, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high or value & (value - 1):
        raise ConfigError(
            f"{owner}{name} must be a power of two in [{low}, {high}], got {shown(value)}"
        )
    return value


def check_float(
    owner: str, name: str, value: object, low: float, high: float, low_open: bool = False
) -> float:
    """A finite number in [low, high] (or (low, high]); ints are accepted, bools and NaN not."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    inside = number is not None and math.isfinite(number) and number <= high
    inside = inside and (number > low if low_open else number >= low)  # type: ignore[operator]
    if not inside:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ConfigError(
            f"{owner}{name} must be a finite number in {interval}, got {shown(value)}"
        )
    return float(number)  # type: ignore[arg-type]


def check_flag(owner: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{owner}{name} must be true or false, got {shown(value)}")
    return value


def check_choice(owner: str, name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{owner}{name} must be one of {choices}, got {shown(value)}")
    return value


def _set(obj: object, name: str, value: object) -> None:
    """Store a normalised value on a frozen dataclass (ints given for floats become floats)."""
    object.__setattr__(obj, name, value)


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
        owner = "rendering."
        if (self.ray_start is None) != (self.ray_end is None):
            raise ConfigError("ray_start and ray_end must both be numbers or both be None ('auto')")
        if self.ray_start is not None:
            start = check_float(owner, "ray_start", self.ray_start, 0.0, MAX_WORLD)
            end = check_float(owner, "ray_end", self.ray_end, 0.0, MAX_WORLD)
            if not start < end:
                raise ConfigError(f"need 0 <= ray_start < ray_end, got {start}, {end}")
            _set(self, "ray_start", start)
            _set(self, "ray_end", end)
        check_int(owner, "depth_resolution", self.depth_resolution, 2, MAX_DEPTH_SAMPLES)
        check_int(
            owner, "depth_resolution_importance", self.depth_resolution_importance, 0,
            MAX_DEPTH_SAMPLES,
        )  # fmt: skip
        for name in ("box_warp", "avg_camera_radius", "focal_length"):
            _set(self, name, check_float(owner, name, getattr(self, name), 0.0, MAX_WORLD, True))
        _set(self, "c_scale", check_float(owner, "c_scale", self.c_scale, -MAX_SCALE, MAX_SCALE))
        for name in ("white_back", "c_gen_conditioning_zero", "sr_antialias"):
            check_flag(owner, name, getattr(self, name))
        check_choice(
            owner, "superresolution_noise_mode", self.superresolution_noise_mode,
            ("random", "const", "none"),
        )  # fmt: skip
        pivot = self.avg_camera_pivot
        if not isinstance(pivot, (list, tuple)) or len(pivot) != 3:
            raise ConfigError(f"{owner}avg_camera_pivot needs 3 numbers, got {shown(pivot)}")
        _set(self, "avg_camera_pivot", tuple(
            check_float(owner, "avg_camera_pivot", v, -MAX_WORLD, MAX_WORLD) for v in pivot
        ))  # fmt: skip

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
        owner = "superresolution."
        check_choice(owner, "variant", self.variant, SR_VARIANTS)
        check_int(owner, "input_resolution", self.input_resolution, 4, MAX_RESOLUTION)
        channels, upsample = self.block_channels, self.block_upsample
        for name, value in (("block_channels", channels), ("block_upsample", upsample)):
            if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_SR_BLOCKS:
                raise ConfigError(
                    f"{owner}{name} must list 1 to {MAX_SR_BLOCKS} blocks, got {shown(value)}"
                )
        if len(channels) != len(upsample):
            raise ConfigError("block_channels and block_upsample need the same, non-zero length")
        _set(self, "block_channels", tuple(
            check_int(owner, "block_channels", c, 1, MAX_CHANNELS) for c in channels
        ))  # fmt: skip
        _set(
            self, "block_upsample", tuple(check_flag(owner, "block_upsample", u) for u in upsample)
        )
        check_flag(owner, "filter_buffer", self.filter_buffer)
        check_flag(owner, "use_fp16", self.use_fp16)
        if self.conv_clamp is not None:
            _set(
                self,
                "conv_clamp",
                check_float(owner, "conv_clamp", self.conv_clamp, 0.0, MAX_CLAMP, True),
            )
        if self.output_resolution > MAX_RESOLUTION:
            raise ConfigError(
                f"super-resolution output {self.output_resolution} px exceeds {MAX_RESOLUTION} px"
            )

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
        for name, high in (
            ("z_dim", MAX_LATENT_DIM),
            ("w_dim", MAX_LATENT_DIM),
            ("c_dim", MAX_C_DIM),
        ):
            check_int("", name, getattr(self, name), 1, high)
        check_int("", "mapping_layers", self.mapping_layers, 1, MAX_LAYERS)
        check_int("", "channel_base", self.channel_base, 1, MAX_CHANNEL_BASE)
        for name in ("channel_max", "plane_channels", "decoder_hidden"):
            check_int("", name, getattr(self, name), 1, MAX_CHANNELS)
        check_int("", "feature_channels", self.feature_channels, 3, MAX_CHANNELS)  # RGB first
        for name in ("plane_resolution", "neural_rendering_resolution", "img_resolution"):
            check_power_of_two("", name, getattr(self, name), 4, MAX_RESOLUTION)
        self._check_sections()
        if self.channel_base < self.plane_resolution:
            raise ConfigError(
                f"channel_base ({self.channel_base}) must be >= plane_resolution "
                f"({self.plane_resolution}): the backbone's last block would get 0 channels"
            )
        _set(
            self,
            "decoder_lr_mul",
            check_float("", "decoder_lr_mul", self.decoder_lr_mul, 0.0, MAX_SCALE, True),
        )
        check_choice("", "plane_order", self.plane_order, tuple(PLANE_AXES))
        if self.superresolution.output_resolution != self.img_resolution:
            raise ConfigError(
                f"super-resolution turns {self.superresolution.input_resolution} px into "
                f"{self.superresolution.output_resolution} px, but img_resolution is {self.img_resolution}"
            )

    def _check_sections(self) -> None:
        if not isinstance(self.superresolution, SuperResolutionConfig):
            raise ConfigError("superresolution must be a SuperResolutionConfig")
        if not isinstance(self.rendering, RenderingConfig):
            raise ConfigError("rendering must be a RenderingConfig")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EG3DConfig:
        """Inverse of ``to_dict``; unknown keys are an error so typos do not pass silently."""
        data = dict(_known(cls, data))
        sr = SuperResolutionConfig(**_known(SuperResolutionConfig, data.pop("superresolution", {})))
        rendering = RenderingConfig(**_known(RenderingConfig, data.pop("rendering", {})))
        return cls(**_known(cls, data), superresolution=sr, rendering=rendering)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` if it is a JSON object naming only fields of ``cls``."""
    if not isinstance(data, dict):
        raise ConfigError(f"a {cls.__name__} must be a JSON object, got {shown(data)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(names)}"
        )
    return data
