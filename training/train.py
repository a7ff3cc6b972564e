"""The distillation loop, top to bottom (docs/method.md, "Training").

Stage 1: the student learns to reproduce the frozen teacher's low-resolution feature image and
final image (L1 + LPIPS). Stage 2 adds a camera-conditioned dual discriminator whose "real" batch
mixes real photographs (when a dataset is given) with teacher renders.

:func:`train` reads in order: build the models, build the data, resume or start, then the steps
(student update, discriminator update, EMA, logs, checkpoints). The run directory's files are
``training/run_state.py``'s (config, crash-safe ``train_state/`` and ``student/``), the logs
``training/run_log.py``'s (``metrics.jsonl``, TensorBoard, sample grids).

Several processes (``torchrun``) split the global batch; gradients are averaged with
``all_reduce`` by hand (as StyleGAN2-ADA does) so the lazy R1 double backward needs no DDP
special cases, and a single CPU process runs the same code.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..models.checkpoint import CONFIG_NAME, load_checkpoint, read_checkpoint_info, sha256_file
from ..models.eg3d.config import SuperResolutionConfig
from ..models.eg3d.generator import TriPlaneGenerator
from ..models.eg3d.presets import matching_preset
from ..models.errors import ConfigError
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
from .ema import ema_beta, update_ema
from .losses import reconstruction_losses, weighted_sum
from .run_log import METRICS_NAME, RunLogger, rewind_metrics
from .run_state import (
    STATE_DIR,
    STUDENT_DIR,
    load_state_folder,
    prepare_run_dir,
    recover_run_dir,
    save_run,
    state_step,
    sync_student_checkpoint,
    write_run_config,
)

log = logging.getLogger(__name__)


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
    """A fresh student (seeded), or the student of ``init_from``: stage 2 always starts from its
    stage-1 run; stage 1 may too, as a warm start that goes on reconstructing under new settings
    (another learning rate, more cameras) with a fresh optimiser, which ``--resume`` refuses."""
    if not config.init_from:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return student_from_teacher(teacher, student_config_for(config, teacher))
    source = Path(config.init_from)
    if (source / STUDENT_DIR / CONFIG_NAME).is_file():
        source = source / STUDENT_DIR
    if not (source / CONFIG_NAME).is_file():
        raise ConfigError(
            f"--init-from {config.init_from}: not a training run directory (no {STUDENT_DIR}/) "
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
# The loop


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    heldout_psnr_start: float  # EMA student vs teacher on held-out latents/poses, dB
    heldout_psnr_end: float
    is_main: bool = True  # rank 0 (the process that wrote the run directory)
    start_step: int = 0  # where this call began: the resumed checkpoint's step, or 0


@dataclass
class Models:
    """What a run trains and what it trains against."""

    teacher: TriPlaneGenerator
    teacher_sha256: str
    lpips: nn.Module | None
    student: Student
    ema: Student
    discriminator: DualDiscriminator | None
    optimizers: dict[str, torch.optim.Optimizer]
    g_params: list[nn.Parameter]
    d_params: list[nn.Parameter]

    def state_modules(self) -> dict[str, nn.Module | None]:
        """The modules ``train_state/`` holds, by file name."""
        return {"student": self.student, "ema": self.ema, "discriminator": self.discriminator}


@dataclass
class Data:
    """Where a step's batches come from: teacher renders (live or cached), real images."""

    poses: PoseSampler
    sampler: TeacherSampler
    cache: TeacherCache | None
    dataset: Any
    group: ProcessGroup
    local_batch: int

    def teacher_batch(self, step: int) -> TeacherBatch:
        """This process's share of step ``step``'s batch: a function of (seed, step, rank)."""
        if self.cache is not None:
            return self.cache.sample(
                step, self.group.rank, self.group.world_size, self.local_batch
            ).to(self.group.device)
        return self.sampler.sample(step, self.group.rank, self.local_batch)


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
    if resume and group.is_main:
        recover_run_dir(run_dir)  # what a kill during a checkpoint left
    if group.world_size > 1:
        dist.barrier()  # every process has checked the run directory before rank 0 writes to it
    if config.batch_size % group.world_size:
        raise ConfigError(
            f"batch size {config.batch_size} does not split over {group.world_size} processes"
        )

    # 1. Teacher, student, EMA, discriminator, LPIPS; 2. poses, teacher renders, real images.
    models = build_models(config, group.device)
    data = build_data(config, models.teacher, group)

    # 3. Resume or start.
    start_step = resume_or_start(run_dir, config, resume, group, models)
    logger = RunLogger(run_dir, enabled=group.is_main, first_step=start_step if resume else None)
    heldout = heldout_set(data.sampler, config.eval_samples, data.poses, config.seed)
    psnr_start = evaluate(models.ema, heldout)
    if group.is_main and start_step == 0:
        logger.scalars(0, {"heldout/psnr_db": psnr_start})
        logger.preview(0, models.teacher, models.ema, data.sampler)

    # 4. Steps.
    end_step = config.steps if stop_after is None else min(config.steps, start_step + stop_after)
    bar = tqdm(
        total=config.steps,
        initial=start_step,
        unit="step",
        desc=f"stage {config.stage}",
        disable=not (progress and group.is_main),
    )
    amp = autocast_for(config, group.device)
    t_last, images_since = time.perf_counter(), 0
    for step in range(start_step, end_step):
        batch = data.teacher_batch(step)

        # 4a. Student: reconstruction (+ adversarial in stage 2).
        out, stats = student_step(config, group, models, batch, amp)

        # 4b. Discriminator: student renders vs a mix of real images and teacher renders.
        if models.discriminator is not None:
            raw_resolution = models.teacher.config.neural_rendering_resolution
            stats |= discriminator_step(
                config, step, group, models, out, batch, data.dataset, raw_resolution, amp
            )

        # 4c. EMA, logs (one metrics row per step), previews, checkpoints.
        images_seen = (step + 1) * config.batch_size
        update_ema(models.ema, models.student, ema_beta(config, config.batch_size, images_seen))
        images_since += config.batch_size
        done = step + 1
        row: dict[str, float] = {}
        if group.is_main:
            now = time.perf_counter()
            stats["images_per_s"] = images_since / max(now - t_last, 1e-9)
            bar.set_postfix(loss=f"{stats['loss/total']:.4f}", img_s=f"{stats['images_per_s']:.1f}")
            bar.update(1)
            if done % config.log_every == 0 or done == end_step:
                row |= stats
                t_last, images_since = now, 0
        if done % config.sample_every == 0 or done == config.steps:
            row["heldout/psnr_db"] = evaluate(models.ema, heldout)
            logger.preview(done, models.teacher, models.ema, data.sampler)
        if row:
            logger.scalars(done, row)
        if done % config.checkpoint_every == 0 or done == config.steps:
            if group.is_main:
                save_run(
                    run_dir,
                    done,
                    config,
                    models.state_modules(),
                    models.optimizers,
                    models.teacher_sha256,
                )
            if group.world_size > 1:
                dist.barrier()
    bar.close()
    logger.close()
    final_step = max(start_step, end_step)
    psnr_end = evaluate(models.ema, heldout)
    if group.world_size > 1:
        dist.destroy_process_group()
    return TrainResult(run_dir, final_step, psnr_start, psnr_end, group.is_main, start_step)


