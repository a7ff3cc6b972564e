"""How well inversion recovers 3D from one view, measured on the demo world's ground truth.

Held-out scenes (a seed stream no training step or evaluation uses) are rendered by the scene
ray tracer from an input view and from novel views. Each model fits a latent to the input view
alone; its renders of that latent from the novel views are then compared with the ground truth
there. PSNR at the input view says how well the image is matched; PSNR at the novel views says
whether the fitted latent holds the right 3D object, which a 2D fit alone cannot guarantee. Time
per inversion compares the student (a CNN pass per step) with the volumetric teacher.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...models.images import batch_to_uint8, save_image
from ...models.inversion import InversionConfig, invert
from ...models.metrics import psnr
from ...models.render import Generator, orbit_camera, render_ws
from ...models.rng import generator_for
from .scenes import build_scenes, render_scenes, sample_z, scene_camera

INVERSION_SEED = 30_000_001  # held-out scenes: no training step, eval or report uses this stream


@dataclass(frozen=True)
class InversionStudyConfig:
    scenes: int = 8
    input_yaw: float = 0.0
    input_pitch: float = 0.0
    novel_yaws: tuple[float, ...] = (-30.0, 30.0)
    steps: int = 300
    space: str = "w"
    estimate_camera: bool = False  # else the input camera is given to the fit

    def __post_init__(self) -> None:
        if self.scenes < 1 or not self.novel_yaws:
            raise ValueError("the study needs at least one scene and one novel yaw")


def _truth(config: InversionStudyConfig, resolution: int, focal: float) -> dict[str, torch.Tensor]:
    """Ground-truth images [N, 3, R, R] at the input view and each novel view, framed with the
    models' focal length."""
    n = config.scenes
    scenes = build_scenes(sample_z(INVERSION_SEED, n))
    views = {"input": (config.input_yaw, config.input_pitch)}
    views |= {f"yaw {yaw:+g}": (yaw, config.input_pitch) for yaw in config.novel_yaws}
    return {
        name: render_scenes(scenes, scene_camera([yaw] * n, [pitch] * n, focal), resolution).image
        for name, (yaw, pitch) in views.items()
    }


@torch.no_grad()
def _render(model: Generator, ws: torch.Tensor, yaw: float, pitch: float) -> torch.Tensor:
    device = next(model.parameters()).device
    camera = orbit_camera(model, yaw, pitch)
    out = render_ws(model, ws[None].to(device), camera, rng=generator_for(0, device))
    return out["image"].float().cpu()


def inversion_study(
    models: dict[str, Generator],
    out_dir: str | os.PathLike[str],
    config: InversionStudyConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit each model to each held-out input view; report PSNR at the input and novel views and
    seconds per inversion. Writes report.json, report.md and grid.png to ``out_dir``."""
    from tqdm import tqdm

    config = config or InversionStudyConfig()
    resolutions = {int(m.config.img_resolution) for m in models.values()}
    focals = {float(m.config.rendering.focal_length) for m in models.values()}
    if len(resolutions) != 1 or len(focals) != 1:
        raise ValueError(
            f"the models render different sizes {sorted(resolutions)} or framings {sorted(focals)}"
        )
    truth = _truth(config, resolutions.pop(), focals.pop())
    fit_config = InversionConfig(steps=config.steps, space=config.space)  # type: ignore[arg-type]
    camera = None if config.estimate_camera else (config.input_yaw, config.input_pitch)
    results: dict[str, Any] = {}
    tiles: list[np.ndarray] = []
    for name, model in models.items():
        scores: dict[str, list[float]] = {view: [] for view in truth}
        seconds: list[float] = []
        renders: dict[str, list[torch.Tensor]] = {view: [] for view in truth}
        bar = tqdm(range(config.scenes), desc=f"invert ({name})", disable=not progress)
        for i in bar:
            fit = invert(model, truth["input"][i], fit_config, camera)
            seconds.append(fit.seconds)
            for view in truth:
                yaw = fit.yaw_deg if view == "input" else float(view.split()[1])
                image = _render(model, fit.ws, yaw, fit.pitch_deg)
                renders[view].append(image[0])
                scores[view].append(float(psnr(image, truth[view][i : i + 1])[0]))
        results[name] = {
            "psnr_db": {view: _summary(values) for view, values in scores.items()},
            "seconds_per_inversion": _summary(seconds),
        }
        row = [torch.stack(renders[view]) for view in truth]
        tiles.append(_strip(row))
    truth_strip = _strip(list(truth.values()))
    report = {
        "config": asdict(config),
        "scene_seed": INVERSION_SEED,
        "views": list(truth),
        "models": results,
        "grid_rows": ["ground truth", *models],
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    save_image(np.concatenate([truth_strip, *tiles], axis=0), out / "grid.png")
    return report


def _strip(views: list[torch.Tensor]) -> np.ndarray:
    """Up to 4 scenes, views side by side: [R, 4 x views x R, 3]."""
    images = [batch_to_uint8(v[:4]) for v in views]  # each [n, R, R, 3]
    per_scene = [np.concatenate([img[i] for img in images], axis=1) for i in range(len(images[0]))]
    return np.concatenate(per_scene, axis=1)


def _summary(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, np.float64)
    return {"mean": round(float(array.mean()), 3), "std": round(float(array.std()), 3)}


def markdown(report: dict[str, Any]) -> str:
    config = report["config"]
    views = report["views"]
    camera = "estimated" if config["estimate_camera"] else "given"
    lines = [
        "# Inversion on held-out demo scenes",
        "",
        f"{config['scenes']} scenes (seed stream {report['scene_seed']}); input view yaw "
        f"{config['input_yaw']:g}, pitch {config['input_pitch']:g} (camera {camera}); "
        f"{config['steps']} steps in {config['space']}. PSNR against the ground-truth render "
        "at each view (mean ± std over scenes).",
        "",
        "| model | " + " | ".join(f"PSNR {v} (dB)" for v in views) + " | s / inversion |",
        "|---|" + "---|" * (len(views) + 1),
    ]
    for name, result in report["models"].items():
        cells = [
            f"{result['psnr_db'][v]['mean']:.2f} ± {result['psnr_db'][v]['std']:.2f}" for v in views
        ]
        s = result["seconds_per_inversion"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['mean']:.2f} |")
    lines += [
        "",
        "![grid](grid.png)",
        "",
        "Rows: " + ", ".join(report["grid_rows"]) + "; in each, up to four scenes with their "
        "views (" + ", ".join(views) + ") side by side.",
        "",
    ]
    return "\n".join(lines)
