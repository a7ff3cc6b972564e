"""The distillation loop, top to bottom (METHOD.md, "Training").

Stage 1: the student learns to reproduce the frozen teacher's low-resolution feature image and
final image (L1 + LPIPS). Stage 2 adds a camera-conditioned dual discriminator whose "real" batch
mixes real photographs (when a dataset is given) with teacher renders.

A run directory holds:
- ``config.json``: the resolved ``TrainConfig`` (``--resume`` reads it back);
- ``train_state/``: student, EMA, discriminator and optimizer states plus the step, replaced
  atomically every ``checkpoint_every`` steps;
- ``student/``: the EMA student in distill3d's checkpoint format (what render/export/serve take);
- ``metrics.jsonl``, ``tensorboard/`` (scalars, teacher-vs-student grids), ``samples/*.png``.

Several processes (``torchrun``) split the global batch; gradients are averaged with
``all_reduce`` by hand (as StyleGAN2-ADA does) so the lazy R1 double backward needs no DDP
special cases, and a single CPU process runs the same code.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from ..models.checkpoint import (
    CONFIG_NAME,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
    sha256_file,
)
from ..models.eg3d.config import SuperResolutionConfig
from ..models.eg3d.generator import TriPlaneGenerator
from ..models.eg3d.presets import matching_preset
from ..models.errors import CheckpointError, ConfigError
from ..models.images import save_image, to_uint8
from ..models.load import load_model, shipped_path
from ..models.student import Student, StudentConfig, student_from_teacher, student_preset
from .config import TrainConfig
from .data import (
    PoseSampler,
    TeacherBatch,
    TeacherCache,
    TeacherSampler,
    cpu_generator,
    heldout_set,
    mean_psnr,
)
from .discriminator import (
    DualDiscriminator,
    filtered_resize,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
    r1_penalty,
)
from .losses import reconstruction_losses, weighted_sum

log = logging.getLogger(__name__)

RUN_CONFIG = "config.json"
STATE_DIR = "train_state"
STUDENT_DIR = "student"
METRICS_NAME = "metrics.jsonl"
STATE_FILES = ("student.safetensors", "ema.safetensors", "discriminator.safetensors")
OPTIM_NAME = "optimizers.pt"
PROGRESS_NAME = "progress.json"

# Fixed preview: these seeds and yaws, teacher row above student row.
PREVIEW_SEEDS = (0, 1, 2, 3)
PREVIEW_YAWS_DEG = (-35.0, 0.0, 35.0)


# ---------------------------------------------------------------------------------------------
# Processes and devices


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in a torchrun job (rank 0 of 1 when run directly)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_process_group(device: str) -> ProcessGroup:
    """Join the torchrun job named by the environment (RANK, WORLD_SIZE, LOCAL_RANK), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device}: CUDA is not available here; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return ProcessGroup(rank, world_size, dev)


def average_gradients(params: list[nn.Parameter], group: ProcessGroup) -> None:
    """Average gradients over processes and zero non-finite entries (StyleGAN2-ADA's safety)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    if group.world_size > 1:
        dist.all_reduce(flat)
        flat /= group.world_size
    torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def autocast_for(config: TrainConfig, device: torch.device):
    """bf16 autocast on CUDA (precision auto/bf16); fp32 elsewhere."""
    if device.type == "cuda" and config.precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if config.precision == "bf16" and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


# ---------------------------------------------------------------------------------------------
# Building the pieces


def load_teacher(spec: str, device: torch.device) -> tuple[TriPlaneGenerator, str]:
    """The frozen teacher and a hash that identifies it (checkpoint weights or .pkl file)."""
    if not spec:
        raise ConfigError("no teacher: pass --teacher PATH (a checkpoint folder or EG3D .pkl)")
    teacher = load_model(spec, device)
    if not isinstance(teacher, TriPlaneGenerator):
        raise ConfigError(
            f"--teacher {spec} is a {type(teacher).__name__}; distillation needs an EG3D teacher"
        )
    path = shipped_path(spec) or Path(spec)
    digest = read_checkpoint_info(path).weights_sha256 if path.is_dir() else sha256_file(path)
    return teacher.eval().requires_grad_(False), digest


def student_config_for(config: TrainConfig, teacher: TriPlaneGenerator) -> StudentConfig:
    """The preset student of the teacher's architecture (by size when it is not a preset), with
    the run's architecture overrides."""
    name = matching_preset(teacher.config)
    if name is not None:
        base = student_preset(name)
    else:
        base = student_preset("tiny") if teacher.config.img_resolution <= 64 else StudentConfig()
    s = config.student
    changes: dict[str, Any] = {"teacher": teacher.config, **s.overrides()}
    if s.sr_channels is not None:
        t_sr = teacher.config.superresolution
        if len(s.sr_channels) != len(t_sr.block_channels):
            raise ConfigError(
                f"student.sr_channels needs {len(t_sr.block_channels)} numbers (one per SR "
                f"block of the teacher), got {list(s.sr_channels)}"
            )
        changes["superresolution"] = SuperResolutionConfig(
            "custom",
            t_sr.input_resolution,
            s.sr_channels,
            t_sr.block_upsample,
            use_fp16=t_sr.use_fp16,
            conv_clamp=t_sr.conv_clamp,
        )
    return base.replace(**changes)


