"""What a training run logs: ``metrics.jsonl``, TensorBoard scalars and teacher-vs-student grids.

``metrics.jsonl`` holds one JSON object per line with the ``step`` it describes (the demo
teacher's evaluation records nest it: ``{"eval": {"step": ...}}``). A resumed run repeats the
steps after its last checkpoint exactly, so :func:`rewind_metrics` first drops what the
interrupted run logged past that checkpoint: every step is logged once however often a run is
interrupted.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from ..models.eg3d.generator import TriPlaneGenerator
from ..models.images import save_image, to_uint8
from ..models.student import Student
from .data import TeacherSampler
from .durable import remove_file_leftovers, write_text_atomically

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"

# Fixed preview: these seeds and yaws, teacher row above student row.
PREVIEW_SEEDS = (0, 1, 2, 3)
PREVIEW_YAWS_DEG = (-35.0, 0.0, 35.0)


def record_step(record: dict[str, Any]) -> int:
    """The step a metrics record describes (``step``, or ``eval.step`` for evaluations)."""
    return int(record.get("eval", record).get("step", 0))


def rewind_metrics(path: Path, step: int) -> list[dict[str, Any]]:
    """Drop the records of ``path`` past ``step`` (logged after the last checkpoint of an
    interrupted run) and a torn last line (the process was killed mid-write); returns the
    records kept. The file is replaced atomically, so a kill here loses nothing."""
    remove_file_leftovers(path)
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    kept_lines, kept = [], []
    for line in lines:
        record = _parse_record(line)
        if record is not None and record_step(record) <= step:
            kept_lines.append(line)
            kept.append(record)
    if len(kept_lines) != len(lines):
        write_text_atomically(path, "".join(f"{line}\n" for line in kept_lines))
    return kept


def _parse_record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class RunLogger:
    """Scalars to metrics.jsonl and TensorBoard; teacher-vs-student grids to PNG and TensorBoard.

    ``first_step`` is where a resumed run continues: TensorBoard hides the events an earlier,
    interrupted run wrote from there on, as :func:`rewind_metrics` does for metrics.jsonl.
    """

    def __init__(self, run_dir: Path, enabled: bool, first_step: int | None = None) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.writer = None
        self._teacher_grid: torch.Tensor | None = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=first_step)
            except ImportError:  # tensorboard is a dependency; tolerate a trimmed install
                log.warning("tensorboard is not installed; scalars go to %s only", METRICS_NAME)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One metrics.jsonl row for ``step`` (and its TensorBoard scalars)."""
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
