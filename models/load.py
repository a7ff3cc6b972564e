"""One entry point for every way of naming a model: ``default`` / ``default-student`` (the demo
world's models shipped inside the package), our checkpoint folder, or an official EG3D ``.pkl``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CONFIG_NAME, load_checkpoint
from .eg3d.config import PlaneOrder
from .eg3d.generator import TriPlaneGenerator
from .eg3d.presets import preset
from .errors import CheckpointError

DEFAULT_MODEL = "default"
DEFAULT_STUDENT = "default-student"
# The demo world's models (training/demo/teacher.py, docs/MODEL_CARD.md), installed with the package.
SHIPPED_WEIGHTS = Path(__file__).parent / "weights"
DEMO_TEACHER = SHIPPED_WEIGHTS / "demo-teacher"
DEMO_STUDENT = SHIPPED_WEIGHTS / "demo-student"


def init_generator(preset_name: str, seed: int) -> TriPlaneGenerator:
    """A randomly initialised generator of a preset architecture, identical for the same seed.

    Uses a forked RNG so the caller's global torch RNG state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = TriPlaneGenerator(preset(preset_name))
    return generator.eval().requires_grad_(False)


def default_model() -> TriPlaneGenerator:
    """The embedded default teacher: the demo world's EG3D teacher shipped with the package.

    It needs no file and no download, so a fresh install renders recognisable 3D figures at once.
    """
    return _shipped(DEMO_TEACHER, DEFAULT_MODEL)  # type: ignore[return-value]


def default_student() -> nn.Module:
    """The embedded default student, distilled from :func:`default_model`."""
    return _shipped(DEMO_STUDENT, DEFAULT_STUDENT)


def shipped_path(spec: str | os.PathLike[str]) -> Path | None:
    """The folder of a shipped model's name (``default``, ``default-student``), else None."""
    return {DEFAULT_MODEL: DEMO_TEACHER, DEFAULT_STUDENT: DEMO_STUDENT}.get(str(spec))


def _shipped(folder: Path, name: str) -> nn.Module:
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(
            f"the shipped model {name!r} is missing from this installation ({folder}); "
            "reinstall distill3d, or pass a checkpoint folder instead"
        )
    return load_checkpoint(folder)


def load_model(
    spec: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    plane_order: PlaneOrder = "original",
) -> nn.Module:
    """Load ``default``, a distill3d checkpoint folder, or an official EG3D pickle (safely).

    ``plane_order`` only applies to official pickles (our checkpoints record it).
    """
    if str(spec) == DEFAULT_MODEL:
        return default_model().to(device)
    if str(spec) == DEFAULT_STUDENT:
        return default_student().to(device)
    path = Path(spec)
    if path.is_dir():
        return load_checkpoint(path, device)
    if path.is_file() and path.suffix == ".pkl":
        from .eg3d.convert import generator_from_official
        from .eg3d.official import load_official_pickle

        return generator_from_official(load_official_pickle(path), plane_order).to(device)
    if not path.exists():
        raise CheckpointError(
            f"model {str(spec)!r} not found; pass 'default', 'default-student', a checkpoint "
            f"folder (with {CONFIG_NAME}) "
            "or an official EG3D .pkl"
        )
    raise CheckpointError(
        f"cannot tell what {path} is: expected a checkpoint folder (with {CONFIG_NAME}) or a .pkl file"
    )
