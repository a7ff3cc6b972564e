"""``distill3d demo teacher``: train an EG3D-architecture teacher on the procedural demo world.

The teacher learns ``z -> render(scene(z), camera)`` by multi-view reconstruction: every step
draws fresh latents and cameras, ray-traces the ground truth (``training/demo/scenes.py``), renders the
same latents and cameras volumetrically, and minimises

- L1 on the 128 px image and on the 32 px raw (volume-rendered) image against the box-filtered
  ground truth,
- L1 of the accumulated opacity against the figure's pixel coverage (empty space stays empty),
- L1 of the rendered depth against the exact ray distance on fully covered pixels,

with the image terms weighted up (``feature_weight``) where the ground truth shows a facial
feature (eyes, pupils, nose, mouth, brows): they cover a few percent of the pixels, and a plain L1
averages them away into a smooth face,

so geometry is supervised directly and the result is 3D-consistent by construction. An EMA of
the weights is what gets saved. Everything is a function of ``seed`` and the step number (the
latents and cameras of step k come from their own generator), so a run interrupted at any point
and resumed from its ``train_state/`` continues exactly as if it had not stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...models.camera import Camera
from ...models.checkpoint import read_checkpoint_info
from ...models.eg3d.generator import TriPlaneGenerator
from ...models.errors import CheckpointError, ConfigError
from ...models.images import batch_to_uint8, save_image
from ...models.load import init_generator
from ...models.metrics import psnr
from ...models.rng import generator_for
from ..ema import update_ema
from ..run_log import rewind_metrics
from ..run_state import (
    STATE_DIR,
    load_state_folder,
    recover_run_dir,
    save_checkpoint_folder,
    save_state_folder,
)
from .face_metrics import feature_psnr, pupil_contrast
from .scenes import (
    SCENE_DIM,
    build_scenes,
    feature_mask,
    render_scenes,
    sample_z,
    scene_camera,
)

CONFIG_NAME = "demo_teacher.json"
TEACHER_DIR = "teacher"
EVAL_SEED = 10_000_019  # held-out scenes: never a training step's stream
EVAL_YAWS = (-45.0, 0.0, 45.0)


@dataclass(frozen=True)
class DemoTeacherConfig:
    steps: int = 15000  # x 8 images: about 3 hours on 2 CPU cores
    preset: str = "demo"  # the architecture (``models/eg3d/presets.py``); "demo-face" frames faces
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 200
    final_lr_fraction: float = 0.1  # cosine decay to this fraction of lr at ``steps``
    seed: int = 0
    yaw_deg: float = 75.0  # cameras uniform in +-yaw_deg, +-pitch_deg
    pitch_deg: float = 30.0
    ema_beta: float = 0.998
    grad_clip: float = 10.0  # global gradient norm; a non-finite one skips the step
    # StyleGAN's mapping learns at 1/100 of the rate (lr_multiplier 0.01), right for a GAN but
    # far too slow when z must be decoded into a scene; this restores a full rate for it.
    mapping_lr_scale: float = 100.0
    raw_weight: float = 1.0
    alpha_weight: float = 0.5
    depth_weight: float = 1.0
    feature_weight: float = 0.0  # extra image-L1 weight on facial-feature pixels (0: plain L1)
    log_every: int = 10
    checkpoint_every: int = 250
    eval_every: int = 500
    eval_scenes: int = 8

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_scenes < 1:
            raise ConfigError("steps, batch_size and eval_scenes must be at least 1")
        if not 0 < self.pitch_deg < 90 or not 0 < self.yaw_deg <= 180:
            raise ConfigError("need 0 < pitch_deg < 90 and 0 < yaw_deg <= 180")
        if self.feature_weight < 0:
            raise ConfigError("feature_weight must be >= 0")
        if self.mapping_lr_scale <= 0:
            raise ConfigError("mapping_lr_scale must be positive")
        if not 0 <= self.ema_beta < 1:
            raise ConfigError("ema_beta must be in [0, 1)")
        for name in ("log_every", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")

    def resumable_from(self, saved: dict[str, Any]) -> None:
        """A run may be continued with more (or fewer) steps, or other logging intervals;
        anything that changes what a step computes must match."""
        free = {"steps", "log_every", "checkpoint_every", "eval_every", "eval_scenes"}
        mine = asdict(self)
        # A setting that a run's file predates had its default value then.
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = sorted(k for k in mine if k not in free and saved.get(k, defaults[k]) != mine[k])
        if changed:
            pairs = ", ".join(f"{k}: run {saved.get(k)!r}, now {mine[k]!r}" for k in changed)
            raise ConfigError(
                f"cannot resume with different settings ({pairs}); use the run's settings or a "
                "new --out folder"
            )


def step_batch(
    config: DemoTeacherConfig, step: int
) -> tuple[torch.Tensor, list[float], list[float]]:
    """The latents and camera angles of ``step``: a function of (seed, step) only."""
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    z = torch.randn(config.batch_size, SCENE_DIM, generator=gen)
    yaw = ((torch.rand(config.batch_size, generator=gen) * 2 - 1) * config.yaw_deg).tolist()
    pitch = ((torch.rand(config.batch_size, generator=gen) * 2 - 1) * config.pitch_deg).tolist()
    return z, yaw, pitch


def learning_rate(config: DemoTeacherConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    floor = config.final_lr_fraction
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def model_camera(teacher: TriPlaneGenerator, yaw: list[float], pitch: list[float]) -> Camera:
    """Demo-world cameras framed as ``teacher`` was trained (its focal length)."""
    return scene_camera(yaw, pitch, teacher.config.rendering.focal_length)


def losses(
    teacher: TriPlaneGenerator,
    z: torch.Tensor,
    yaw: list[float],
    pitch: list[float],
    rng: torch.Generator | None = None,
    feature_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The reconstruction terms for one batch (unweighted against each other; the image terms
    count facial-feature pixels ``1 + feature_weight`` times); ``rng`` drives the ray jitter and
    importance samples (a step's own generator keeps resumed runs exact)."""
    device = next(teacher.parameters()).device
    camera = model_camera(teacher, yaw, pitch)
    raw_res = teacher.config.neural_rendering_resolution
    with torch.no_grad():
        truth = render_scenes(build_scenes(z), camera, teacher.config.img_resolution, 1)
        truth_lr = render_scenes(build_scenes(z), camera, raw_res, 1)
    factor = teacher.config.img_resolution // raw_res
    image_lr = F.avg_pool2d(truth.image, factor).to(device)
    coverage = F.avg_pool2d(truth.mask, factor).to(device)
    weight = (1 + feature_weight * feature_mask(truth.part).float()).to(device)
    weight = weight / weight.mean()  # the same overall scale as a plain L1
    weight_lr = F.avg_pool2d(weight, factor)
    c = camera.to_label().to(device)
    out = teacher.synthesis(teacher.mapping(z.to(device), c), c, noise_mode="const", rng=rng)
    solid = (coverage > 0.999) & torch.isfinite(truth_lr.depth.to(device))
    depth_error = (out["image_depth"] - truth_lr.depth.to(device).nan_to_num(posinf=0)).abs()
    return {
        "image": ((out["image"] - truth.image.to(device)).abs() * weight).mean(),
        "raw": ((out["image_raw"] - image_lr).abs() * weight_lr).mean(),
        "alpha": (out["image_alpha"] - coverage).abs().mean(),
        "depth": torch.where(solid, depth_error, 0.0).sum() / solid.sum().clamp(min=1),
    }


