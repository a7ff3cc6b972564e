"""Reading an export folder back: ``export.json`` and the graphs it lists, hash-checked.

The folder is written by ``distill3d export onnx``; everything that runs its graphs (the
service, the benchmarks, the TensorRT build) opens it through these two functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..checkpoint import sha256_file
from ..sidecar import SidecarSpec, read_sidecar
from .errors import ExportError

METADATA_NAME = "export.json"
EXPORT_FORMAT = "distill3d-export"
EXPORT_SIDECAR = SidecarSpec(
    what="export metadata",
    fix="re-run distill3d export onnx",
    error=ExportError,
    format=EXPORT_FORMAT,
)


def read_export(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``export.json`` of an export folder, with a clear error for anything else."""
    missing = (
        f"{folder} is not an export folder (no {METADATA_NAME}); create one with "
        "distill3d export onnx --model STUDENT --out DIR"
    )
    return read_sidecar(Path(folder) / METADATA_NAME, EXPORT_SIDECAR, missing)


def graph_path(folder: str | os.PathLike[str], metadata: dict[str, Any], key: str) -> Path:
    """The file of graph ``key``, checked against the hash recorded when it was exported."""
    graphs = metadata.get("graphs", {})
    if key not in graphs:
        hint = (
            "run distill3d export fp16 --onnx DIR"
            if key == "student_fp16"
            else "re-run distill3d export onnx"
        )
        raise ExportError(f"{folder} has no {key} graph (it has {sorted(graphs)}); {hint}")
    path = Path(folder) / graphs[key]["file"]
    if not path.is_file():
        raise ExportError(f"{path} is missing; re-run distill3d export onnx")
    if sha256_file(path) != graphs[key]["sha256"]:
        raise ExportError(
            f"{path} does not match the hash in {METADATA_NAME} (changed after export); "
            "re-run distill3d export onnx"
        )
    return path