def initial_student(
    config: TrainConfig, teacher: TriPlaneGenerator, teacher_sha256: str
) -> Student:
    """Stage 1: a fresh student (seeded); stage 2: the EMA student of a stage-1 run."""
    if config.stage == 1:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return student_from_teacher(teacher, student_config_for(config, teacher))
    assert config.init_from is not None
    source = Path(config.init_from)
    if (source / STUDENT_DIR / CONFIG_NAME).is_file():
        source = source / STUDENT_DIR
    if not (source / CONFIG_NAME).is_file():
        raise ConfigError(
            f"--init-from {config.init_from}: not a stage-1 run directory (no {STUDENT_DIR}/) "
            "nor a student checkpoint"
        )
    info = read_checkpoint_info(source)
    if info.model_class != "student":
        raise ConfigError(f"--init-from {source} holds a {info.model_class}, not a student")
    recorded = info.metadata.get("teacher_sha256")
    if recorded and teacher_sha256 != "default" and recorded != teacher_sha256:
        raise ConfigError(
            f"--init-from {source} was distilled from another teacher (sha256 {recorded[:12]}..., "
            f"this run's is {teacher_sha256[:12]}...)"
        )
    student = load_checkpoint(source)
    assert isinstance(student, Student)
    if student.config.teacher != teacher.config:
        raise ConfigError(f"--init-from {source} was built for a different teacher architecture")
    return student


def build_discriminator(config: TrainConfig, teacher: TriPlaneGenerator) -> DualDiscriminator:
    """EG3D's dual discriminator at the teacher's resolution, seeded from the run seed."""
    d = config.discriminator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        return DualDiscriminator(
            img_resolution=teacher.config.img_resolution,
            c_dim=teacher.config.c_dim,
            channel_base=d.channel_base,
            channel_max=d.channel_max,
        )


def load_lpips_for(config: TrainConfig, device: torch.device) -> nn.Module | None:
    if not config.use_lpips or config.loss.hr_lpips == 0:
        return None
    from ..models.lpips import load_lpips

    return load_lpips(config.lpips, device)


# ---------------------------------------------------------------------------------------------
# State on disk


def save_train_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Write the student run's ``train_state/`` (student, EMA, discriminator, optimizers)."""
    modules = {name: state.get(name) for name in ("student", "ema", "discriminator")}
    save_state_folder(run_dir, modules, state["optimizers"], state["step"])


def save_state_folder(
    run_dir: Path,
    modules: dict[str, nn.Module | None],
    optimizers: dict[str, Any],
    step: int,
) -> None:
    """Write ``train_state/`` atomically: one safetensors file per module, the optimizers'
    states and the step, assembled in a temporary folder and swapped in."""
    final = run_dir / STATE_DIR
    tmp = run_dir / f".{STATE_DIR}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, module in modules.items():
            if module is not None:
                tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
                save_file(tensors, str(tmp / f"{name}.safetensors"))
        torch.save(optimizers, tmp / OPTIM_NAME)
        (tmp / PROGRESS_NAME).write_text(json.dumps({"step": step}) + "\n")
        if final.exists():
            old = run_dir / f".{STATE_DIR}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_train_state(
    run_dir: Path,
    student: nn.Module,
    ema: nn.Module,
    discriminator: nn.Module | None,
    optimizers: dict[str, torch.optim.Optimizer],
) -> int:
    """Restore everything ``save_train_state`` wrote; returns the step to continue from."""
    modules = {"student": student, "ema": ema, "discriminator": discriminator}
    return load_state_folder(run_dir, modules, optimizers)


