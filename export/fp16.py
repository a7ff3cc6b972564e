"""FP16 graphs with FP32 inputs and outputs (what TensorRT 11's strongly typed builds need).

TensorRT 11 removed the FP16 builder flag: precision comes from the graph itself (docs/serving.md
§2.1). We cast the verified FP32 graph with onnxconverter-common (``keep_io_types``, so callers
still pass and receive FP32) and check it against the FP32 graph by the PSNR of the images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..models.runtime.errors import ExportError
from ..models.runtime.export_files import graph_path, read_export
from .onnx import (
    STUDENT_FP16_GRAPH,
    VERIFY_BATCH_SIZES,
    install_student_variant,
    sample_inputs,
)


def _separate_consumed_outputs(model: Any) -> None:
    """Give every graph output that other nodes also read its own Identity node.

    The converter casts such a tensor to FP16 for its consumers and then mistypes the output
    (ORT: "Type (tensor(float16)) of output arg ... does not match"); ``image_raw`` is one.
    """
    from onnx import helper

    outputs = {o.name for o in model.graph.output}
    consumed = {name for node in model.graph.node for name in node.input}
    for name in sorted(outputs & consumed):
        inner = f"{name}__inner"
        for node in model.graph.node:
            node.input[:] = [inner if x == name else x for x in node.input]
            node.output[:] = [inner if x == name else x for x in node.output]
        model.graph.node.append(helper.make_node("Identity", [inner], [name], name=f"{name}__out"))


def convert_to_fp16(src: Path, dst: Path) -> None:
    """Write ``dst``: ``src`` with FP16 weights and arithmetic, FP32 inputs and outputs."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError as exc:
        raise ExportError(
            "FP16 export needs onnxconverter-common: pip install 'distill3d[export]'"
        ) from exc
    model = onnx.load(str(src))
    _separate_consumed_outputs(model)
    del model.graph.value_info[:]  # stale FP32 annotations confuse the converter
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(dst))


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two whole batches of images in [-1, 1] (clipped), on the [0, 1] scale."""
    import torch

    from ..models.metrics import psnr

    flat = [torch.from_numpy(np.ascontiguousarray(x, np.float32)).reshape(1, -1) for x in (a, b)]
    return float(psnr(*flat)[0])


def verify_fp16(
    fp32_path: Path,
    fp16_path: Path,
    make_inputs: Callable[[int], dict[str, np.ndarray]],
    batch_sizes: Sequence[int],
    min_psnr_db: float,
) -> dict[str, Any]:
    """Compare the FP16 graph's images with the FP32 graph's; refuse below ``min_psnr_db``."""
    import onnxruntime as ort

    s32 = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    s16 = ort.InferenceSession(str(fp16_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in s32.get_outputs()]
    report: dict[str, Any] = {
        "reference": fp32_path.name,
        "min_psnr_db": min_psnr_db,
        "psnr_db": {},
    }
    for b in batch_sizes:
        inputs = make_inputs(b)
        for name, a, h in zip(names, s32.run(None, inputs), s16.run(None, inputs), strict=True):
            if h.dtype != np.float32:
                raise ExportError(f"the FP16 graph gives {name} as {h.dtype}, expected float32")
            value = psnr_db(a, h)
            report["psnr_db"][f"{name}@{b}"] = round(value, 2) if np.isfinite(value) else "inf"
            if not value >= min_psnr_db:
                raise ExportError(
                    f"the FP16 graph's {name} at batch {b} is {value:.1f} dB from the FP32 "
                    f"graph (needs >= {min_psnr_db} dB); the FP16 graph was not written. Keep the "
                    "sensitive layers in FP32 or serve the FP32 graph"
                )
    return report


def add_fp16_graph(
    folder: str | os.PathLike[str],
    min_psnr_db: float = 40.0,
    batch_sizes: Sequence[int] = VERIFY_BATCH_SIZES,
    seed: int = 100,
) -> dict[str, Any]:
    """Cast an export folder's ``student.onnx`` to ``student_fp16.onnx`` and record it.

    The new graph is written under a temporary name and checked against the FP32 graph first;
    one below ``min_psnr_db`` is deleted and the folder is left as it was. Returns the updated
    ``export.json`` contents.
    """
    folder = Path(folder)
    metadata = read_export(folder)
    fp32 = graph_path(folder, metadata, "student")
    tmp = folder / f".{STUDENT_FP16_GRAPH}.tmp"
    try:
        convert_to_fp16(fp32, tmp)
        verification = verify_fp16(
            fp32, tmp, sample_inputs(folder, metadata, seed), batch_sizes, min_psnr_db
        )
        return install_student_variant(
            folder, metadata, "student_fp16", tmp, STUDENT_FP16_GRAPH, "fp16", verification
        )
    finally:
        tmp.unlink(missing_ok=True)