@torch.no_grad()
def set_w_avg(teacher: TriPlaneGenerator, samples: int = 4096, seed: int = 0) -> None:
    """Truncation's centre: the mean w of ``samples`` latents (EG3D tracks it during training)."""
    device = next(teacher.parameters()).device
    z = torch.randn(samples, SCENE_DIM, generator=torch.Generator().manual_seed(seed))
    c = torch.zeros(samples, 25, device=device)  # the mapping ignores the camera
    ws = teacher.mapping(z.to(device), c)
    teacher.backbone.mapping.w_avg.copy_(ws[:, 0].mean(0))


@torch.no_grad()
def evaluate_teacher(teacher: TriPlaneGenerator, scenes: int) -> dict[str, float]:
    """PSNR against ground truth (whole image and facial features only), pupil contrast
    (``face_metrics.pupil_contrast``) and depth error on held-out scenes at three yaws."""
    device = next(teacher.parameters()).device
    z = sample_z(EVAL_SEED, scenes)
    psnrs, feature_psnrs, contrasts, depth_errors = [], [], [], []
    for yaw in EVAL_YAWS:
        camera = model_camera(teacher, [yaw] * scenes, [10.0] * scenes)
        truth = render_scenes(build_scenes(z), camera, teacher.config.img_resolution, 2)
        res = teacher.config.neural_rendering_resolution
        truth_lr = render_scenes(build_scenes(z), camera, res, 1)
        c = camera.to_label().to(device)
        out = teacher.synthesis(teacher.mapping(z.to(device), c), c, noise_mode="const")
        psnrs.append(psnr(out["image"].cpu(), truth.image))
        feature_psnrs.append(feature_psnr(out["image"].cpu(), truth.image, truth.part))
        contrasts.append(pupil_contrast(out["image"].cpu(), truth.part))
        solid = torch.isfinite(truth_lr.depth)
        err = (out["image_depth"].cpu() - truth_lr.depth.nan_to_num(posinf=0)).abs()
        depth_errors.append(float((err * solid).sum() / solid.sum().clamp(min=1)))
    return {
        "psnr_db": round(float(torch.cat(psnrs).mean()), 3),
        "feature_psnr_db": round(sum(feature_psnrs) / len(feature_psnrs), 3),
        "pupil_contrast": round(float(torch.cat(contrasts).nanmean()), 4),
        "depth_mae": round(sum(depth_errors) / len(depth_errors), 5),
    }