def load_state_folder(
    run_dir: Path,
    modules: dict[str, nn.Module | None],
    optimizers: dict[str, torch.optim.Optimizer],
) -> int:
    """Restore what ``save_state_folder`` wrote into ``modules`` and ``optimizers`` (strictly);
    returns the step to continue from."""
    folder = run_dir / STATE_DIR
    if not (folder / PROGRESS_NAME).is_file():
        raise CheckpointError(
            f"{run_dir} has no complete {STATE_DIR}/ to resume from; start a new run instead"
        )
    for name, module in modules.items():
        if module is not None:
            module.load_state_dict(load_file(str(folder / f"{name}.safetensors")), strict=True)
    saved = torch.load(folder / OPTIM_NAME, map_location="cpu", weights_only=True)
    for name, opt in optimizers.items():
        opt.load_state_dict(saved[name])
    return int(json.loads((folder / PROGRESS_NAME).read_text())["step"])


def prepare_run_dir(
    run_dir: Path, config: TrainConfig | None, resume: bool, steps: int | None
) -> TrainConfig:
    """New run: refuse to clobber one; resume: read the saved config (``steps`` may change)."""
    saved = run_dir / RUN_CONFIG
    if resume:
        if not saved.is_file():
            raise ConfigError(f"--resume: {run_dir} holds no run ({RUN_CONFIG} missing)")
        previous = TrainConfig.from_dict(json.loads(saved.read_text()))
        return previous.replace(steps=steps) if steps is not None else previous
    if config is None:
        raise ConfigError("a new run needs a TrainConfig")
    if steps is not None:
        config = config.replace(steps=steps)
    if saved.exists() or (run_dir / STATE_DIR).exists():
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose a new --out"
        )
    return config


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    heldout_psnr_start: float  # EMA student vs teacher on held-out latents/poses, dB
    heldout_psnr_end: float
    is_main: bool = True  # rank 0 (the process that wrote the run directory)


def ema_beta(config: TrainConfig, batch_size: int, images_seen: int) -> float:
    """Per-step EMA decay from a half-life in images, ramped up early on (StyleGAN2-ADA)."""
    half_life = config.ema_kimg * 1000
    if config.ema_rampup is not None:
        half_life = min(half_life, images_seen * config.ema_rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, student: nn.Module, beta: float) -> None:
    for p_ema, p in zip(ema.parameters(), student.parameters(), strict=True):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), student.buffers(), strict=True):
        b_ema.copy_(b)


