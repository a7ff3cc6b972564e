"""``distill3d demo report``: the demo world's numbers and pictures, from ground truth up.

Held-out scenes (their own seed stream) are rendered by the ray tracer (ground truth), the teacher
and the student at every (yaw, pitch) of a grid across the training range, and the report gives:

- fidelity of the teacher to ground truth (PSNR, SSIM, depth error) and of the student to the
  teacher (and to ground truth), overall and at each yaw;
- the faces (``face_metrics``): PSNR inside the facial features and the pupils' contrast, which a
  model that paints a smooth face where the eyes, nose and mouth are fails however well it
  draws the rest;
- 3D consistency: the reprojection error (``models.metrics.reprojection_error``) of each, every
  view warped into one ``pair_offset_deg`` further in yaw with depth (ground truth's exact depth
  for ground truth, the teacher's for both networks);
- speed of the student vs the teacher on the machine it runs on (batch 1, median);
- optionally the pose bias of stage-2 students (``demo_data.green_shift``);
- ``samples.png`` (rows: ground truth, teacher, student per scene; columns: yaws, at the middle
  pitch), ``faces.png`` (frontal views side by side, enlarged) and
  ``turntable.gif`` (the three side by side).
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...models.camera import Camera
from ...models.eg3d.generator import TriPlaneGenerator
from ...models.images import batch_to_uint8, save_image
from ...models.metrics import psnr, reprojection_error, ssim
from ...models.orbit import OrbitPath, orbit_angles
from ...models.rng import generator_for
from ...models.student import Student
from ...models.timing import time_calls
from .dataset import green_shift
from .face_metrics import feature_psnr, pupil_contrast
from .scenes import build_scenes, render_scenes, sample_z
from .teacher import model_camera

REPORT_SEED = 20_000_003  # held-out scenes: neither a training step's nor the eval's stream


@dataclass(frozen=True)
class DemoReportConfig:
    scenes: int = 16
    yaws: tuple[float, ...] = (-60.0, -30.0, 0.0, 30.0, 60.0)
    pitches: tuple[float, ...] = (-20.0, 0.0, 20.0)  # samples.png shows the middle one
    pair_offset_deg: float = 10.0
    grid_scenes: int = 4
    turntable_frames: int = 36
    turntable_pitch_deg: float = 10.0
    speed_repeats: int = 5
    bias_samples: int = 64

    @property
    def samples_pitch_deg(self) -> float:
        """The pitch that ``samples.png`` shows: the middle one of ``pitches``."""
        return self.pitches[len(self.pitches) // 2]


@dataclass
class Views:
    image: torch.Tensor  # [N, 3, R, R]
    depth: torch.Tensor  # [N, 1, r, r]
    part: torch.Tensor  # [N, 1, R, R] ground truth's part map (scenes.SceneRender.part)


@torch.no_grad()
def _views(
    teacher: TriPlaneGenerator, student: Student, z: torch.Tensor, camera: Camera
) -> dict[str, Views]:
    device = next(teacher.parameters()).device
    n = len(z)
    res, raw = teacher.config.img_resolution, teacher.config.neural_rendering_resolution
    scenes = build_scenes(z)
    truth = render_scenes(scenes, camera, res, supersample=2)
    truth_depth = render_scenes(scenes, camera, raw, supersample=1).depth
    frontal = model_camera(teacher, [0.0] * n, [0.0] * n).to_label().to(device)
    ws = teacher.mapping(z.to(device), frontal)
    c = camera.to_label().to(device)
    rng = [generator_for(i, device) for i in range(n)]
    t = teacher.synthesis(ws, c, noise_mode="const", rng=rng)
    s = student.synthesis(ws[:, 0], c, noise_mode="const")
    return {
        "ground_truth": Views(truth.image, truth_depth, truth.part),
        "teacher": Views(t["image"].float().cpu(), t["image_depth"].float().cpu(), truth.part),
        "student": Views(s["image"].float().cpu(), t["image_depth"].float().cpu(), truth.part),
    }


def _mean(values: torch.Tensor) -> float:
    v = values[torch.isfinite(values)]
    return round(float(v.mean()), 4) if len(v) else float("nan")


@dataclass
class _Fidelity:
    """Per-image fidelity numbers of some views, gathered batch by batch (feature PSNR per batch:
    a batch pools its few feature pixels before the log)."""

    values: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def _put(self, key: str, value: torch.Tensor | float) -> None:
        self.values.setdefault(key, []).append(torch.as_tensor(value, dtype=torch.float32).view(-1))

    def add(self, views: dict[str, Views]) -> None:
        gt, t, s = views["ground_truth"], views["teacher"], views["student"]
        self._put("teacher_psnr", psnr(t.image, gt.image))
        self._put("teacher_ssim", ssim(t.image, gt.image))
        solid = torch.isfinite(gt.depth)
        depth_err = ((t.depth - gt.depth.nan_to_num(posinf=0)).abs() * solid).flatten(1).sum(1)
        self._put("teacher_depth", depth_err / solid.flatten(1).sum(1).clamp(min=1))
        self._put("student_psnr", psnr(s.image, t.image))
        self._put("student_ssim", ssim(s.image, t.image))
        self._put("student_gt_psnr", psnr(s.image, gt.image))
        self._put("teacher_feature_psnr", feature_psnr(t.image, gt.image, gt.part))
        self._put("student_feature_psnr", feature_psnr(s.image, t.image, gt.part))
        for name, v in views.items():
            self._put(f"{name}_pupil_contrast", pupil_contrast(v.image, gt.part))

    @classmethod
    def merged(cls, parts: Any) -> _Fidelity:
        whole = cls()
        for part in parts:
            for key, values in part.values.items():
                whole.values.setdefault(key, []).extend(values)
        return whole

    def summary(self) -> dict[str, float]:
        return {key: _mean(torch.cat(v)) for key, v in self.values.items()}


def demo_report(
    teacher: TriPlaneGenerator,
    student: Student,
    out_dir: str | os.PathLike[str],
    config: DemoReportConfig | None = None,
    bias_students: dict[str, Student] | None = None,
) -> dict[str, Any]:
    """Measure and write ``report.md``, ``report.json``, ``samples.png``, ``faces.png`` and
    ``turntable.gif``."""
    config = config or DemoReportConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher.eval()
    student.eval()
    z = sample_z(REPORT_SEED, config.scenes)
    per_yaw = {yaw: _Fidelity() for yaw in config.yaws}
    consistency: dict[str, list[torch.Tensor]] = {"ground_truth": [], "teacher": [], "student": []}
    grid_rows: list[list[torch.Tensor]] = [[] for _ in range(3 * config.grid_scenes)]
    n, k = config.scenes, config.grid_scenes
    for yaw in config.yaws:
        for pitch in config.pitches:
            cam_a = model_camera(teacher, [yaw] * n, [pitch] * n)
            toward = -1.0 if yaw > 0 else 1.0
            yaw_b = yaw + toward * config.pair_offset_deg
            cam_b = model_camera(teacher, [yaw_b] * n, [pitch] * n)
            a, b = _views(teacher, student, z, cam_a), _views(teacher, student, z, cam_b)
            per_yaw[yaw].add(a)
            for name in consistency:
                va, vb = a[name], b[name]
                r = reprojection_error(va.image, va.depth, cam_a, vb.image, vb.depth, cam_b)
                consistency[name].append(r.error)
            if pitch == config.samples_pitch_deg:
                for i in range(k):
                    for j, name in enumerate(("ground_truth", "teacher", "student")):
                        grid_rows[3 * i + j].append(a[name].image[i])
    grid = torch.cat([torch.cat(row, dim=2) for row in grid_rows], dim=1)
    save_image(batch_to_uint8(grid[None])[0], out / "samples.png")
    _faces(teacher, student, z[:k], out / "faces.png")
    _turntable(teacher, student, z[:1], config, out / "turntable.gif")
    overall = _Fidelity.merged(per_yaw.values())
    report: dict[str, Any] = {
        "config": asdict(config),
        "samples_pitch_deg": config.samples_pitch_deg,
        "fidelity": overall.summary(),
        "fidelity_by_yaw": {f"{yaw:g}": f.summary() for yaw, f in per_yaw.items()},
        "reprojection_error": {key: _mean(torch.cat(v)) for key, v in consistency.items()},
        "speed_ms_per_image": _speed(teacher, student, config.speed_repeats),
        "parameters": {
            "teacher": sum(p.numel() for p in teacher.parameters()),
            "student": sum(p.numel() for p in student.parameters()),
        },
    }
    if bias_students:
        report["bias"] = {
            name: green_shift(model, teacher, config.bias_samples)
            for name, model in bias_students.items()
        }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    return report


def _speed(teacher: TriPlaneGenerator, student: Student, repeats: int) -> dict[str, float]:
    """Median ms per image at batch 1 of each model on one held-out scene (yaw 10, pitch 5)."""
    device = str(next(teacher.parameters()).device)
    z = sample_z(REPORT_SEED, 1).to(device)
    c = model_camera(teacher, [10.0], [5.0]).to_label().to(device)
    ws = teacher.mapping(z, c)
    rng = [generator_for(0, device)]
    calls = {
        "teacher": lambda: teacher.synthesis(ws, c, noise_mode="const", rng=rng),
        "student": lambda: student.synthesis(ws[:, 0], c, noise_mode="const"),
    }
    return {
        name: round(1000 * statistics.median(time_calls(call, device, 1, repeats)), 3)
        for name, call in calls.items()
    }


FACE_ZOOM = 2  # faces.png: pixels drawn as 2 x 2 blocks, so a pupil is visible on a web page


def _faces(teacher: TriPlaneGenerator, student: Student, z: torch.Tensor, path: Path) -> None:
    """``faces.png``: the scenes seen from the front (yaw 0, pitch 0), one row each, ground truth,
    teacher and student side by side, every pixel enlarged ``FACE_ZOOM`` times (no smoothing)."""
    views = _views(teacher, student, z, model_camera(teacher, [0.0] * len(z), [0.0] * len(z)))
    rows = [torch.cat([views[name].image[i] for name in views], dim=2) for i in range(len(z))]
    grid = torch.cat(rows, dim=1)
    big = grid.repeat_interleave(FACE_ZOOM, dim=1).repeat_interleave(FACE_ZOOM, dim=2)
    save_image(batch_to_uint8(big[None])[0], path)


def turntable_path(config: DemoReportConfig) -> OrbitPath:
    """The report's turntable: 60 degrees either way in yaw, the report's pitch up and down."""
    return OrbitPath(
        config.turntable_frames,
        yaw_amplitude_deg=60.0,
        pitch_amplitude_deg=config.turntable_pitch_deg,
    )


@torch.no_grad()
def _turntable(
    teacher: TriPlaneGenerator,
    student: Student,
    z: torch.Tensor,
    config: DemoReportConfig,
    path: Path,
) -> None:
    from ...models.video import encode_video

    frames = []
    yaws, pitches = orbit_angles(turntable_path(config))
    for yaw, pitch in zip(yaws, pitches, strict=True):
        views = _views(teacher, student, z, model_camera(teacher, [yaw], [pitch]))
        frames.append(torch.cat([views[k].image for k in views], dim=3))
    path.write_bytes(encode_video(batch_to_uint8(torch.cat(frames)), fps=12, fmt="gif"))


def markdown(report: dict[str, Any]) -> str:
    cfg, f, r = report["config"], report["fidelity"], report["reprojection_error"]
    speed, params = report["speed_ms_per_image"], report["parameters"]
    yaws = ", ".join(f"{y:g}" for y in cfg["yaws"])
    pitches = ", ".join(f"{p:g}" for p in cfg["pitches"])
    lines = [
        "# Demo world: ground truth, teacher, student",
        "",
        f"{cfg['scenes']} held-out scenes at every yaw of {yaws} and pitch of {pitches} degrees.",
        "",
        "| | PSNR (dB) | SSIM | depth error (world units) |",
        "|---|---|---|---|",
        f"| teacher vs ground truth | {f['teacher_psnr']:.2f} | {f['teacher_ssim']:.4f} | "
        f"{f['teacher_depth']:.4f} |",
        f"| student vs teacher | {f['student_psnr']:.2f} | {f['student_ssim']:.4f} | |",
        f"| student vs ground truth | {f['student_gt_psnr']:.2f} | | |",
        "",
        "The faces: PSNR over the facial-feature pixels only (eyes, pupils, nose, mouth, brows, "
        "where the ground truth has them), and the pupils' contrast (brightness of the eyes' "
        "whites minus the pupils', [0, 1] scale; a face drawn without eyes scores about 0):",
        "",
        "| | feature PSNR (dB) | pupil contrast |",
        "|---|---|---|",
        f"| ground truth | | {f['ground_truth_pupil_contrast']:.3f} |",
        f"| teacher (PSNR vs ground truth) | {f['teacher_feature_psnr']:.2f} | "
        f"{f['teacher_pupil_contrast']:.3f} |",
        f"| student (PSNR vs teacher) | {f['student_feature_psnr']:.2f} | "
        f"{f['student_pupil_contrast']:.3f} |",
        "",
        "At each yaw (mean over the pitches):",
        "",
        "| yaw | teacher vs ground truth (dB) | student vs teacher (dB) | student vs teacher, "
        "features (dB) |",
        "|---|---|---|---|",
    ]
    for yaw, by in report["fidelity_by_yaw"].items():
        lines.append(
            f"| {yaw} | {by['teacher_psnr']:.2f} | {by['student_psnr']:.2f} | "
            f"{by['student_feature_psnr']:.2f} |"
        )
    ratio = r["student"] / r["teacher"] if r["teacher"] > 0 else float("nan")
    lines += [
        "",
        f"3D consistency: reprojection error into a view {cfg['pair_offset_deg']:g} degrees of "
        "yaw away (mean absolute colour error, [0, 1] scale; lower is more consistent). The "
        "student has no depth, so its images are warped with the teacher's, as in the paper:",
        "",
        "| ground truth | teacher | student | student / teacher |",
        "|---|---|---|---|",
        f"| {r['ground_truth']:.4f} | {r['teacher']:.4f} | {r['student']:.4f} | {ratio:.2f}x |",
        "",
        "Speed on this machine (batch 1, median):",
        "",
        "| | ms / image | parameters |",
        "|---|---|---|",
        f"| teacher (volumetric) | {speed['teacher']:.1f} | {params['teacher']:,} |",
        f"| student (convolutional) | {speed['student']:.1f} | {params['student']:,} |",
        "",
    ]
    if "bias" in report:
        lines += [
            "Pose bias: how much greener a student draws views at |yaw| "
            f"{next(iter(report['bias'].values()))['large_yaw_deg']:g} than frontal ones, "
            "beyond its teacher (0 = none):",
            "",
            "| student | green shift | ± s.e. |",
            "|---|---|---|",
        ]
        for name, b in report["bias"].items():
            lines.append(f"| {name} | {b['green_shift']:+.4f} | {b['green_shift_std_error']:.4f} |")
        lines.append("")
    lines += [
        "![faces](faces.png)",
        "",
        f"From the front, enlarged {FACE_ZOOM}x: ground truth, teacher, student.",
        "",
        "![samples](samples.png)",
        "",
        f"Rows per scene: ground truth, teacher, student; columns: yaw {yaws} at pitch "
        f"{report['samples_pitch_deg']:g}.",
        "",
        "![turntable](turntable.gif)",
        "",
        "Turntable: ground truth, teacher, student.",
        "",
    ]
    return "\n".join(lines)
