"""The demo world's "real" photos for stage 2, with a deliberate pose-attribute correlation, and
the measurement of the bias it teaches a student.

Real datasets are rarely pose-balanced: in FFHQ, for instance, some attributes are more common in
profile views than in frontal ones. A discriminator that sees only such photos can push the
student to change an identity's appearance with the camera (a 3D inconsistency); the paper mixes
teacher renders into the discriminator's "real" batch against it. To measure that here, the demo
dataset makes one colour, green skin, more frequent at large yaw than at small yaw:
``write_biased_dataset``. ``green_shift`` then asks how much greener a student draws large-yaw
views than its teacher does for the same latents, relative to frontal views; the teacher (a 3D
volume) cannot change an identity with the camera, so it is the unbiased reference, and comparing
to it on the same latents cancels everything else (green hats, shading, visibility).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...models.errors import ConfigError
from ...models.render import Generator
from ...models.rng import generator_for
from .scenes import (
    CAMERA_FOCAL,
    SCENE_DIM,
    attributes,
    build_scenes,
    check_focal,
    render_scenes,
    scene_camera,
)

GREEN_SKIN = (0.7, 0.9)  # the skin-palette positions (attribute 3) that are green
DATASET_INFO = "demo_dataset.json"


def is_green(z: torch.Tensor) -> torch.Tensor:
    """Whether each latent's figure has green skin: [N] bool."""
    skin = attributes(z)[:, 3]
    return (skin >= GREEN_SKIN[0]) & (skin < GREEN_SKIN[1])


@dataclass(frozen=True)
class BiasedDatasetConfig:
    count: int = 4000
    seed: int = 7
    resolution: int = 128
    yaw_std_deg: float = 35.0  # poses: normal, clipped, like the student's training cameras
    yaw_max_deg: float = 60.0
    pitch_std_deg: float = 10.0
    pitch_max_deg: float = 20.0
    large_yaw_deg: float = 30.0  # |yaw| at or beyond this counts as "large"
    green_at_large_yaw: float = 0.6  # P(green skin | large yaw); small yaw keeps the natural rate
    focal: float = CAMERA_FOCAL  # the framing: the teacher's focal length (demo-face: 3.2)

    def __post_init__(self) -> None:
        if self.count < 1 or self.resolution < 8:
            raise ConfigError("count must be >= 1 and resolution >= 8")
        if not 0 <= self.green_at_large_yaw <= 1:
            raise ConfigError("green_at_large_yaw must be a probability")
        check_focal(self.focal)


def _draw_latent(gen: torch.Generator, want_green: bool | None) -> torch.Tensor:
    """One latent; with ``want_green`` set, redrawn until its skin matches (rejection sampling)."""
    while True:
        z = torch.randn(1, SCENE_DIM, generator=gen)
        if want_green is None or bool(is_green(z)) == want_green:
            return z