def build_models(config: TrainConfig, device: torch.device) -> Models:
    """The frozen teacher, the student and its EMA, stage 2's discriminator, their optimizers."""
    teacher, teacher_sha = load_teacher(config.teacher, device)
    lpips = load_lpips_for(config, device)
    student = initial_student(config, teacher, teacher_sha).to(device).train().requires_grad_(True)
    student.teacher_mapping.requires_grad_(False)
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    g_params = student.trainable_parameters()
    optimizers: dict[str, torch.optim.Optimizer] = {
        "student": torch.optim.Adam(g_params, lr=config.lr, betas=config.betas, eps=1e-8)
    }
    discriminator = None
    d_params: list[nn.Parameter] = []
    if config.stage == 2:
        discriminator = build_discriminator(config, teacher).to(device).train()
        d_params = list(discriminator.parameters())
        optimizers["discriminator"] = discriminator_optimizer(config, d_params)
    return Models(
        teacher, teacher_sha, lpips, student, ema, discriminator, optimizers, g_params, d_params
    )


def discriminator_optimizer(
    config: TrainConfig, d_params: list[nn.Parameter]
) -> torch.optim.Optimizer:
    """Adam for D; lazy regularisation (R1 every k steps) adjusts lr and betas (StyleGAN2)."""
    ratio = config.discriminator.r1_interval / (config.discriminator.r1_interval + 1)
    return torch.optim.Adam(
        d_params,
        lr=config.discriminator.lr * ratio,
        betas=(config.betas[0] ** ratio, config.betas[1] ** ratio),
        eps=1e-8,
    )


