"""``distill3d eval``: how faithful and how 3D-consistent a student is, measured against its teacher.

- Fidelity: student vs teacher on held-out latents (their own seed stream) at poses inside the
  student's training range and beyond it (up to the 1.5x range it declares): PSNR, SSIM and
  LPIPS (when local weights exist).
- 3D consistency: each pose is paired with one ``pair_offset_deg`` further in yaw; view A is warped
  into view B with the teacher's depth (``models.metrics.reprojection_error``), for the teacher's
  own images and for the student's. The teacher's number is the floor a student can reach.
- Distribution (optional, needs the FID Inception weights): FID and KID of student samples
  against a folder of real images (the teacher's samples are scored against it too, as the
  reference point) or against teacher renders of other latents.
- A markdown report with the numbers, an image grid (teacher, student, difference at several
  poses) and a side-by-side turntable GIF.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ...models.camera import Camera
from ...models.eg3d.generator import TriPlaneGenerator
from ...models.errors import ConfigError
from ...models.images import batch_to_uint8, save_image
from ...models.metrics import psnr, reprojection_error, ssim
from ...models.orbit import OrbitPath, orbit_angles
from ...models.render import frontal_camera, orbit_camera
from ...models.rng import generator_for
from ...models.student import Student
from .fid import KID, FeatureStats, features_of, fid, folder_batches, format_kid, image_files, kid


@dataclass(frozen=True)
class EvalConfig:
    samples: int = 16  # latents; each is rendered at one in-range and one out-of-range pose
    seed: int = 20231  # its own stream: never a training seed by default
    truncation_psi: float = 0.7
    train_yaw_deg: float = 50.0  # the student's training range (its declared range / 1.5)
    train_pitch_deg: float = 20.0
    pair_offset_deg: float = 10.0  # yaw between the two views of a consistency pair
    batch_size: int = 4
    turntable_frames: int = 24
    grid_samples: int = 4
    fid_samples: int = 1000  # generated images per model for FID/KID (when Inception is given)

    def __post_init__(self) -> None:
        if self.samples < 1 or self.batch_size < 1 or self.grid_samples < 1:
            raise ValueError("samples, batch_size and grid_samples must be at least 1")
        if self.fid_samples < 2:
            raise ValueError("fid_samples must be at least 2 (FID needs a covariance)")
        if not 0 < self.train_pitch_deg * 1.5 < 90:
            raise ValueError("1.5 x train_pitch_deg must stay below 90 degrees")
        if self.turntable_frames < 2:
            raise ValueError("turntable_frames must be at least 2")


@dataclass
class Renders:
    teacher: torch.Tensor  # [N, 3, H, W]
    depth: torch.Tensor  # [N, 1, h, w] teacher ray distances
    student: torch.Tensor


def _poses(
    config: EvalConfig, gen: torch.Generator
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Yaw/pitch per sample: uniform inside the training range, and between it and 1.5x."""
    n = config.samples
    inside = (
        (torch.rand(n, generator=gen) * 2 - 1) * config.train_yaw_deg,
        (torch.rand(n, generator=gen) * 2 - 1) * config.train_pitch_deg,
    )
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    beyond = (
        sign * config.train_yaw_deg * (1 + 0.5 * torch.rand(n, generator=gen)),
        (torch.rand(n, generator=gen) * 2 - 1) * config.train_pitch_deg * 1.5,
    )
    return {"in_range": inside, "beyond_range": beyond}


@torch.no_grad()
def render_pair(
    teacher: TriPlaneGenerator, student: Student, w: torch.Tensor, camera: Camera, batch: int
) -> Renders:
    """Teacher (with depth) and student images of ``w`` [N, w_dim] from ``camera``."""
    device = next(teacher.parameters()).device
    outs: dict[str, list[torch.Tensor]] = {"teacher": [], "depth": [], "student": []}
    label = camera.to_label().to(device)
    for start in range(0, len(w), batch):
        wb = w[start : start + batch].to(device)
        cb = label[start : start + batch]
        ws = wb[:, None].expand(-1, teacher.num_ws, -1)
        rng = [generator_for(start + i, device) for i in range(len(wb))]
        t = teacher.synthesis(ws, cb, noise_mode="const", rng=rng)
        s = student.synthesis(wb, cb, noise_mode="const")
        outs["teacher"].append(t["image"].float().cpu())
        outs["depth"].append(t["image_depth"].float().cpu())
        outs["student"].append(s["image"].float().cpu())
    return Renders(*(torch.cat(outs[k]) for k in ("teacher", "depth", "student")))


def _stats(values: torch.Tensor) -> dict[str, float]:
    v = values[torch.isfinite(values)]
    if len(v) == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {
        "mean": round(float(v.mean()), 4),
        "std": round(float(v.std()) if len(v) > 1 else 0.0, 4),
        "n": len(v),
    }