@torch.no_grad()
def sample_grid(teacher: TriPlaneGenerator, path: Path, scenes: int = 4) -> None:
    """Ground truth above teacher, held-out scenes, at the evaluation yaws."""
    device = next(teacher.parameters()).device
    z = sample_z(EVAL_SEED, scenes)
    rows = []
    for yaw in EVAL_YAWS:
        camera = model_camera(teacher, [yaw] * scenes, [10.0] * scenes)
        truth = render_scenes(build_scenes(z), camera, teacher.config.img_resolution, 2).image
        c = camera.to_label().to(device)
        image = teacher.synthesis(teacher.mapping(z.to(device), c), c, noise_mode="const")["image"]
        rows += [torch.cat(list(truth), dim=2), torch.cat(list(image.cpu()), dim=2)]
    save_image(batch_to_uint8(torch.cat(rows, dim=1)[None])[0], path)


def train_demo_teacher(
    out_dir: str | Path,
    config: DemoTeacherConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    max_steps_this_run: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) the demo teacher in ``out_dir``; returns the last evaluation.

    ``max_steps_this_run`` stops early (state saved) so a long run can be split over sessions.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / CONFIG_NAME
    teacher = init_generator(config.preset, seed=config.seed).to(device)
    teacher = teacher.train().requires_grad_(True)
    ema = copy.deepcopy(teacher).eval().requires_grad_(False)
    mapping = [p for n, p in teacher.named_parameters() if n.startswith("backbone.mapping.")]
    rest = [p for n, p in teacher.named_parameters() if not n.startswith("backbone.mapping.")]
    groups = [{"params": rest, "scale": 1.0}, {"params": mapping, "scale": config.mapping_lr_scale}]
    optimizer = torch.optim.Adam(groups, lr=config.lr, betas=(0.9, 0.99))
    start = 0
    if recover_run_dir(out, checkpoints=(TEACHER_DIR,)):
        if not config_path.is_file():
            raise ConfigError(f"{out} has a {STATE_DIR}/ but no {CONFIG_NAME}; use a new --out")
        config.resumable_from(json.loads(config_path.read_text()))
        modules: dict[str, nn.Module | None] = {"teacher": teacher, "ema": ema}
        start = load_state_folder(out, modules, {"teacher": optimizer})
        if _checkpoint_step(out / TEACHER_DIR) != start:  # killed between state and checkpoint
            _save_teacher_checkpoint(out, ema, start, config)
    elif any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no demo-teacher run; use a new --out")
    config_path.write_text(json.dumps(asdict(config), indent=2) + "\n")
    (out / "samples").mkdir(exist_ok=True)
    end = (
        config.steps
        if max_steps_this_run is None
        else min(config.steps, start + max_steps_this_run)
    )
    evaluation: dict[str, Any] = {}
    seconds_before = _seconds_logged(rewind_metrics(out / "metrics.jsonl", start))
    metrics = (out / "metrics.jsonl").open("a")
    bar = tqdm(
        total=config.steps, initial=start, unit="step", desc="demo teacher", disable=not progress
    )
    began = time.perf_counter()
    skipped = 0
    step = start
    try:
        for step in range(start, end):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step) * group["scale"]
            z, yaw, pitch = step_batch(config, step)
            rng = generator_for(2**31 + config.seed * 1_000_003 + step, device)
            terms = losses(teacher, z, yaw, pitch, rng, config.feature_weight)
            total = (
                terms["image"]
                + config.raw_weight * terms["raw"]
                + config.alpha_weight * terms["alpha"]
                + config.depth_weight * terms["depth"]
            )
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(teacher.parameters(), config.grad_clip)
            if torch.isfinite(grad_norm):
                optimizer.step()
            else:  # never let one bad batch poison the weights; counted in the log
                skipped += 1
            update_ema(ema, teacher, config.ema_beta if step >= config.warmup_steps else 0.0)
            bar.update(1)
            done = step + 1
            if done % config.log_every == 0:
                record = {"step": done, "lr": round(learning_rate(config, step), 6)}
                record |= {f"loss/{k}": round(float(v.detach()), 5) for k, v in terms.items()}
                record["grad_norm"] = round(float(grad_norm), 4)
                record["skipped_steps"] = skipped
                record["seconds"] = round(seconds_before + time.perf_counter() - began, 1)
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                bar.set_postfix(loss=f"{float(total.detach()):.4f}")
            if done % config.eval_every == 0 or done == config.steps:
                evaluation = {"step": done, **evaluate_teacher(ema, config.eval_scenes)}
                metrics.write(json.dumps({"eval": evaluation}) + "\n")
                metrics.flush()
                sample_grid(ema, out / "samples" / f"step-{done:06d}.png")
            if done % config.checkpoint_every == 0 or done == end:
                _save(out, teacher, ema, optimizer, done, config)
    finally:
        bar.close()
        metrics.close()
    return evaluation


