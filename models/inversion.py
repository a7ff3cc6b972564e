"""GAN inversion: the latent (and camera) that makes a generator draw a given image.

Because the student is a plain convolutional network, each optimisation step is one forward and
backward pass of a CNN, where the volumetric teacher ray-marches every pixel: fitting a photo
takes seconds through the student and minutes through the teacher. The same code runs both, so
the two can be compared.

The optimisation follows StyleGAN2's projector: start from the average w; Adam on w (one vector,
"w", or one per synthesis layer, "w+"), the learning rate warmed up then decayed on a cosine;
loss = L1 + MSE on pixels (+ LPIPS when its weights are given) + ``w_reg`` x the squared
distance from the average w in units of w's spread (the regulariser that keeps w where the
mapping puts latents). Without a camera, a coarse search over yaw/pitch picks the start, and
yaw/pitch (degrees) are then optimised together with w.

Pivotal tuning (Roich et al. 2022), off by default: with the fitted w fixed, a copy of the
generator is fine-tuned for a few steps so that it reproduces the image exactly; the copy is
returned and the original is left untouched.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .latents import FittedLatent
from .mapping import map_to_w
from .metrics import psnr
from .render import Generator, orbit_camera, w_avg_of
from .rng import generator_for

Space = Literal["w", "w+"]
MAX_PITCH_DEG = 80.0


@dataclass(frozen=True)
class InversionConfig:
    """How to fit; the defaults fit a 128 px student image in a few seconds on a CPU."""

    steps: int = 300
    lr: float = 0.03
    camera_lr: float = 0.5  # degrees per step at the peak learning rate
    warmup_fraction: float = 0.05
    space: Space = "w"
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    lpips_weight: float = 1.0  # used only when an LPIPS model is given
    w_reg: float = 1e-3
    search_yaws: tuple[float, ...] = (-60, -45, -30, -15, 0, 15, 30, 45, 60)
    search_pitches: tuple[float, ...] = (-15, 0, 15)
    tune_steps: int = 0  # pivotal tuning after the fit; 0 = off
    tune_lr: float = 3e-4
    seed: int = 0  # of the samples that measure w's spread and of the teacher's ray jitter

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.camera_lr < 0 or self.w_reg < 0:
            raise ConfigError("inversion needs steps >= 1, lr > 0, camera_lr >= 0, w_reg >= 0")
        if self.space not in ("w", "w+"):
            raise ConfigError(f"space must be 'w' or 'w+', got {self.space!r}")
        if self.tune_steps < 0 or self.tune_lr <= 0:
            raise ConfigError("tune_steps must be >= 0 and tune_lr > 0")
        if not self.search_yaws or not self.search_pitches:
            raise ConfigError("the camera search needs at least one yaw and one pitch")
        if any(abs(p) > MAX_PITCH_DEG for p in self.search_pitches):
            raise ConfigError(f"search pitches must be within ±{MAX_PITCH_DEG:g} degrees")


@dataclass
class Inversion:
    """The fit: ``ws`` [num_ws, w_dim] (rows equal in "w" space), its camera and how it went."""

    ws: torch.Tensor
    yaw_deg: float
    pitch_deg: float
    camera_label: list[float]
    psnr_db: float
    steps: int
    seconds: float
    space: Space
    camera_estimated: bool
    config: dict[str, Any]
    image: torch.Tensor  # the final render [3, R, R] in [-1, 1]
    tuned_model: nn.Module | None = None  # the pivotally tuned copy, when tune_steps > 0
    tuned_psnr_db: float | None = None
    history: list[float] = field(default_factory=list)  # loss every step

    def latent(self, metadata: dict[str, Any] | None = None) -> FittedLatent:
        """The fit as a latent file's contents (what render, orbit and the service take)."""
        fit = {
            "psnr_db": self.psnr_db,
            "steps": self.steps,
            "seconds": self.seconds,
            "camera_estimated": self.camera_estimated,
        }
        if self.tuned_psnr_db is not None:
            fit["tuned_psnr_db"] = self.tuned_psnr_db
        return FittedLatent(
            ws=self.ws,
            yaw_deg=self.yaw_deg,
            pitch_deg=self.pitch_deg,
            camera_label=self.camera_label,
            space=self.space,
            metadata={"fit": fit, **(metadata or {})},
        )


