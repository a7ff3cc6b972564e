"""The distilled student: a pose-conditioned convolutional generator (Shahbazi et al., 2023).

Data path (docs/method.md, "Architecture"):

    w  = teacher mapping(z, frontal c)          # [N, w_dim], a copy of the teacher's, frozen
    w' = student mapping(w, c)                  # [N, num_ws, w_dim], c = the target camera
    f  = S2D(w')                                # [N, 32, r, r] feature image, first 3 = RGB
    img = super-resolution(rgb, f, w)           # [N, 3, R, R], the teacher's SR architecture

The student keeps a frozen copy of the teacher's z -> w mapping (``mapping``), so a checkpoint
renders from a seed on its own, exactly like the teacher; ``synthesis(w, c)`` is the part that is
trained and exported. Camera conventions (radius, pivot, focal length) are the teacher's,
recorded in ``StudentConfig.teacher``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .eg3d.config import (
    MAX_CHANNEL_BASE,
    MAX_CHANNELS,
    MAX_CLAMP,
    MAX_LAYERS,
    MAX_SCALE,
    EG3DConfig,
    RenderingConfig,
    SuperResolutionConfig,
    _known,
    check_choice,
    check_float,
    check_int,
)
from .eg3d.superres import SuperResolution
from .errors import ConfigError
from .rng import RandomSource
from .stylegan2 import MappingNetwork, NoiseMode, SynthesisNetwork, _check_shape

SRConditioning = Literal["w", "w_prime"]


@dataclass(frozen=True)
class StudentConfig:
    """Architecture of a student. ``teacher`` is the architecture of the teacher it mirrors."""

    teacher: EG3DConfig = field(default_factory=EG3DConfig)
    mapping_layers: int = 4  # FC layers of the new (w, c) -> w' mapping
    mapping_lr_multiplier: float = 0.01  # StyleGAN2's slow mapping learning rate
    # S2D channels at resolution r: min(channel_base / r, channel_max), like StyleGAN2.
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 0  # highest S2D resolutions run in fp16 on CUDA (0 = none)
    conv_clamp: float | None = None  # clamp S2D activations (StyleGAN2 uses 256 with fp16)
    # None = the teacher's super-resolution (initialised from its weights); a smaller
    # SuperResolutionConfig gives a lighter student whose SR is trained from scratch.
    superresolution: SuperResolutionConfig | None = None
    # What modulates the SR: the teacher's w ("w", so a copied SR starts out as the teacher's
    # given the same feature image) or the student's w' ("w_prime").
    sr_conditioning: SRConditioning = "w"

    def __post_init__(self) -> None:
        owner = "student."
        if not isinstance(self.teacher, EG3DConfig):
            raise ConfigError("student.teacher must be an EG3DConfig")
        if self.superresolution is not None and not isinstance(
            self.superresolution, SuperResolutionConfig
        ):
            raise ConfigError("student.superresolution must be a SuperResolutionConfig or null")
        check_int(owner, "mapping_layers", self.mapping_layers, 1, MAX_LAYERS)
        check_int(owner, "channel_base", self.channel_base, 1, MAX_CHANNEL_BASE)
        check_int(owner, "channel_max", self.channel_max, 1, MAX_CHANNELS)
        check_int(owner, "num_fp16_res", self.num_fp16_res, 0, 16)
        multiplier = check_float(
            owner, "mapping_lr_multiplier", self.mapping_lr_multiplier, 0.0, MAX_SCALE, True
        )
        object.__setattr__(self, "mapping_lr_multiplier", multiplier)
        if self.conv_clamp is not None:
            clamp = check_float(owner, "conv_clamp", self.conv_clamp, 0.0, MAX_CLAMP, True)
            object.__setattr__(self, "conv_clamp", clamp)
        check_choice(owner, "sr_conditioning", self.sr_conditioning, ("w", "w_prime"))
        if self.channel_base < self.teacher.neural_rendering_resolution:
            raise ConfigError(
                f"student.channel_base ({self.channel_base}) must be >= the teacher's "
                f"neural_rendering_resolution ({self.teacher.neural_rendering_resolution}): "
                "the last S2D block would get 0 channels"
            )
        sr = self.sr
        if sr.output_resolution != self.teacher.img_resolution:
            raise ConfigError(
                f"student super-resolution gives {sr.output_resolution} px but the teacher's "
                f"images are {self.teacher.img_resolution} px"
            )

    @property
    def sr(self) -> SuperResolutionConfig:
        """The super-resolution the student uses (the teacher's unless overridden)."""
        return self.superresolution or self.teacher.superresolution

    @property
    def sr_is_teachers(self) -> bool:
        """True when the SR has the teacher's architecture, so its weights can be copied."""
        return self.sr == self.teacher.superresolution

    @property
    def rendering(self) -> RenderingConfig:
        """The teacher's camera conventions (radius, pivot, focal length)."""
        return self.teacher.rendering

    @property
    def img_resolution(self) -> int:
        return self.teacher.img_resolution

    @property
    def neural_rendering_resolution(self) -> int:
        return self.teacher.neural_rendering_resolution

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentConfig:
        """Inverse of ``to_dict``; unknown keys are an error."""
        data = dict(_known(cls, data))
        teacher = EG3DConfig.from_dict(data.pop("teacher", {}))
        sr = data.pop("superresolution", None)
        sr_config = SuperResolutionConfig(**_known(SuperResolutionConfig, sr)) if sr else None
        return cls(teacher=teacher, superresolution=sr_config, **_known(cls, data))

    def replace(self, **changes: Any) -> StudentConfig:
        return dataclasses.replace(self, **changes)


class Student(nn.Module):
    """(w, c) -> image, feature image and low-resolution RGB, like the teacher's ``synthesis``."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        t = config.teacher
        # Frozen copy of the teacher's z -> w mapping; parameter names as in the teacher
        # (``backbone.mapping.*`` there), so it is copied by name.
        self.teacher_mapping = MappingNetwork(
            t.z_dim, t.c_dim, t.w_dim, num_ws=_teacher_num_ws(t), num_layers=t.mapping_layers
        )
        self.teacher_mapping.requires_grad_(False)
        self.synthesis_net = SynthesisNetwork(
            w_dim=t.w_dim,
            img_resolution=t.neural_rendering_resolution,
            img_channels=t.feature_channels,
            channel_base=config.channel_base,
            channel_max=config.channel_max,
            num_fp16_res=config.num_fp16_res,
            conv_clamp=config.conv_clamp,
        )
        # The new mapping: w takes z's place (normalised), c is embedded and normalised as in
        # EG3D's mapping; w_avg_beta=None because truncation happens on the teacher's w.
        self.student_mapping = MappingNetwork(
            z_dim=t.w_dim,
            c_dim=t.c_dim,
            w_dim=t.w_dim,
            num_ws=self.synthesis_net.num_ws,
            num_layers=config.mapping_layers,
            lr_multiplier=config.mapping_lr_multiplier,
            w_avg_beta=None,
        )
        self.superresolution = SuperResolution(
            config.sr, t.feature_channels, t.w_dim, t.rendering.sr_antialias
        )

    @property
    def z_dim(self) -> int:
        return self.config.teacher.z_dim

    @property
    def w_dim(self) -> int:
        return self.config.teacher.w_dim

    @property
    def num_ws(self) -> int:
        """ws from ``mapping`` are broadcast to this many rows (the teacher's count)."""
        return _teacher_num_ws(self.config.teacher)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but the frozen teacher mapping."""
        return [p for name, p in self.named_parameters() if not name.startswith("teacher_mapping.")]

    def mapping(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        """The teacher's mapping: z [N, z_dim], conditioning camera c [N, 25] -> ws [N, K, w_dim].

        Same result as the teacher's ``mapping`` (including truncation towards its w_avg).
        """
        c = self.config.rendering.mapping_condition(c)
        return self.teacher_mapping(z, c, truncation_psi, truncation_cutoff)

    @property
    def w_avg(self) -> torch.Tensor:
        return self.teacher_mapping.w_avg

    def synthesis(
        self,
        ws: torch.Tensor,
        c: torch.Tensor,
        noise_mode: NoiseMode = "const",
        rng: RandomSource = None,
        fused_modconv: bool | None = None,
        **_ignored: object,
    ) -> dict[str, torch.Tensor]:
        """Render w from cameras c [N, 25].

        ``ws`` is the teacher's w, [N, w_dim] or [N, K, w_dim] as ``mapping`` returns; with K
        rows the student mapping reads the first and the SR the last (as the teacher's SR does),
        which only differ under a truncation cutoff. Volumetric settings a teacher takes
        (depth samples, neural-rendering resolution) are accepted and ignored, so callers can
        treat both models alike. Returns ``image`` [N, 3, R, R], ``image_raw`` [N, 3, r, r] and
        ``feature`` [N, C, r, r] (first 3 channels = image_raw).
        """
        w_first, w_last = _split_ws(ws, self.w_dim)
        if c.ndim != 2 or c.shape[1] != 25:
            raise ValueError(
                f"camera label c must have shape [N, 25] (16 cam2world + 9 intrinsics), got {list(c.shape)}"
            )
        if c.shape[0] != w_first.shape[0]:
            raise ValueError(f"batch of c ({c.shape[0]}) differs from batch of w ({ws.shape[0]})")
        with torch.autograd.profiler.record_function("student.mapping"):
            w_prime = self.student_mapping(w_first, c)  # [N, num_ws_s2d, w_dim]
        with torch.autograd.profiler.record_function("student.s2d"):
            feature = self.synthesis_net(w_prime, noise_mode, fused_modconv, rng)
        rgb = feature[:, :3]
        sr_w = w_last if self.config.sr_conditioning == "w" else w_prime[:, -1]
        with torch.autograd.profiler.record_function("student.superresolution"):
            image = self.superresolution(
                rgb,
                feature,
                sr_w.unsqueeze(1),
                noise_mode=self.config.teacher.rendering.superresolution_noise_mode,
                fused_modconv=fused_modconv,
                rng=rng,
            )
        return {"image": image, "image_raw": rgb, "feature": feature}

    def forward(self, w: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
        """``student(w, c)``: the trained part, as exported (constant noise, no RNG)."""
        return self.synthesis(w, c, noise_mode="const")


def _teacher_num_ws(teacher: EG3DConfig) -> int:
    """ws of the teacher's backbone: 1 conv at 4 px, 2 per block up to the planes, +1 toRGB."""
    n_blocks = teacher.plane_resolution.bit_length() - 2  # 4, 8, ..., plane_resolution
    return 1 + 2 * (n_blocks - 1) + 1


def _split_ws(ws: torch.Tensor, w_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    if ws.ndim == 2:
        _check_shape(ws, [None, w_dim], "w")
        return ws, ws
    _check_shape(ws, [None, None, w_dim], "ws")
    return ws[:, 0], ws[:, -1]


# The poses a student checkpoint is trusted for when its metadata does not say: 1.5x the default
# training camera limits (what the held-out evaluation covers). Training records its own.
DEFAULT_POSE_RANGE = {"yaw_deg": 75.0, "pitch_deg": 30.0}


def _light_sr(
    teacher: EG3DConfig, channels: tuple[int, int], clamp: float | None
) -> SuperResolutionConfig:
    """A two-block super-resolution of the teacher's input and output sizes, ``channels`` wide
    (trained from scratch: its weights cannot come from the teacher's)."""
    sr = teacher.superresolution
    return SuperResolutionConfig(
        "custom", sr.input_resolution, channels, sr.block_upsample, False, sr.use_fp16, clamp
    )


# Light students: a fraction of the paper's ST2 cost, for CPU serving. The cost of ST2 at 512 px
# is the teacher-sized SR (256 and 128 channels at 256 and 512 px, ~75 % of its FLOPs) and a
# 256-channel S2D at 128 px; these keep the layout and cut the widths, most at high resolution.
# name -> (teacher preset, S2D channel_base, S2D channel_max, SR block channels). Each FFHQ one
# has a demo-world mirror with the same ratios, where its fidelity can be measured first.
LIGHT_STUDENTS: dict[str, tuple[str, int, int, tuple[int, int]]] = {
    # 1/4 the S2D base width, 1/4 and 1/8 the SR widths: ~14 GFLOP/image vs ST2's ~260
    "ffhq512-light": ("ffhq512", 8192, 256, (64, 16)),
    # 1/8 the S2D base width, 1/8 and 1/16 the SR widths: ~4 GFLOP/image
    "ffhq512-lighter": ("ffhq512", 4096, 128, (32, 8)),
    "demo-light": ("demo", 1024, 64, (16, 8)),  # mirrors ffhq512-light
    "demo-lighter": ("demo", 512, 32, (8, 4)),  # mirrors ffhq512-lighter
}
# Which demo-world preset trains the same-shaped student as each light FFHQ preset.
LIGHT_DEMO_MIRROR = {"ffhq512-light": "demo-light", "ffhq512-lighter": "demo-lighter"}


def teacher_preset_of(name: str) -> str:
    """The teacher preset a student preset distils (itself, except for the light students)."""
    return LIGHT_STUDENTS[name][0] if name in LIGHT_STUDENTS else name


def student_preset(name: str, **overrides: Any) -> StudentConfig:
    """The student mirroring a teacher preset (``ffhq512``, ``afhq512``, ``shapenet128``, ``tiny``,
    ``demo``), or a light student of one (``LIGHT_STUDENTS``: ``ffhq512-light``, ...).

    The 512 px students use StyleGAN2's widths up to 128 px and the teacher's SR (the paper's
    ST2); ``tiny`` matches the tiny teacher for tests and ``demo`` the demo world's teacher.
    ``overrides`` replace fields by name.
    """
    from .eg3d.presets import preset

    teacher = preset(teacher_preset_of(name))
    if name in LIGHT_STUDENTS:
        _, channel_base, channel_max, sr_channels = LIGHT_STUDENTS[name]
        sr = _light_sr(teacher, sr_channels, teacher.superresolution.conv_clamp)
        base = StudentConfig(
            teacher=teacher, channel_base=channel_base, channel_max=channel_max, superresolution=sr
        )
    elif name == "tiny":
        base = StudentConfig(teacher=teacher, mapping_layers=2, channel_base=512, channel_max=32)
    elif name in ("demo", "demo-face"):  # the demo teachers' backbone widths: ~1.5 M parameters
        base = StudentConfig(teacher=teacher, channel_base=4096, channel_max=128)
    else:
        base = StudentConfig(teacher=teacher)
    return base.replace(**overrides) if overrides else base


def student_from_teacher(teacher: nn.Module, config: StudentConfig | None = None) -> Student:
    """A new student for ``teacher``: its mapping copied and frozen, its SR copied when alike.

    ``config`` defaults to the teacher's architecture with the standard S2D widths; its
    ``teacher`` field is always replaced by the real teacher's config.
    """
    from .eg3d.generator import TriPlaneGenerator

    if not isinstance(teacher, TriPlaneGenerator):
        raise ConfigError(
            f"a student is distilled from an EG3D teacher, got {type(teacher).__name__}"
        )
    config = (config or StudentConfig()).replace(teacher=teacher.config)
    student = Student(config).to(next(teacher.parameters()).device)
    with torch.no_grad():
        mapping_state = teacher.backbone.mapping.state_dict()
        student.teacher_mapping.load_state_dict(mapping_state, strict=True)
        if config.sr_is_teachers:
            student.superresolution.load_state_dict(
                teacher.superresolution.state_dict(), strict=True
            )
    return student
