"""Typed configuration of a distillation run.

One frozen dataclass per concern, nested in ``TrainConfig``. A run is described by defaults, then
an optional YAML file, then command-line flags (each flag overrides one field by name). The
resolved config is saved as ``config.json`` in the run directory, and ``--resume`` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..models.config_files import read_config_file
from ..models.errors import ConfigError

CameraSource = Literal["auto", "dataset", "distribution"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class CameraDistribution:
    """Target poses when no dataset supplies them: frontal-heavy, like FFHQ's.

    Yaw and pitch are drawn from normal distributions clipped to ±max (degrees, camera around the
    teacher's pivot at its radius; pitch is elevation).
    """

    yaw_std_deg: float = 25.0
    yaw_max_deg: float = 50.0
    pitch_std_deg: float = 8.0
    pitch_max_deg: float = 20.0

    def __post_init__(self) -> None:
        for name in ("yaw_std_deg", "yaw_max_deg", "pitch_std_deg", "pitch_max_deg"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"cameras.{name} must be a finite number >= 0")
        if self.pitch_max_deg >= 90:
            raise ConfigError("cameras.pitch_max_deg must be below 90 (the camera would flip)")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (docs/method.md, "Training")."""

    lr_feature: float = 1.0  # L1 between teacher and student low-resolution feature images
    lr_rgb: float = 1.0  # L1 between their low-resolution RGB (the feature image's first 3)
    hr_l1: float = 1.0  # L1 between the final images
    hr_lpips: float = 1.0  # LPIPS between the final images (0 or use_lpips=False to disable)
    adversarial: float = 0.1  # stage 2: non-saturating GAN loss of the student
    # L1 between the student's paired views warped onto each other with the teacher's depth
    # (training/losses.py consistency_loss); > 0 renders the batch as pairs (pair_offset_deg)
    consistency: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"loss.{f.name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class DiscriminatorSettings:
    """Stage 2's camera-conditioned dual discriminator and its regularisation."""

    channel_base: int = 32768
    channel_max: int = 512
    lr: float = 0.002
    r1_gamma: float = 1.0  # R1 weight (EG3D FFHQ uses 1)
    r1_interval: int = 16  # lazy regularisation: R1 every N steps, scaled by N
    real_mix: float = 0.5  # fraction of D's "real" batch that is real images (rest: teacher)
    c_noise: float = 0.0  # EG3D's disc_c_noise: Gaussian noise on D's camera, x label std

    def __post_init__(self) -> None:
        if self.channel_base < 1 or self.channel_max < 1:
            raise ConfigError("discriminator channel_base and channel_max must be positive")
        if not 0 <= self.real_mix <= 1:
            raise ConfigError(f"discriminator.real_mix must be in [0, 1], got {self.real_mix}")
        if self.r1_interval < 1:
            raise ConfigError("discriminator.r1_interval must be >= 1")
        if self.lr <= 0 or self.r1_gamma < 0 or self.c_noise < 0:
            raise ConfigError("discriminator lr must be > 0, r1_gamma and c_noise >= 0")


@dataclass(frozen=True)
class StudentSettings:
    """Architecture overrides of the student (None = the preset mirroring the teacher)."""

    mapping_layers: int | None = None
    # Learning-rate multiplier of the (w, c) -> w' mapping. StyleGAN2's 0.01 keeps a GAN's
    # mapping stable, but here the mapping is the student's only path for the camera.
    mapping_lr_multiplier: float | None = None
    channel_base: int | None = None
    channel_max: int | None = None
    sr_channels: tuple[int, ...] | None = None  # a lighter SR: output channels per block
    sr_conditioning: Literal["w", "w_prime"] | None = None

    def overrides(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if v is not None and k != "sr_channels"
        }


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved with it and restored by ``--resume``."""

    teacher: str = ""  # teacher model: checkpoint folder, official .pkl or 'default'
    stage: int = 1  # 1: reconstruction; 2: reconstruction + adversarial
    # The run directory (or student checkpoint) to start from: stage 2's stage-1 run; at stage 1 a
    # warm start under new settings. Its student's architecture is kept (no student.* overrides).
    init_from: str | None = None
    steps: int = 10_000  # optimisation steps in total (a resumed run continues to this)
    batch_size: int = 8  # global batch, split evenly over processes
    seed: int = 0  # everything random derives from it: init, latents, poses, ray jitter
    truncation_psi: float = 1.0  # truncation of the teacher's z when sampling identities
    dataset: str | None = None  # EG3D-style folder/zip with dataset.json (poses, stage-2 reals)
    camera_source: CameraSource = "auto"  # auto: the dataset's poses if given, else cameras
    cameras: CameraDistribution = field(default_factory=CameraDistribution)
    cache: str | None = None  # pre-rendered teacher shards (`distill3d cache`) instead of live
    teacher_depth_samples: int | None = None  # None = the teacher's own setting
    teacher_importance_samples: int | None = None
    pair_offset_deg: float = 10.0  # the consistency loss's second view: this much more yaw
    lr: float = 0.002  # Adam learning rate of the student
    betas: tuple[float, float] = (0.0, 0.99)  # StyleGAN2's Adam betas
    grad_clip: float = 10.0  # clip the global gradient norm (non-finite gradients are zeroed)
    ema_kimg: float = 10.0  # EMA half-life in thousands of images
    ema_rampup: float | None = 0.05  # EMA half-life at most this fraction of images seen
    loss: LossWeights = field(default_factory=LossWeights)
    use_lpips: bool = True
    lpips: str | None = None  # LPIPS weights: file or folder (None: search local caches)
    discriminator: DiscriminatorSettings = field(default_factory=DiscriminatorSettings)
    student: StudentSettings = field(default_factory=StudentSettings)
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    device: str = "auto"  # auto: cuda when available (one per process under torchrun)
    checkpoint_every: int = 500  # steps between checkpoints (a killed run loses at most this)
    sample_every: int = 500  # steps between sample grids and held-out PSNR
    log_every: int = 10  # steps between TensorBoard scalars
    eval_samples: int = 16  # held-out latents x poses for the PSNR printed at sample time

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, got {self.stage}")
        if self.stage == 2 and not self.init_from:
            raise ConfigError(
                "stage 2 starts from a stage-1 run: pass --init-from RUN_DIR (the stage-1 --out)"
            )
        if self.init_from and self.student != StudentSettings():
            raise ConfigError(
                f"--init-from {self.init_from} keeps that student's architecture: drop the "
                "student.* settings, or start a fresh student without --init-from"
            )
        for name in ("steps", "batch_size", "checkpoint_every", "sample_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.truncation_psi <= 1:
            raise ConfigError(f"truncation_psi must be in (0, 1], got {self.truncation_psi}")
        if self.camera_source not in ("auto", "dataset", "distribution"):
            raise ConfigError(
                f"camera_source must be auto, dataset or distribution, got {self.camera_source!r}"
            )
        if self.camera_source == "dataset" and not self.dataset:
            raise ConfigError("camera_source 'dataset' needs --dataset PATH")
        if self.lr <= 0 or self.grad_clip <= 0 or self.ema_kimg < 0:
            raise ConfigError("lr and grad_clip must be > 0, ema_kimg >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.eval_samples < 1:
            raise ConfigError("eval_samples must be >= 1")
        if not (math.isfinite(self.pair_offset_deg) and 0 < self.pair_offset_deg <= 90):
            raise ConfigError(f"pair_offset_deg must be in (0, 90], got {self.pair_offset_deg}")
        if self.loss.consistency > 0 and self.cache:
            raise ConfigError(
                "loss.consistency needs the teacher's depth of paired views, which a teacher "
                "cache does not hold: train with live renders (no --cache) or consistency 0"
            )
        if self.loss.consistency > 0 and self.batch_size % 2:
            raise ConfigError(
                f"loss.consistency renders the batch as view pairs: batch_size must be even, "
                f"got {self.batch_size}"
            )

    @property
    def paired_views(self) -> float | None:
        """The yaw offset of each identity's second view when the batch is rendered as pairs."""
        return self.pair_offset_deg if self.loss.consistency > 0 else None

    @property
    def uses_dataset_poses(self) -> bool:
        return self.camera_source == "dataset" or (
            self.camera_source == "auto" and self.dataset is not None
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from nested dicts (YAML/JSON); unknown keys are an error, naming the known ones."""
        if not isinstance(data, dict):
            raise ConfigError(f"a training config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        nested = {
            "cameras": CameraDistribution,
            "loss": LossWeights,
            "discriminator": DiscriminatorSettings,
            "student": StudentSettings,
        }
        kwargs: dict[str, Any] = {}
        for name, sub_cls in nested.items():
            if name in data:
                sub = data.pop(name)
                if not isinstance(sub, dict):
                    raise ConfigError(f"{name} must be a mapping of fields, got {sub!r}")
                kwargs[name] = sub_cls(**_checked(sub_cls, sub, prefix=f"{name}."))
        kwargs.update(_checked(cls, data))
        for name in ("betas",):
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])
        if kwargs.get("student") and kwargs["student"].sr_channels is not None:
            sr = tuple(int(c) for c in kwargs["student"].sr_channels)
            kwargs["student"] = dataclasses.replace(kwargs["student"], sr_channels=sr)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"invalid training config: {exc}") from exc

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with fields changed; dotted names ("loss.hr_l1") reach nested sections."""
        return TrainConfig.from_dict(apply_overrides(self.to_dict(), changes))


def apply_overrides(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a ``to_dict()``) with ``changes`` applied; keys are field names, dotted for
    nested sections ("loss.hr_l1", "discriminator.real_mix"); a nested mapping merges."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        if section and not isinstance(data.get(section), dict):
            raise ConfigError(f"unknown training config section {section!r} in {key!r}")
        target = data[section] if section else data
        if name not in target:
            known = sorted(target) if section else sorted(data)
            raise ConfigError(f"unknown training config field {key!r}; known: {known}")
        if isinstance(target[name], dict) and isinstance(value, dict):
            merged = dict(target[name])
            for sub_key in value:
                if sub_key not in merged:
                    raise ConfigError(
                        f"unknown training config field {name}.{sub_key}; known: {sorted(merged)}"
                    )
            merged.update(value)
            value = merged
        target[name] = value
    return data


def _checked(cls: type, data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown training config field(s) {[prefix + u for u in unknown]}; "
            f"known: {sorted(prefix + n for n in names)}"
        )
    return data


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON) training config into a dict, with errors naming the file."""
    return read_config_file(path, what="training config")