def _render(model: Generator, ws: torch.Tensor, label: torch.Tensor, seed: int) -> torch.Tensor:
    device = ws.device
    out = model.synthesis(ws, label, noise_mode="const", rng=generator_for(seed, device))
    return out["image"]


def fit_to(image: torch.Tensor, size: int) -> torch.Tensor:
    """Area-average down, bilinear up: a target of any size compared at the model's size."""
    if image.shape[-2:] == (size, size):
        return image
    if image.shape[-1] > size and image.shape[-2] > size:
        return F.interpolate(image, size=(size, size), mode="area")
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def w_spread(model: Generator, samples: int = 2000, seed: int = 0) -> float:
    """Root-mean-square distance of mapped w from the average: the regulariser's unit."""
    device = next(model.parameters()).device
    z = torch.randn(samples, model.z_dim, generator=torch.Generator().manual_seed(seed))
    w = map_to_w(model, z).to(device)  # type: ignore[arg-type]
    return float((w - w_avg_of(model).to(device)).square().sum(-1).mean().sqrt())


@torch.no_grad()
def search_camera(
    model: Generator, target: torch.Tensor, config: InversionConfig
) -> tuple[float, float]:
    """The yaw/pitch of the search grid at which the average w looks most like ``target``."""
    device = target.device
    ws = w_avg_of(model).to(device)[None, None].expand(1, model.num_ws, -1)
    best = (math.inf, 0.0, 0.0)
    for yaw in config.search_yaws:
        for pitch in config.search_pitches:
            label = orbit_camera(model, torch.tensor([yaw]), torch.tensor([pitch])).to_label()
            image = _render(model, ws, label.to(device), config.seed)
            loss = float((image - target).abs().mean())
            if loss < best[0]:
                best = (loss, float(yaw), float(pitch))
    return best[1], best[2]


def _lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _image_loss(
    image: torch.Tensor, target: torch.Tensor, config: InversionConfig, lpips: nn.Module | None
) -> torch.Tensor:
    loss = config.l1_weight * (image - target).abs().mean()
    loss = loss + config.mse_weight * (image - target).square().mean()
    if lpips is not None and config.lpips_weight > 0:
        loss = loss + config.lpips_weight * lpips(image, target).mean()
    return loss


def prepare_target(model: Generator, target: torch.Tensor) -> torch.Tensor:
    """[3, H, W] or [1, 3, H, W] in [-1, 1], any size -> [1, 3, R, R] at the model's size."""
    if target.ndim == 3:
        target = target[None]
    if target.ndim != 4 or target.shape[:2] != (1, 3):
        raise ValueError(f"target must be one RGB image [3, H, W], got {list(target.shape)}")
    if not torch.isfinite(target).all():
        raise ValueError("target has non-finite values")
    device = next(model.parameters()).device
    return fit_to(target.float().clamp(-1, 1), int(model.config.img_resolution)).to(device)