def evaluate(
    teacher: TriPlaneGenerator,
    student: Student,
    out_dir: str | os.PathLike[str],
    config: EvalConfig | None = None,
    lpips: torch.nn.Module | None = None,
    inception: torch.nn.Module | None = None,
    real: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure, write ``report.md``, ``report.json``, ``grid.png`` and ``turntable.gif``.

    With ``inception``, FID/KID are added: against the images in the folder ``real``, or, when
    ``real`` is None, against teacher renders of latents neither model is scored on.
    """
    if real is not None:
        real_files = image_files(real)  # before any rendering: a bad folder fails at once
    if real is not None and inception is None:
        raise ConfigError("a real-image folder was given without Inception weights for FID")
    config = config or EvalConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher.eval()
    student.eval()
    device = next(teacher.parameters()).device
    student.to(device)
    gen = torch.Generator().manual_seed(config.seed)
    z = torch.randn(config.samples, teacher.z_dim, generator=gen)
    with torch.no_grad():
        c_cond = frontal_camera(teacher, config.samples).to_label().to(device)
        w = teacher.mapping(z.to(device), c_cond, config.truncation_psi)[:, 0]
    report: dict[str, Any] = {"config": asdict(config), "fidelity": {}, "consistency": {}}
    grid_rows = []
    for group, (yaw, pitch) in _poses(config, gen).items():
        view_a = orbit_camera(teacher, yaw.tolist(), pitch.tolist())
        yaw_b = yaw + torch.where(yaw >= 0, -1.0, 1.0) * config.pair_offset_deg  # towards frontal
        view_b = orbit_camera(teacher, yaw_b.tolist(), pitch.tolist())
        a = render_pair(teacher, student, w, view_a, config.batch_size)
        b = render_pair(teacher, student, w, view_b, config.batch_size)
        fidelity = {
            "psnr_db": _stats(psnr(a.student, a.teacher)),
            "ssim": _stats(ssim(a.student, a.teacher)),
        }
        if lpips is not None:
            with torch.no_grad():
                lp = torch.cat(
                    [
                        lpips(
                            a.student[i : i + config.batch_size].to(device),
                            a.teacher[i : i + config.batch_size].to(device),
                        ).cpu()
                        for i in range(0, config.samples, config.batch_size)
                    ]
                )
            fidelity["lpips"] = _stats(lp)
        report["fidelity"][group] = fidelity
        teacher_rep = reprojection_error(a.teacher, a.depth, view_a, b.teacher, b.depth, view_b)
        student_rep = reprojection_error(a.student, a.depth, view_a, b.student, b.depth, view_b)
        report["consistency"][group] = {
            "teacher_reprojection_error": _stats(teacher_rep.error),
            "student_reprojection_error": _stats(student_rep.error),
            "valid_fraction": _stats(teacher_rep.valid_fraction),
        }
        k = config.grid_samples
        diff = (a.student[:k] - a.teacher[:k]).abs() * 2 - 1  # |difference| scaled to [-1, 1]
        grid_rows.append(torch.cat([a.teacher[:k], a.student[:k], diff.clamp(-1, 1)], dim=3))
    grid = torch.cat([torch.cat(list(rows), dim=1) for rows in grid_rows], dim=1)
    save_image(batch_to_uint8(grid[None])[0], out / "grid.png")
    _turntable(teacher, student, w[:1], config, out / "turntable.gif")
    if inception is not None:
        report["distribution"] = _distribution(
            teacher, student, inception, config, real_files if real is not None else None, progress
        )
        if real is not None:
            report["distribution"]["reference"] = str(real)
    report["files"] = ["report.md", "report.json", "grid.png", "turntable.gif"]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    return report


def _distribution(
    teacher: TriPlaneGenerator,
    student: Student,
    inception: torch.nn.Module,
    config: EvalConfig,
    real_files: list[Path] | None,
    progress: bool,
) -> dict[str, Any]:
    """FID/KID of the student (and, against real images, the teacher) at in-range poses."""
    device = next(teacher.parameters()).device
    n = config.fid_samples

    def samples(model: str, stream: int) -> FeatureStats:
        batches = _sample_batches(teacher, student, model, config, config.seed + stream)
        with tqdm(total=n, unit="img", desc=f"FID: {model}", disable=not progress) as bar:
            return features_of(inception, _counted(batches, bar), device)

    scored = {"student": samples("student", 1)}
    if real_files is None:
        reference = samples("teacher", 2)
        label = "teacher renders"
    else:
        scored["teacher"] = samples("teacher", 2)
        with tqdm(total=len(real_files), unit="img", desc="FID: real", disable=not progress) as bar:
            batches = folder_batches(real_files, config.batch_size)
            reference = features_of(inception, _counted(batches, bar), device)
        label = "real images"
    result: dict[str, Any] = {
        "reference": label,
        "reference_samples": reference.count,
        "samples": n,
        "poses": "in range",
    }
    for name, stats in scored.items():
        k = kid(stats, reference, seed=config.seed)
        result[name] = {"fid": round(fid(stats, reference), 4), "kid": asdict(k)}
    return result


def _sample_batches(
    teacher: TriPlaneGenerator, student: Student, model: str, config: EvalConfig, seed: int
) -> Iterator[torch.Tensor]:
    """Images of ``fid_samples`` latents from their own seed stream at random in-range poses."""
    device = next(teacher.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    n = config.fid_samples
    z = torch.randn(n, teacher.z_dim, generator=gen)
    yaw = ((torch.rand(n, generator=gen) * 2 - 1) * config.train_yaw_deg).tolist()
    pitch = ((torch.rand(n, generator=gen) * 2 - 1) * config.train_pitch_deg).tolist()
    label = orbit_camera(teacher, yaw, pitch).to_label()
    for start in range(0, n, config.batch_size):
        zb = z[start : start + config.batch_size].to(device)
        cb = label[start : start + config.batch_size].to(device)
        with torch.no_grad():
            c_cond = frontal_camera(teacher, len(zb)).to_label().to(device)
            ws = teacher.mapping(zb, c_cond, config.truncation_psi)
            if model == "teacher":
                rng = [generator_for(seed + start + i, device) for i in range(len(zb))]
                image = teacher.synthesis(ws, cb, noise_mode="const", rng=rng)["image"]
            else:
                image = student.synthesis(ws[:, 0], cb, noise_mode="const")["image"]
        yield image.float()


def _counted(batches: Iterable[torch.Tensor], bar: Any) -> Iterator[torch.Tensor]:
    for batch in batches:
        yield batch
        bar.update(len(batch))


def turntable_path(config: EvalConfig) -> OrbitPath:
    """The turntable sweeps past the training range (1.5x its yaw) at half its pitch."""
    return OrbitPath(
        config.turntable_frames,
        yaw_amplitude_deg=1.5 * config.train_yaw_deg,
        pitch_amplitude_deg=config.train_pitch_deg * 0.5,
    )


def _turntable(
    teacher: TriPlaneGenerator, student: Student, w: torch.Tensor, config: EvalConfig, path: Path
) -> None:
    from ...models.video import encode_video

    yaws, pitches = orbit_angles(turntable_path(config))
    camera = orbit_camera(teacher, yaws, pitches)
    r = render_pair(teacher, student, w.expand(len(yaws), -1), camera, config.batch_size)
    frames = batch_to_uint8(torch.cat([r.teacher, r.student], dim=3))
    path.write_bytes(encode_video(frames, fps=12, fmt="gif"))


def _fmt(stat: dict[str, float]) -> str:
    if not stat["n"] or not math.isfinite(stat["mean"]):
        return "n/a"
    return f"{stat['mean']:.4g} ± {stat['std']:.2g}"


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        "# Student vs teacher",
        "",
        f"{cfg['samples']} held-out latents (seed {cfg['seed']}, psi {cfg['truncation_psi']}); "
        f"in range: |yaw| <= {cfg['train_yaw_deg']:g}, |pitch| <= {cfg['train_pitch_deg']:g} degrees; "
        f"beyond: up to 1.5x. Mean ± standard deviation over latents.",
        "",
        "## Fidelity to the teacher",
        "",
        "| poses | PSNR (dB) | SSIM | LPIPS |",
        "|---|---|---|---|",
    ]
    for group, f in report["fidelity"].items():
        lp = _fmt(f["lpips"]) if "lpips" in f else "no weights"
        lines.append(
            f"| {group.replace('_', ' ')} | {_fmt(f['psnr_db'])} | {_fmt(f['ssim'])} | {lp} |"
        )
    lines += [
        "",
        "## 3D consistency",
        "",
        f"View A warped into a view {cfg['pair_offset_deg']:g} degrees of yaw away with the "
        "teacher's depth; mean absolute colour error on the [0, 1] scale over pixels both views "
        "see (lower is more consistent; the teacher's own error is the floor).",
        "",
        "| poses | teacher | student | pixels compared |",
        "|---|---|---|---|",
    ]
    for group, c in report["consistency"].items():
        lines.append(
            f"| {group.replace('_', ' ')} | {_fmt(c['teacher_reprojection_error'])} | "
            f"{_fmt(c['student_reprojection_error'])} | {_fmt(c['valid_fraction'])} |"
        )
    if "distribution" in report:
        lines += _distribution_markdown(report["distribution"])
    lines += [
        "",
        "## Images",
        "",
        f"Each row one latent: teacher, student, |difference|; the first {cfg['grid_samples']} "
        "rows at in-range poses, the rest beyond the range.",
        "",
        "![grid](grid.png)",
        "",
        "Turntable (teacher left, student right):",
        "",
        "![turntable](turntable.gif)",
        "",
    ]
    return "\n".join(lines)


def _distribution_markdown(d: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Distribution: FID and KID",
        "",
        f"{d['samples']} samples per model at in-range poses, against {d['reference_samples']} "
        f"{d['reference']} (FID Inception pool3 features; KID x 10^3, mean ± std over "
        "subsets). Few samples bias FID upwards: compare numbers at equal counts only.",
        "",
        "| model | FID | KID x 10^3 |",
        "|---|---|---|",
    ]
    for name in ("student", "teacher"):
        if name in d:
            k = KID(**d[name]["kid"])
            lines.append(f"| {name} | {d[name]['fid']:.3f} | {format_kid(k)} |")
    return lines