def train(
    config: TrainConfig | None,
    run_dir: str | Path,
    resume: bool = False,
    steps: int | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Start a run in ``run_dir`` from ``config``, or continue it (``resume``, config from disk;
    ``steps`` may extend it). ``stop_after`` ends this call after that many steps, as a kill would
    (tests use it to interrupt a run)."""
    from tqdm import tqdm

    run_dir = Path(run_dir)
    config = prepare_run_dir(run_dir, config, resume, steps)
    group = init_process_group(config.device)
    if group.world_size > 1:
        dist.barrier()  # every process has checked the run directory before rank 0 writes to it
    if config.batch_size % group.world_size:
        raise ConfigError(
            f"batch size {config.batch_size} does not split over {group.world_size} processes"
        )
    local_batch = config.batch_size // group.world_size
    device = group.device

    # 1. Teacher, student, EMA, discriminator, LPIPS.
    teacher, teacher_sha = load_teacher(config.teacher, device)
    lpips = load_lpips_for(config, device)
    student = initial_student(config, teacher, teacher_sha).to(device).train().requires_grad_(True)
    student.teacher_mapping.requires_grad_(False)
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    g_params = student.trainable_parameters()
    discriminator = None
    optimizers: dict[str, torch.optim.Optimizer] = {
        "student": torch.optim.Adam(g_params, lr=config.lr, betas=config.betas, eps=1e-8)
    }
    d_params: list[nn.Parameter] = []
    if config.stage == 2:
        discriminator = build_discriminator(config, teacher).to(device).train()
        d_params = list(discriminator.parameters())
        # Lazy regularisation: R1 every k steps, so lr and betas are adjusted (StyleGAN2).
        ratio = config.discriminator.r1_interval / (config.discriminator.r1_interval + 1)
        optimizers["discriminator"] = torch.optim.Adam(
            d_params,
            lr=config.discriminator.lr * ratio,
            betas=(config.betas[0] ** ratio, config.betas[1] ** ratio),
            eps=1e-8,
        )

    # 2. Data: poses, teacher renders (live or cached), real images for stage 2.
    dataset = None
    if config.dataset:
        from .dataset import ImageDataset

        dataset = ImageDataset(config.dataset, resolution=teacher.config.img_resolution)
    labels = dataset.labels if dataset is not None and config.uses_dataset_poses else None
    poses = PoseSampler(teacher, config.cameras, labels)
    sampler = TeacherSampler(
        teacher,
        poses,
        config.seed,
        config.truncation_psi,
        config.teacher_depth_samples,
        config.teacher_importance_samples,
    )
    cache = TeacherCache(config.cache, config.seed) if config.cache else None

    def teacher_batch(step: int) -> TeacherBatch:
        if cache is not None:
            return cache.sample(step, group.rank, group.world_size, local_batch).to(device)
        return sampler.sample(step, group.rank, local_batch)

    # 3. Resume or start.
    run_dir.mkdir(parents=True, exist_ok=True)
    start_step = 0
    if resume and (run_dir / STATE_DIR / PROGRESS_NAME).is_file():
        start_step = load_train_state(run_dir, student, ema, discriminator, optimizers)
    elif resume:
        log.warning("%s: killed before its first checkpoint; starting again from step 0", run_dir)
    elif group.is_main:
        (run_dir / RUN_CONFIG).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    logger = RunLogger(run_dir, enabled=group.is_main)
    heldout = heldout_set(sampler, config.eval_samples, poses, config.seed)
    psnr_start = evaluate(ema, heldout)
    if group.is_main and start_step == 0:
        logger.scalars(0, {"heldout/psnr_db": psnr_start})
        logger.preview(0, teacher, ema, sampler)

    # 4. Steps.
    end_step = config.steps if stop_after is None else min(config.steps, start_step + stop_after)
    bar = tqdm(
        total=config.steps,
        initial=start_step,
        unit="step",
        desc=f"stage {config.stage}",
        disable=not (progress and group.is_main),
    )
    amp = autocast_for(config, device)
    t_last, images_since = time.perf_counter(), 0
    step = start_step
    for step in range(start_step, end_step):
        batch = teacher_batch(step)
        stats: dict[str, float] = {}

        # 4a. Student: reconstruction (+ adversarial in stage 2).
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        with amp:
            out = student(batch.w, batch.c)
            terms = reconstruction_losses(out, batch, config.loss, lpips)
            loss = weighted_sum(terms, config.loss)
            if discriminator is not None:
                discriminator.requires_grad_(False)
                fake_logits = discriminator(
                    {"image": out["image"], "image_raw": out["image_raw"]}, batch.c
                )
                terms["adversarial"] = nonsaturating_g_loss(fake_logits)
                loss = loss + config.loss.adversarial * terms["adversarial"]
        loss.backward()
        average_gradients(g_params, group)
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(g_params, config.grad_clip))
        optimizers["student"].step()
        stats.update({f"loss/{k}": float(v.detach()) for k, v in terms.items()})
        stats["loss/total"] = float(loss.detach())

        # 4b. Discriminator: student renders vs a mix of real images and teacher renders.
        if discriminator is not None:
            stats.update(
                discriminator_step(
                    config,
                    step,
                    group,
                    discriminator,
                    d_params,
                    optimizers,
                    out,
                    batch,
                    dataset,
                    teacher.config.neural_rendering_resolution,
                    amp,
                )
            )

        # 4c. EMA, logs, previews, checkpoints.
        images_seen = (step + 1) * config.batch_size
        update_ema(ema, student, ema_beta(config, config.batch_size, images_seen))
        images_since += config.batch_size
        done = step + 1
        if group.is_main:
            now = time.perf_counter()
            stats["images_per_s"] = images_since / max(now - t_last, 1e-9)
            bar.set_postfix(loss=f"{stats['loss/total']:.4f}", img_s=f"{stats['images_per_s']:.1f}")
            bar.update(1)
            if done % config.log_every == 0 or done == end_step:
                logger.scalars(done, stats)
                t_last, images_since = now, 0
        if done % config.sample_every == 0 or done == config.steps:
            value = evaluate(ema, heldout)
            if group.is_main:
                logger.scalars(done, {"heldout/psnr_db": value})
                logger.preview(done, teacher, ema, sampler)
        if done % config.checkpoint_every == 0 or done == config.steps:
            if group.is_main:
                save_run(
                    run_dir, done, config, student, ema, discriminator, optimizers, teacher_sha
                )
            if group.world_size > 1:
                dist.barrier()
    bar.close()
    logger.close()
    final_step = max(start_step, end_step)
    psnr_end = evaluate(ema, heldout)
    if group.world_size > 1:
        dist.destroy_process_group()
    return TrainResult(run_dir, final_step, psnr_start, psnr_end, group.is_main)


def discriminator_step(
    config: TrainConfig,
    step: int,
    group: ProcessGroup,
    discriminator: nn.Module,
    d_params: list[nn.Parameter],
    optimizers: dict[str, torch.optim.Optimizer],
    student_out: dict[str, torch.Tensor],
    batch: TeacherBatch,
    dataset: Any,
    raw_resolution: int,
    amp: Any,
) -> dict[str, float]:
    """One D update: logistic loss on fakes and the mixed real batch, plus lazy R1."""
    settings = config.discriminator
    discriminator.requires_grad_(True)
    optimizers["discriminator"].zero_grad(set_to_none=True)
    real_img, real_raw, real_c = real_batch(
        config, step, group.rank, batch, dataset, raw_resolution
    )
    fake = {"image": student_out["image"].detach(), "image_raw": student_out["image_raw"].detach()}
    do_r1 = settings.r1_gamma > 0 and step % settings.r1_interval == 0
    real_img = real_img.detach().requires_grad_(do_r1)
    real_raw = real_raw.detach().requires_grad_(do_r1)
    with amp:
        fake_logits = discriminator(fake, batch.c, c_noise=settings.c_noise)
        real_logits = discriminator(
            {"image": real_img, "image_raw": real_raw}, real_c, c_noise=settings.c_noise
        )
        d_loss = nonsaturating_d_loss(real_logits, fake_logits)
    total = d_loss
    stats = {"loss/d": float(d_loss.detach()), "d/real_logit": float(real_logits.detach().mean())}
    stats["d/fake_logit"] = float(fake_logits.detach().mean())
    if do_r1:
        penalty = r1_penalty(real_logits, {"image": real_img, "image_raw": real_raw})
        total = total + penalty * (settings.r1_gamma / 2) * settings.r1_interval
        stats["loss/r1"] = float(penalty.detach())
    total.backward()
    average_gradients(d_params, group)
    torch.nn.utils.clip_grad_norm_(d_params, config.grad_clip)
    optimizers["discriminator"].step()
    return stats


def real_batch(
    config: TrainConfig,
    step: int,
    rank: int,
    batch: TeacherBatch,
    dataset: Any,
    raw_resolution: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D's "real" images: ``real_mix`` of them from the dataset, the rest teacher renders.

    Dataset images get a low-resolution twin by area-filtered resizing (as EG3D does for its
    dual discriminator); teacher renders bring their own.
    """
    n = len(batch.w)
    n_real = round(config.discriminator.real_mix * n) if dataset is not None else 0
    images, raws, cams = [batch.image[n_real:]], [batch.image_raw[n_real:]], [batch.c[n_real:]]
    if n_real:
        gen = cpu_generator(config.seed, step, rank, "reals")
        idx = torch.randint(len(dataset), (n_real,), generator=gen).tolist()
        items = [dataset[i] for i in idx]
        img = torch.stack([it[0] for it in items]).to(batch.image.device)
        cam = torch.stack([it[1] for it in items]).to(batch.c.device)
        raw = filtered_resize(img, raw_resolution)
        images.insert(0, img)
        raws.insert(0, raw)
        cams.insert(0, cam)
    return torch.cat(images), torch.cat(raws), torch.cat(cams)


@torch.no_grad()
def evaluate(student: Student, heldout: TeacherBatch) -> float:
    """Mean PSNR (dB) of the student's images against the teacher's on the held-out set."""
    values = []
    for start in range(0, len(heldout.w), 8):
        sl = slice(start, start + 8)
        out = student.synthesis(heldout.w[sl], heldout.c[sl], noise_mode="const")
        values.append(mean_psnr(out["image"], heldout.image[sl]) * len(heldout.w[sl]))
    return sum(values) / len(heldout.w)


def save_run(
    run_dir: Path,
    step: int,
    config: TrainConfig,
    student: nn.Module,
    ema: Student,
    discriminator: nn.Module | None,
    optimizers: dict[str, torch.optim.Optimizer],
    teacher_sha256: str,
) -> None:
    """The resumable state, then the EMA student as a ready-to-use checkpoint."""
    save_train_state(
        run_dir,
        {
            "student": student,
            "ema": ema,
            "discriminator": discriminator,
            "optimizers": {k: v.state_dict() for k, v in optimizers.items()},
            "step": step,
        },
    )
    save_checkpoint(
        ema,
        run_dir / STUDENT_DIR,
        metadata={
            "source": f"distill3d train stage {config.stage}, step {step}",
            "teacher": config.teacher,
            "teacher_sha256": teacher_sha256,
            "stage": config.stage,
            "step": step,
            "images_seen": step * config.batch_size,
            # What the service declares valid: the held-out evaluation's 1.5x training range.
            "pose_range": {
                "yaw_deg": round(min(1.5 * config.cameras.yaw_max_deg, 180.0), 2),
                "pitch_deg": round(min(1.5 * config.cameras.pitch_max_deg, 85.0), 2),
            },
        },
    )


# ---------------------------------------------------------------------------------------------
# Logging


class RunLogger:
    """Scalars to metrics.jsonl and TensorBoard; teacher-vs-student grids to PNG and TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.writer = None
        self._teacher_grid: torch.Tensor | None = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency; tolerate a trimmed install
                log.warning("tensorboard is not installed; scalars go to %s only", METRICS_NAME)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: round(v, 6) for k, v in values.items()}}
        with open(self.run_dir / METRICS_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if math.isfinite(v):
                    self.writer.add_scalar(k, v, step)

    @torch.no_grad()
    def preview(
        self, step: int, teacher: TriPlaneGenerator, student: Student, sampler: TeacherSampler
    ) -> None:
        """Teacher (top row) vs student (bottom row): fixed seeds x fixed yaws."""
        if not self.enabled:
            return
        from ..models.latents import z_from_seed

        n_yaw = len(PREVIEW_YAWS_DEG)
        z = torch.cat([z_from_seed(s, teacher.z_dim) for s in PREVIEW_SEEDS])
        z = z.repeat_interleave(n_yaw, dim=0)
        yaw = torch.tensor(PREVIEW_YAWS_DEG).repeat(len(PREVIEW_SEEDS))
        c = sampler.poses.orbit(yaw, torch.zeros_like(yaw))
        if self._teacher_grid is None:
            target = sampler.render(z, c, torch.Generator(sampler.device).manual_seed(0))
            self._teacher_grid = target.image.cpu()
            self._w = target.w
        out = student.synthesis(self._w, c.to(self._w.device), noise_mode="const")
        rows = torch.cat([self._teacher_grid, out["image"].float().cpu()])  # [2 * S * Y, 3, R, R]
        grid = make_grid(rows, columns=len(PREVIEW_SEEDS) * n_yaw)
        samples = self.run_dir / "samples"
        samples.mkdir(exist_ok=True)
        save_image(to_uint8(grid.unsqueeze(0)), samples / f"step-{step:07d}.png")
        if self.writer is not None:
            self.writer.add_image("teacher_top_student_bottom", (grid + 1) / 2, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def make_grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    """[N, 3, H, W] -> one [3, rows * H, columns * W] image (row-major), clamped to [-1, 1]."""
    n, ch, h, w = images.shape
    rows = math.ceil(n / columns)
    pad = rows * columns - n
    if pad:
        images = torch.cat([images, -torch.ones(pad, ch, h, w)])
    grid = images.clamp(-1, 1).view(rows, columns, ch, h, w).permute(2, 0, 3, 1, 4)
    return grid.reshape(ch, rows * h, columns * w)