def invert(
    model: Generator,
    target: torch.Tensor,
    config: InversionConfig | None = None,
    camera: tuple[float, float] | None = None,
    lpips: nn.Module | None = None,
    progress: bool = False,
) -> Inversion:
    """Fit ``model`` to ``target`` (see :func:`prepare_target`). ``camera`` = (yaw, pitch) in
    degrees fixes the view; None estimates it. The model's weights are not changed."""
    from tqdm import tqdm

    config = config or InversionConfig()
    target = prepare_target(model, target)
    device = target.device
    if camera is not None and not all(math.isfinite(v) for v in camera):
        raise ValueError("camera yaw and pitch must be finite numbers")
    if camera is not None and abs(camera[1]) > MAX_PITCH_DEG:
        raise ValueError(f"camera pitch must be within ±{MAX_PITCH_DEG:g} degrees")
    started = time.perf_counter()
    was_training = model.training
    requires = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        estimate = camera is None
        yaw0, pitch0 = search_camera(model, target, config) if camera is None else camera
        yaw = torch.tensor([float(yaw0)], requires_grad=estimate)
        pitch = torch.tensor([float(pitch0)], requires_grad=estimate)
        w_avg = w_avg_of(model).detach().to(device)
        rows = model.num_ws if config.space == "w+" else 1
        w = w_avg[None, None].repeat(1, rows, 1).requires_grad_(True)
        spread = max(w_spread(model, seed=config.seed), 1e-8)
        groups: list[dict[str, Any]] = [{"params": [w], "lr": config.lr, "base": config.lr}]
        if estimate:
            groups.append(
                {"params": [yaw, pitch], "lr": config.camera_lr, "base": config.camera_lr}
            )
        optimizer = torch.optim.Adam(groups, betas=(0.9, 0.999))
        history: list[float] = []
        bar = tqdm(range(config.steps), desc="invert", unit="step", disable=not progress)
        for step in bar:
            factor = _lr_factor(step, config.steps, config.warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = group["base"] * factor
            label = orbit_camera(model, yaw, pitch.clamp(-MAX_PITCH_DEG, MAX_PITCH_DEG)).to_label()
            image = _render(model, w.expand(1, model.num_ws, -1), label.to(device), config.seed)
            loss = _image_loss(image, target, config, lpips)
            loss = loss + config.w_reg * ((w - w_avg).square().sum(-1) / spread**2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))
            bar.set_postfix(loss=f"{history[-1]:.4f}")
        with torch.no_grad():
            pitch.clamp_(-MAX_PITCH_DEG, MAX_PITCH_DEG)
            label = orbit_camera(model, yaw, pitch).to_label().to(device)
            ws = w.detach().expand(1, model.num_ws, -1)
            final = _render(model, ws, label, config.seed)
            score = float(psnr(final.cpu(), target.cpu())[0])
    finally:
        for p, r in zip(model.parameters(), requires, strict=True):
            p.requires_grad_(r)
        model.train(was_training)
    result = Inversion(
        ws=ws[0].cpu().clone(),
        yaw_deg=round(float(yaw.detach()), 4),
        pitch_deg=round(float(pitch.detach()), 4),
        camera_label=[round(v, 7) for v in label[0].cpu().tolist()],
        psnr_db=round(score, 3),
        steps=config.steps,
        seconds=0.0,
        space=config.space,
        camera_estimated=estimate,
        config=asdict(config),
        image=final[0].cpu(),
        history=history,
    )
    if config.tune_steps > 0:
        tuned, image = pivotal_tuning(model, ws, label, target, config, lpips, progress)
        result.tuned_model, result.image = tuned, image[0].cpu()
        result.tuned_psnr_db = round(float(psnr(image.cpu(), target.cpu())[0]), 3)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def pivotal_tuning(
    model: Generator,
    ws: torch.Tensor,
    label: torch.Tensor,
    target: torch.Tensor,
    config: InversionConfig,
    lpips: nn.Module | None = None,
    progress: bool = False,
) -> tuple[nn.Module, torch.Tensor]:
    """Fine-tune a copy of ``model`` so that ``ws`` at ``label`` draws ``target``.

    Returns the tuned copy (in eval mode, frozen) and its final render; ``model`` is untouched.
    The mapping is left as it was, so the copy keeps the original's latent space.
    """
    from tqdm import tqdm

    tuned = copy.deepcopy(model).train()
    tuned.requires_grad_(False)
    params = [p for n, p in tuned.named_parameters() if "mapping" not in n]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=config.tune_lr)
    bar = tqdm(range(config.tune_steps), desc="tune", unit="step", disable=not progress)
    for _ in bar:
        loss = _image_loss(_render(tuned, ws, label, config.seed), target, config, lpips)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    tuned.eval().requires_grad_(False)
    with torch.no_grad():
        image = _render(tuned, ws, label, config.seed)
    return tuned, image