def build_data(config: TrainConfig, teacher: TriPlaneGenerator, group: ProcessGroup) -> Data:
    """Poses (the dataset's labels or the camera distribution), the teacher sampler or cache,
    and the real images of stage 2."""
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
        config.paired_views,
    )
    cache = TeacherCache(config.cache, config.seed) if config.cache else None
    if cache is not None:
        cache.check_cameras(config.cameras)
    return Data(poses, sampler, cache, dataset, group, config.batch_size // group.world_size)


def resume_or_start(
    run_dir: Path, config: TrainConfig, resume: bool, group: ProcessGroup, models: Models
) -> int:
    """The step to start from: a resumed run's saved step (its later log rows dropped), else 0
    (a new run's config written first)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    start_step = 0
    if resume and state_step(run_dir / STATE_DIR) is not None:
        start_step = load_state_folder(run_dir, models.state_modules(), models.optimizers)
        if group.is_main:
            sync_student_checkpoint(run_dir, start_step, config, models.ema, models.teacher_sha256)
    elif resume:
        log.warning("%s: killed before its first checkpoint; starting again from step 0", run_dir)
    elif group.is_main:
        write_run_config(run_dir, config)
    if resume and group.is_main:
        # A run from step 0 logs step 0 again; a resumed one continues after ``start_step``.
        rewind_metrics(run_dir / METRICS_NAME, start_step if start_step > 0 else -1)
    return start_step


def student_step(
    config: TrainConfig,
    group: ProcessGroup,
    models: Models,
    batch: TeacherBatch,
    amp: Any,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One student update: reconstruction losses (+ the adversarial one in stage 2); returns
    the student's renders (D's fakes) and the step's statistics."""
    for opt in models.optimizers.values():
        opt.zero_grad(set_to_none=True)
    with amp:
        out = models.student(batch.w, batch.c)
        terms = reconstruction_losses(out, batch, config.loss, models.lpips)
        loss = weighted_sum(terms, config.loss)
        if models.discriminator is not None:
            models.discriminator.requires_grad_(False)
            fake_logits = models.discriminator(
                {"image": out["image"], "image_raw": out["image_raw"]}, batch.c
            )
            terms["adversarial"] = nonsaturating_g_loss(fake_logits)
            loss = loss + config.loss.adversarial * terms["adversarial"]
    loss.backward()
    average_gradients(models.g_params, group)
    stats = {"grad_norm": float(torch.nn.utils.clip_grad_norm_(models.g_params, config.grad_clip))}
    models.optimizers["student"].step()
    stats.update({f"loss/{k}": float(v.detach()) for k, v in terms.items()})
    stats["loss/total"] = float(loss.detach())
    return out, stats


def discriminator_step(
    config: TrainConfig,
    step: int,
    group: ProcessGroup,
    models: Models,
    student_out: dict[str, torch.Tensor],
    batch: TeacherBatch,
    dataset: Any,
    raw_resolution: int,
    amp: Any,
) -> dict[str, float]:
    """One D update: logistic loss on fakes and the mixed real batch, plus lazy R1."""
    settings = config.discriminator
    discriminator = models.discriminator
    assert discriminator is not None
    discriminator.requires_grad_(True)
    models.optimizers["discriminator"].zero_grad(set_to_none=True)
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
    average_gradients(models.d_params, group)
    torch.nn.utils.clip_grad_norm_(models.d_params, config.grad_clip)
    models.optimizers["discriminator"].step()
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
