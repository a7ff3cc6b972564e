"""distill3d's checkpoint format: a folder with ``config.json`` and ``model.safetensors``.

- ``config.json``: ``format_version``, ``class`` (which model family), ``config`` (the model's
  dataclass as JSON), ``weights_sha256`` (hash of model.safetensors, checked on load) and free
  ``metadata`` (where the weights came from, e.g. the official pickle's name and hash).
- ``model.safetensors``: the state dict. Safetensors holds tensors only, so loading never runs code.

Writes are atomic: the folder is assembled under a temporary name and renamed into place, so a
crash leaves either the old checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from .eg3d.config import EG3DConfig
from .eg3d.generator import TriPlaneGenerator
from .errors import CheckpointError
from .sidecar import SidecarSpec, read_sidecar
from .student import Student, StudentConfig

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Model families by the name stored in config.json: (module class, config class).
MODEL_CLASSES: dict[str, tuple[type[nn.Module], type]] = {
    "eg3d": (TriPlaneGenerator, EG3DConfig),
    "student": (Student, StudentConfig),
}


@dataclass
class CheckpointInfo:
    """What ``config.json`` says about a checkpoint."""

    model_class: str
    config: Any
    weights_sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def model_class_name(model: nn.Module) -> str:
    for name, (cls, _) in MODEL_CLASSES.items():
        if type(model) is cls:
            return name
    raise TypeError(
        f"{type(model).__name__} has no checkpoint format; known: {sorted(MODEL_CLASSES)}"
    )


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (which must have a dataclass ``config``) to the folder ``path``, atomically.

    An existing checkpoint at ``path`` is replaced; any other existing file or non-empty folder is
    refused rather than deleted.
    """
    path = Path(path)
    name = model_class_name(model)
    if path.exists() and not _is_replaceable(path):
        raise CheckpointError(
            f"refusing to overwrite {path}: it exists and is not a distill3d checkpoint folder; "
            "choose a new path or remove it first"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        document = {
            "format_version": FORMAT_VERSION,
            "class": name,
            "config": model.config.to_dict(),  # type: ignore[operator]
            "weights_sha256": sha256_file(tmp / WEIGHTS_NAME),
            "metadata": {"distill3d_version": __version__, **(metadata or {})},
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(document, indent=2) + "\n")
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _is_replaceable(path: Path) -> bool:
    if not path.is_dir():
        return False
    return (path / CONFIG_NAME).is_file() or not any(path.iterdir())


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is moved aside first and removed after."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


CHECKPOINT_SIDECAR = SidecarSpec(
    what="checkpoint config",
    fix="upgrade distill3d or re-create the checkpoint",
    error=CheckpointError,
    versions=(FORMAT_VERSION,),
)


def read_checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Parse and validate ``config.json`` without touching the weights."""
    path = Path(path)
    config_path = path / CONFIG_NAME
    missing = (
        f"{path} is not a distill3d checkpoint (no {CONFIG_NAME}); create one with "
        "`distill3d init` or `distill3d convert`"
    )
    document = read_sidecar(config_path, CHECKPOINT_SIDECAR, missing)
    name = document.get("class")
    if name not in MODEL_CLASSES:
        raise CheckpointError(
            f"{config_path}: unknown model class {name!r}; known: {sorted(MODEL_CLASSES)}"
        )
    _, config_cls = MODEL_CLASSES[name]
    try:
        config = config_cls.from_dict(document.get("config", {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: invalid model config: {exc}") from exc
    return CheckpointInfo(
        name, config, str(document.get("weights_sha256", "")), document.get("metadata", {})
    )


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", verify_hash: bool = True
) -> nn.Module:
    """Build the model from ``config.json`` and load its weights strictly, in eval mode."""
    path = Path(path)
    info = read_checkpoint_info(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{path} has no {WEIGHTS_NAME}")
    if verify_hash and info.weights_sha256 and sha256_file(weights) != info.weights_sha256:
        raise CheckpointError(
            f"{weights} does not match the hash in {CONFIG_NAME}: the file is corrupt or was "
            "replaced. Re-create the checkpoint."
        )
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {weights}: {exc}") from exc
    model_cls, _ = MODEL_CLASSES[info.model_class]
    model = model_cls(info.config)
    load_state_dict_strict(model, state, source=str(weights))
    return model.eval().requires_grad_(False).to(device)


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what is missing, extra or misshapen."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = [
        f"{k}: file {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshapen:
        parts = []
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", misshapen),
        ):
            if items:
                shown = ", ".join(items[:8]) + (
                    f", ... ({len(items)} in all)" if len(items) > 8 else ""
                )
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"{source} does not match the architecture ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)
