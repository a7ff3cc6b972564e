"""The served PyTorch student as an ONNX export, written by the service itself when it is given
none (``--onnx-dir``), so that ONNX Runtime can serve it and the browser can run it.

The service never imports ``distill3d.export`` (the layers point the other way): whoever builds
the app hands it an exporter (``distill3d serve`` passes ``export.onnx.export_browser_graphs``).
Exports are kept in ``$DISTILL3D_GRAPH_CACHE_DIR`` (default ``<tmp>/distill3d-graphs``), one
folder per student weights hash and package version, so only the first start pays for one.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from .. import __version__
from ..models.runtime.export_files import graph_path, read_export

log = logging.getLogger(__name__)

CACHE_ENV = "DISTILL3D_GRAPH_CACHE_DIR"
# The exporter's own chatter (each optimisation pass at INFO, torchvision's absence): in the
# service's log it would bury the one line that says an export is happening.
EXPORTER_LOGGERS = {
    "onnxscript": logging.WARNING,
    "onnx_ir": logging.WARNING,
    "torch.onnx": logging.ERROR,
}
GRAPH_FILES = {"student.onnx": "student", "mapping.onnx": "mapping"}  # file name -> graph key


class GraphExporter(Protocol):
    """Writes a student's graphs (student.onnx, mapping.onnx, export.json) to a folder, verified
    against the PyTorch model, or raises."""

    def __call__(self, student: nn.Module, folder: Path, source: dict[str, Any]) -> None: ...


def cache_root() -> Path:
    """Where exports of the served student are kept between starts."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "distill3d-graphs")


def valid_export(folder: Path) -> bool:
    """Whether ``folder`` holds a complete export (metadata and both graphs)."""
    try:
        metadata = read_export(folder)
        for key in GRAPH_FILES.values():
            graph_path(folder, metadata, key)
    except Exception:
        return False
    return True


def export_folder(weights_sha256: str) -> Path:
    """The cache folder of the student with these weights."""
    return cache_root() / f"{(weights_sha256 or 'unhashed')[:16]}-{__version__}"


def cached_export(
    student: nn.Module,
    exporter: GraphExporter,
    source_path: str,
    weights_sha256: str,
    pose_range: dict[str, float],
) -> Path:
    """The student's export folder: found in the cache, or exported into it now (raises what
    the exporter raises: onnx missing, a graph that fails its verification)."""
    folder = export_folder(weights_sha256)
    if valid_export(folder):
        return folder
    log.info("exporting the student to ONNX into %s", folder)
    source = {"path": source_path, "weights_sha256": weights_sha256, "pose_range": pose_range}
    with _quiet(EXPORTER_LOGGERS):
        exporter(copy.deepcopy(student), folder, source)  # export moves its copy to CPU float32
    log.info("exported the student to ONNX into %s", folder)
    return folder


@contextlib.contextmanager
def _quiet(levels: dict[str, int]) -> Iterator[None]:
    """Raise these loggers' levels for the duration, then restore them."""
    loggers = {name: logging.getLogger(name) for name in levels}
    saved = {name: logger.level for name, logger in loggers.items()}
    try:
        for name, logger in loggers.items():
            logger.setLevel(max(levels[name], logger.getEffectiveLevel()))
        yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(saved[name])