def draw_dataset(config: BiasedDatasetConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents [N, D], yaw [N] and pitch [N] of the biased dataset (a function of the seed)."""
    gen = torch.Generator().manual_seed(config.seed)
    n = config.count
    yaw = (torch.randn(n, generator=gen) * config.yaw_std_deg).clamp(
        -config.yaw_max_deg, config.yaw_max_deg
    )
    pitch = (torch.randn(n, generator=gen) * config.pitch_std_deg).clamp(
        -config.pitch_max_deg, config.pitch_max_deg
    )
    coin = torch.rand(n, generator=gen)
    latents = []
    for i in range(n):
        large = abs(float(yaw[i])) >= config.large_yaw_deg
        want = bool(coin[i] < config.green_at_large_yaw) if large else None
        latents.append(_draw_latent(gen, want))
    return torch.cat(latents), yaw, pitch


def write_biased_dataset(
    out_dir: str | os.PathLike[str], config: BiasedDatasetConfig, progress: bool = True
) -> dict[str, Any]:
    """Render the dataset in EG3D's layout (``dataset.json`` + PNGs) and describe its bias."""
    from tqdm import tqdm

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; choose a new --out for the dataset")
    z, yaw, pitch = draw_dataset(config)
    camera = scene_camera(yaw.tolist(), pitch.tolist(), config.focal)
    labels = camera.to_label()
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=False)
    entries = []
    batch = 32
    with tqdm(total=config.count, unit="img", desc="demo dataset", disable=not progress) as bar:
        for start in range(0, config.count, batch):
            stop = min(start + batch, config.count)
            scenes = build_scenes(z[start:stop])
            cam = scene_camera(yaw[start:stop].tolist(), pitch[start:stop].tolist(), config.focal)
            images = render_scenes(scenes, cam, config.resolution, supersample=2).image
            pixels = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            for offset, array in enumerate(pixels.permute(0, 2, 3, 1).numpy()):
                i = start + offset
                name = f"{i // 1000:05d}/img{i:08d}.png"
                (tmp / name).parent.mkdir(exist_ok=True)
                Image.fromarray(np.ascontiguousarray(array)).save(tmp / name)
                entries.append([name, [round(v, 7) for v in labels[i].tolist()]])
            bar.update(stop - start)
    green = is_green(z)
    large = yaw.abs() >= config.large_yaw_deg
    info = {
        "config": asdict(config),
        "green_fraction_small_yaw": round(float(green[~large].float().mean()), 4),
        "green_fraction_large_yaw": round(float(green[large].float().mean()), 4)
        if bool(large.any())
        else None,
        "large_yaw_fraction": round(float(large.float().mean()), 4),
    }
    (tmp / "dataset.json").write_text(json.dumps({"labels": entries}) + "\n")
    (tmp / DATASET_INFO).write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(tmp, out)
    return info


def greenness(images: torch.Tensor) -> torch.Tensor:
    """Mean green excess, g - (r + b) / 2, over each image's non-background pixels: [N]."""
    rgb = (images.float().clamp(-1, 1) + 1) / 2
    excess = rgb[:, 1] - (rgb[:, 0] + rgb[:, 2]) / 2
    foreground = rgb.amax(dim=1) > 0.08  # the background is black
    return (excess * foreground).sum(dim=(1, 2)) / foreground.sum(dim=(1, 2)).clamp(min=1)


@torch.no_grad()
def green_shift(
    student: Generator,
    teacher: Generator,
    samples: int = 64,
    seed: int = 123,
    large_yaw_deg: float = 45.0,
    batch_size: int = 8,
) -> dict[str, float]:
    """How much greener the student draws large-yaw views than frontal ones, beyond the teacher.

    shift = mean over latents of [s(large) - t(large)] - [s(frontal) - t(frontal)], with s, t the
    greenness of the student's and teacher's images of the same latent; large = +-large_yaw_deg
    (both sides averaged). 0 means no pose-dependent colour bias.
    """
    device = next(teacher.parameters()).device
    focal = teacher.config.rendering.focal_length
    z = torch.randn(samples, teacher.z_dim, generator=torch.Generator().manual_seed(seed))

    def green_at(model: Generator, yaw: float) -> torch.Tensor:
        values = []
        for start in range(0, samples, batch_size):
            zb = z[start : start + batch_size].to(device)
            frontal = scene_camera([0.0] * len(zb), [0.0] * len(zb), focal).to_label().to(device)
            w = teacher.mapping(zb, frontal)
            c = scene_camera([yaw] * len(zb), [0.0] * len(zb), focal).to_label().to(device)
            if model is teacher:  # the same ray jitter for a latent whatever the call
                rng = [generator_for(seed + start + i, device) for i in range(len(zb))]
                image = teacher.synthesis(w, c, noise_mode="const", rng=rng)["image"]
            else:
                image = model.synthesis(w[:, 0], c, noise_mode="const")["image"]
            values.append(greenness(image.cpu()))
        return torch.cat(values)

    diff = {}
    for yaw in (0.0, -large_yaw_deg, large_yaw_deg):
        diff[yaw] = green_at(student, yaw) - green_at(teacher, yaw)
    large = (diff[-large_yaw_deg] + diff[large_yaw_deg]) / 2
    shift = large - diff[0.0]
    return {
        "green_shift": round(float(shift.mean()), 5),
        "green_shift_std_error": round(float(shift.std() / samples**0.5), 5),
        "student_minus_teacher_frontal": round(float(diff[0.0].mean()), 5),
        "student_minus_teacher_large_yaw": round(float(large.mean()), 5),
        "samples": samples,
        "large_yaw_deg": large_yaw_deg,
    }
