"""One entry point for every way of naming a model: ``default``, our checkpoint folder, or an
official EG3D ``.pkl``."""

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


def init_generator(preset_name: str, seed: int) -> TriPlaneGenerator:
    """A randomly initialised generator of a preset architecture, identical for the same seed.

    Uses a forked RNG so the caller's global torch RNG state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = TriPlaneGenerator(preset(preset_name))
    return generator.eval().requires_grad_(False)


def default_model() -> TriPlaneGenerator:
    """The embedded default: the ``tiny`` architecture with seed-0 random weights.

    It needs no file and no download, so a fresh install can render and serve at once. It draws
    abstract shapes, not objects: the trained demo models will replace it.
    """
    return init_generator("tiny", seed=0)


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
    path = Path(spec)
    if path.is_dir():
        return load_checkpoint(path, device)
    if path.is_file() and path.suffix == ".pkl":
        from .eg3d.convert import generator_from_official
        from .eg3d.official import load_official_pickle

        return generator_from_official(load_official_pickle(path), plane_order).to(device)
    if not path.exists():
        raise CheckpointError(
            f"model {str(spec)!r} not found; pass 'default', a checkpoint folder (with {CONFIG_NAME}) "
            "or an official EG3D .pkl"
        )
    raise CheckpointError(
        f"cannot tell what {path} is: expected a checkpoint folder (with {CONFIG_NAME}) or a .pkl file"
    )
