"""distill3d's checkpoint format: a folder with ``config.json`` and ``model.safetensors``.

- ``config.json``: ``format_version``, ``class`` (which model family), ``config`` (the model's
  dataclass as JSON), ``weights_sha256`` (hash of model.safetensors, checked on load),
  ``config_sha256`` (hash of the class, config and weights hash, checked on load; absent in
  checkpoints written before it, which load on their weights hash alone) and free ``metadata``
  (where the weights came from, e.g. the official pickle's name and hash).
- ``model.safetensors``: the state dict. Safetensors holds tensors only, so loading never runs code.

Writes are atomic: the folder is assembled under a temporary name and renamed into place, so a
crash leaves either the old checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import math
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
from .sidecar import SidecarSpec, loads_bounded, read_sidecar
from .student import Student, StudentConfig

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Model families by the name stored in config.json: (module class, config class).
MODEL_CLASSES: dict[str, tuple[type[nn.Module], type]] = {
    "eg3d": (TriPlaneGenerator, EG3DConfig),
    "student": (Student, StudentConfig),
}


# Bounds on what a checkpoint folder may make the loader do before it is trusted.
MAX_HEADER_BYTES = 16 << 20  # a safetensors header is ~100 bytes per tensor
MAX_TENSORS = 100_000
# Bytes per element of the safetensors dtypes a checkpoint may hold.
SAFETENSORS_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1,
}  # fmt: skip


@dataclass
class CheckpointInfo:
    """What ``config.json`` says about a checkpoint.

    ``config_sha256`` is the hash config.json records over its class, config and weights hash
    (empty in checkpoints written before it existed); ``computed_config_sha256`` is that hash of
    what the file holds now. They differ when config.json was edited after it was written.
    """

    model_class: str
    config: Any
    weights_sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)
    config_sha256: str = ""
    computed_config_sha256: str = ""


def config_sha256(document: dict[str, Any]) -> str:
    """The hash that binds a config.json's model description to its weights.

    Canonical JSON (sorted keys, no spaces) of ``format_version``, ``class``, ``config`` and
    ``weights_sha256``, so a config edited after saving, or paired with other weights, is caught;
    ``metadata`` stays free to annotate.
    """
    bound = {key: document.get(key) for key in ("format_version", "class", "config")}
    bound["weights_sha256"] = document.get("weights_sha256")
    text = json.dumps(bound, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


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
        document["config_sha256"] = config_sha256(document)
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
        name,
        config,
        str(document.get("weights_sha256", "")),
        document.get("metadata", {}),
        config_sha256=str(document.get("config_sha256", "")),
        computed_config_sha256=config_sha256(document),
    )


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", verify_hash: bool = True
) -> nn.Module:
    """Build the model from ``config.json`` and load its weights strictly, in eval mode.

    Nothing is allocated before the folder is checked: the config is validated field by field,
    the safetensors header (only) is compared with the shapes the config implies (from a model
    built on the "meta" device), then the config and weights hashes are verified. Checkpoints
    written before ``config_sha256`` existed are read with their weights hash alone.
    """
    path = Path(path)
    info = read_checkpoint_info(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{path} has no {WEIGHTS_NAME}")
    model_cls, _ = MODEL_CLASSES[info.model_class]
    file_shapes = read_safetensors_shapes(weights)
    check_architecture(file_shapes, expected_shapes(model_cls, info.config), str(weights))
    if verify_hash:
        _verify_hashes(path, info)
    try:
        state = load_file(str(weights), device="cpu")
        model = model_cls(info.config)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {weights}: {exc}") from exc
    except (MemoryError, RuntimeError) as exc:  # allocation failures
        raise CheckpointError(f"cannot allocate the model of {path}: {_first_line(exc)}") from exc
    load_state_dict_strict(model, state, source=str(weights))
    return model.eval().requires_grad_(False).to(device)


def _verify_hashes(path: Path, info: CheckpointInfo) -> None:
    """config.json's config against its ``config_sha256`` (when recorded), then the weights."""
    if info.config_sha256 and info.config_sha256 != info.computed_config_sha256:
        raise CheckpointError(
            f"{path / CONFIG_NAME} does not match its config_sha256: the config was edited or "
            "damaged after it was written. Re-create the checkpoint."
        )
    weights = path / WEIGHTS_NAME
    if info.weights_sha256 and sha256_file(weights) != info.weights_sha256:
        raise CheckpointError(
            f"{weights} does not match the hash in {CONFIG_NAME}: the file is corrupt or was "
            "replaced. Re-create the checkpoint."
        )


