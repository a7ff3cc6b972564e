"""What several subcommands share: the device flag, the one model resolver, list flags.

Every model argument of every command goes through :func:`load_any`, :func:`load_teacher`,
:func:`load_student` or :func:`checkpoint_folder`, so ``default`` / ``default-student`` (the
shipped models), a checkpoint folder and an EG3D ``.pkl`` are accepted everywhere alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..models.errors import ConfigError

SubParsers = argparse._SubParsersAction


def device(name: str) -> torch.device:
    """``--device NAME`` as a torch device, or an error when it names a GPU this machine lacks."""
    parsed = torch.device(name)
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name}: CUDA is not available on this machine; use --device cpu"
        )
    return parsed


def auto_device(name: str) -> torch.device:
    """Like :func:`device`, with ``auto`` meaning CUDA when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return device(name)


def checkpoint_folder(spec: str | Path) -> Path:
    """The folder a model argument names: a shipped model's for ``default`` /
    ``default-student``, else the path itself (for reading its metadata)."""
    from ..models.load import shipped_path

    return shipped_path(spec) or Path(spec)


def checkpoint_metadata(spec: str | Path) -> Any:
    """The :class:`CheckpointInfo` (weights hash, metadata) of a model argument."""
    from ..models.checkpoint import read_checkpoint_info

    return read_checkpoint_info(checkpoint_folder(spec))


def load_any(
    spec: str | Path, device: torch.device | str = "cpu", plane_order: str = "original"
) -> Any:
    """Any model a model argument names (teacher or student)."""
    from ..models.load import load_model

    return load_model(spec, device, plane_order)  # type: ignore[arg-type]


def load_teacher(spec: str, flag: str, device: torch.device | str = "cpu") -> Any:
    """A volumetric EG3D generator, or an error naming the flag and what was found instead."""
    from ..models.eg3d.generator import TriPlaneGenerator

    model = load_any(spec, device)
    if not isinstance(model, TriPlaneGenerator):
        raise ConfigError(
            f"{flag} {spec} is a {type(model).__name__}, not a volumetric EG3D generator; "
            "pass 'default', a teacher checkpoint folder or an EG3D .pkl"
        )
    return model


def load_student(
    spec: str, flag: str, device: torch.device | str = "cpu", command: str = "this"
) -> Any:
    """A student, or an error naming the flag and what was found instead."""
    from ..models.student import Student

    model = load_any(spec, device)
    if not isinstance(model, Student):
        raise ConfigError(
            f"{flag} {spec} is a {type(model).__name__}; {command} takes a student checkpoint "
            "(the run directory's student/ folder)"
        )
    return model


def named_specs(items: list[str], flag: str, what: str) -> dict[str, str]:
    """Repeated ``NAME=SPEC`` flags as a dict, or an error quoting the first malformed one."""
    named = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ConfigError(f"{flag} takes NAME={what}, got {item!r}")
        named[name] = spec
    return named


def float_list(text: str, flag: str) -> tuple[float, ...]:
    """Comma-separated degrees (``-30,30``) as floats."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated degrees, got {text!r}") from None


def int_list(text: str, flag: str) -> list[int]:
    """``0-7`` or ``1,5,9`` (or a mix) as integers."""
    values: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.strip().split("-", 1)
                values += list(range(int(lo), int(hi) + 1))
            elif part.strip():
                values.append(int(part))
    except ValueError:
        raise ConfigError(f"{flag} takes integers like 0-7 or 1,5,9, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} is empty")
    return values


def add_plane_order(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--plane-order`` for commands that may read an official pickle."""
    from ..models.eg3d.config import PLANE_AXES

    p.add_argument("--plane-order", choices=sorted(PLANE_AXES), default="original", help=help_text)