def _seconds_logged(records: list[dict[str, Any]]) -> float:
    """The training seconds the kept log records reach, so that ``seconds`` stays the total
    across the runs a training was split into."""
    seconds = 0.0
    for record in records:
        seconds = record.get("seconds", seconds)
    return float(seconds)


def _save(
    out: Path,
    teacher: TriPlaneGenerator,
    ema: TriPlaneGenerator,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: DemoTeacherConfig,
) -> None:
    save_state_folder(
        out, {"teacher": teacher, "ema": ema}, {"teacher": optimizer.state_dict()}, step
    )
    _save_teacher_checkpoint(out, ema, step, config)


def _save_teacher_checkpoint(
    out: Path, ema: TriPlaneGenerator, step: int, config: DemoTeacherConfig
) -> None:
    """``teacher/``: the EMA with its truncation centre set, in distill3d's checkpoint format."""
    shipped = copy.deepcopy(ema).cpu()
    set_w_avg(shipped)
    metadata = {
        "demo_world": {"trained_steps": step, "config": dataclasses.asdict(config)},
        "pose_range": {"yaw_deg": config.yaw_deg, "pitch_deg": config.pitch_deg},
    }
    save_checkpoint_folder(shipped, out / TEACHER_DIR, metadata=metadata)


def _checkpoint_step(folder: Path) -> int | None:
    """The training step ``teacher/`` was saved at (None: no readable checkpoint there)."""
    try:
        return read_checkpoint_info(folder).metadata.get("demo_world", {}).get("trained_steps")
    except CheckpointError:
        return None