def expected_shapes(model_cls: type[nn.Module], config: Any) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes ``model_cls(config)`` has, from a model built on the meta device.

    Meta tensors have shapes but no storage, so a config that asks for a huge model costs nothing
    here and is refused by the shape comparison before anything is allocated.
    """
    try:
        with torch.device("meta"):
            model = model_cls(config)
    except (ArithmeticError, MemoryError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"cannot build a {model_cls.__name__} from this config: {_first_line(exc)}"
        ) from exc
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def read_safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors file's header alone, every field checked.

    The format is an 8-byte little-endian header length, a JSON header ``{name: {dtype, shape,
    data_offsets}}`` and the data; the header's size is capped and each tensor's byte range must
    match its shape and lie inside the file, so the shapes can be trusted before reading data.
    """
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{path}: the safetensors header is truncated or oversized (length field "
                f"{length}, file of {size} bytes, at most {MAX_HEADER_BYTES} allowed). "
                "Re-create the checkpoint."
            )
        text = file.read(length)
    header = loads_bounded(text, f"{path}: the safetensors header", 3, CheckpointError)
    if not isinstance(header, dict) or len(header) > MAX_TENSORS + 1:
        raise CheckpointError(f"{path}: the safetensors header is not an object of tensors")
    data_bytes = size - 8 - length
    return {
        name: _header_entry(path, name, entry, data_bytes)
        for name, entry in header.items()
        if name != "__metadata__"
    }


def _header_entry(path: Path, name: str, entry: Any, data_bytes: int) -> tuple[int, ...]:
    """One tensor's shape, after checking its dtype and that its byte range fits its shape."""
    where = f"{path}: the safetensors header entry {name[:100]!r}"
    if not isinstance(entry, dict) or entry.get("dtype") not in SAFETENSORS_ITEMSIZE:
        raise CheckpointError(f"{where} has no supported dtype ({sorted(SAFETENSORS_ITEMSIZE)})")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise CheckpointError(f"{where} has a shape that is not a list of sizes")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
    ):
        raise CheckpointError(f"{where} has malformed data_offsets")
    begin, end = offsets
    nbytes = math.prod(shape) * SAFETENSORS_ITEMSIZE[entry["dtype"]]
    if not 0 <= begin <= end <= data_bytes or end - begin != nbytes:
        raise CheckpointError(
            f"{where} declares shape {shape[:8]} ({nbytes} bytes) at bytes {begin}..{end} of "
            f"{data_bytes}: the header and the data disagree"
        )
    return tuple(shape)


def check_architecture(
    file_shapes: dict[str, tuple[int, ...]], model_shapes: dict[str, tuple[int, ...]], source: str
) -> None:
    """Refuse, naming the tensors, when the file's names or shapes are not the model's."""
    missing = sorted(set(model_shapes) - set(file_shapes))
    unexpected = sorted(set(file_shapes) - set(model_shapes))
    misshapen = [
        f"{k}: file {list(file_shapes[k])} vs model {list(model_shapes[k])}"
        for k in sorted(set(model_shapes) & set(file_shapes))
        if tuple(file_shapes[k]) != tuple(model_shapes[k])
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


def _first_line(exc: BaseException) -> str:
    """An exception's message cut to one line (torch's allocation errors span several)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what is missing, extra or misshapen."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    check_architecture({k: tuple(v.shape) for k, v in state.items()}, expected, source)
    model.load_state_dict(state, strict=True)
