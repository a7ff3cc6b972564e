"""A training run's directory on disk: its config, its resumable state and its checkpoint.

- ``config.json``: the resolved ``TrainConfig`` (``--resume`` reads it back);
- ``train_state/``: one ``NAME.safetensors`` per module (student, EMA, discriminator; the demo
  teacher's teacher and EMA), ``optimizers.pt`` and ``progress.json`` (the step), which is written
  last and so marks the folder complete;
- ``student/``: the EMA student in distill3d's checkpoint format (what render/export/serve take).

Both folders are replaced crash-safely (``training/durable.py``): a kill at any instant leaves
the previous or the new version findable, and :func:`recover_run_dir` puts it back in place
before a run resumes. The layout is the one earlier versions wrote, so their runs resume too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..models.checkpoint import WEIGHTS_NAME, read_checkpoint_info, save_checkpoint, sha256_file
from ..models.errors import CheckpointError, ConfigError
from ..models.student import Student
from .config import TrainConfig
from .durable import fsync_path, fsync_tree, recover_folder, staging_path, swap_in

RUN_CONFIG = "config.json"
STATE_DIR = "train_state"
STUDENT_DIR = "student"
OPTIM_NAME = "optimizers.pt"
PROGRESS_NAME = "progress.json"


# ---------------------------------------------------------------------------------------------
# train_state/


def save_state_folder(
    run_dir: Path,
    modules: dict[str, nn.Module | None],
    optimizers: dict[str, Any],
    step: int,
) -> None:
    """Write ``train_state/`` crash-safely: one safetensors file per module, the optimizers'
    states, then the step (the completeness marker), all fsynced before the swap."""
    staged = staging_path(run_dir / STATE_DIR)
    staged.mkdir()
    try:
        for name, module in modules.items():
            if module is not None:
                tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
                save_file(tensors, str(staged / f"{name}.safetensors"))
        torch.save(optimizers, staged / OPTIM_NAME)
        fsync_tree(staged)  # everything else is on disk before the marker says it is complete
        _write_progress(staged / PROGRESS_NAME, step)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # incomplete: never a recovery candidate
        raise
    swap_in(staged, run_dir / STATE_DIR)


def _write_progress(path: Path, step: int) -> None:
    with open(path, "w") as f:
        f.write(json.dumps({"step": step}) + "\n")
        f.flush()
        fsync_path(path)


def state_step(folder: Path) -> int | None:
    """The step a ``train_state/`` folder holds, or None when it is incomplete (no readable
    ``progress.json``: the write was interrupted before its last file)."""
    try:
        step = json.loads((folder / PROGRESS_NAME).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


def load_state_folder(
    run_dir: Path,
    modules: dict[str, nn.Module | None],
    optimizers: dict[str, torch.optim.Optimizer],
) -> int:
    """Restore what ``save_state_folder`` wrote into ``modules`` and ``optimizers`` (strictly);
    returns the step to continue from."""
    folder = run_dir / STATE_DIR
    step = state_step(folder)
    if step is None:
        raise CheckpointError(
            f"{run_dir} has no complete {STATE_DIR}/ to resume from; start a new run instead"
        )
    for name, module in modules.items():
        if module is not None:
            module.load_state_dict(load_file(str(folder / f"{name}.safetensors")), strict=True)
    saved = torch.load(folder / OPTIM_NAME, map_location="cpu", weights_only=True)
    for name, opt in optimizers.items():
        opt.load_state_dict(saved[name])
    return step


# ---------------------------------------------------------------------------------------------
# Checkpoint folders (student/, the demo's teacher/)


def save_checkpoint_folder(
    model: nn.Module, path: Path, metadata: dict[str, Any] | None = None
) -> None:
    """``models.checkpoint.save_checkpoint`` into a staging folder, then the crash-safe swap (a
    checkpoint's ``config.json`` is written after its weights, so it marks completeness)."""
    staged = staging_path(path)
    try:
        save_checkpoint(model, staged, metadata=metadata)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    swap_in(staged, path)


def checkpoint_complete(folder: Path) -> bool:
    """Whether ``folder`` is a whole checkpoint: readable config and weights matching its hash."""
    try:
        info = read_checkpoint_info(folder)
    except (CheckpointError, OSError):
        return False
    weights = folder / WEIGHTS_NAME
    return weights.is_file() and sha256_file(weights) == info.weights_sha256


def recover_run_dir(run_dir: Path, checkpoints: Iterable[str] = (STUDENT_DIR,)) -> bool:
    """Undo what a kill during a save left: ``train_state/`` and each checkpoint folder named in
    ``checkpoints`` is put back from a complete leftover if it is missing, and leftovers are
    removed. Returns whether a complete ``train_state/`` is there to resume from."""
    for name in checkpoints:
        recover_folder(run_dir / name, checkpoint_complete)
    recover_folder(run_dir / STATE_DIR, lambda folder: state_step(folder) is not None)
    return state_step(run_dir / STATE_DIR) is not None


# ---------------------------------------------------------------------------------------------
# The distillation run's directory


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


def write_run_config(run_dir: Path, config: TrainConfig) -> None:
    """``config.json``: the resolved config a ``--resume`` reads back."""
    (run_dir / RUN_CONFIG).write_text(json.dumps(config.to_dict(), indent=2) + "\n")


def save_run(
    run_dir: Path,
    step: int,
    config: TrainConfig,
    modules: dict[str, nn.Module | None],
    optimizers: dict[str, torch.optim.Optimizer],
    teacher_sha256: str,
) -> None:
    """The resumable state, then the EMA student as a ready-to-use checkpoint."""
    optimizer_states = {k: v.state_dict() for k, v in optimizers.items()}
    save_state_folder(run_dir, modules, optimizer_states, step)
    ema = modules["ema"]
    assert isinstance(ema, Student)
    save_checkpoint_folder(
        ema, run_dir / STUDENT_DIR, metadata=student_metadata(config, step, teacher_sha256)
    )


def sync_student_checkpoint(
    run_dir: Path, step: int, config: TrainConfig, ema: Student, teacher_sha256: str
) -> None:
    """Rewrite ``student/`` from the resumed EMA when it is not the checkpoint of ``step`` (a kill
    between writing ``train_state/`` and ``student/`` leaves the previous one, or none)."""
    folder = run_dir / STUDENT_DIR
    try:
        saved_step = read_checkpoint_info(folder).metadata.get("step")
    except CheckpointError:
        saved_step = None
    if saved_step != step:
        metadata = student_metadata(config, step, teacher_sha256)
        save_checkpoint_folder(ema, folder, metadata=metadata)


def student_metadata(config: TrainConfig, step: int, teacher_sha256: str) -> dict[str, Any]:
    """What ``student/config.json`` records about where the student came from."""
    return {
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
    }
