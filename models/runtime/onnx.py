"""Exported graphs in ONNX Runtime: the student (w, c) -> image and the z -> w mapping.

Both take and return float32 numpy arrays, so a caller (the service's batcher, the benchmarks)
feeds them the same inputs as the PyTorch models. onnxruntime is optional: it is imported when a
runner is built, and its absence is a :class:`BackendUnavailable` saying what to install.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..images import batch_to_uint8
from ..mapping import truncate_rows
from .errors import BackendUnavailable
from .export_files import graph_path, read_export

INSTALL_HINT = (
    "onnxruntime is not installed: pip install 'distill3d[export]' (CPU) or 'distill3d[gpu]' (CUDA)"
)


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(INSTALL_HINT) from exc
    return onnxruntime


def _student_graph(
    metadata: dict[str, Any], device: str, available: list[str]
) -> tuple[str, list[str]]:
    """(graph key, execution providers): the FP16 graph on CUDA when exported, else FP32."""
    if not device.startswith("cuda"):
        return "student", ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailable(
            f"onnxruntime here has no CUDA provider (it has {available}); install onnxruntime-gpu"
        )
    key = "student_fp16" if "student_fp16" in metadata["graphs"] else "student"
    return key, ["CUDAExecutionProvider", "CPUExecutionProvider"]


@dataclass(frozen=True)
class SessionSettings:
    """How an ONNX Runtime session uses the CPU.

    ``intra_op_threads`` parallelise one operator (0: ONNX Runtime's default, one per physical
    core); ``inter_op_threads`` run independent operators at once, which a chain of convolutions
    has none of, so one thread and sequential execution (the default) waste nothing. The CPU
    memory arena keeps freed buffers for the next run instead of returning them to the system:
    faster for repeated batches of one size, at the cost of holding the peak.
    """

    intra_op_threads: int = 0
    inter_op_threads: int = 1
    cpu_arena: bool = True

    def options(self, ort: Any) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.execution_mode = (
            ort.ExecutionMode.ORT_SEQUENTIAL
            if self.inter_op_threads <= 1
            else ort.ExecutionMode.ORT_PARALLEL
        )
        options.enable_cpu_mem_arena = self.cpu_arena
        return options


INT8_KEY = "student_int8"


class OnnxStudent:
    """The exported student graph in ONNX Runtime: CPU, or CUDA with onnxruntime-gpu.

    ``int8`` runs the export's INT8 graph instead (``distill3d export int8``: static QDQ
    quantization, verified against FP32), on the CPU only, as backend ``onnxruntime-int8``.
    """

    role = "student"
    supports_ws = False

    def __init__(
        self,
        export_dir: Path,
        device: str,
        max_batch: int = 64,
        session: SessionSettings | None = None,
        int8: bool = False,
    ) -> None:
        ort = _onnxruntime()
        metadata = read_export(export_dir)
        if int8:
            if device.startswith("cuda"):
                raise BackendUnavailable("the INT8 graph is for ONNX Runtime's CPU provider")
            if INT8_KEY not in metadata["graphs"]:
                raise BackendUnavailable(
                    f"{export_dir} has no INT8 graph: add one with distill3d export int8 --onnx DIR"
                )
            key, providers = INT8_KEY, ["CPUExecutionProvider"]
        else:
            key, providers = _student_graph(metadata, device, ort.get_available_providers())
        options = (session or SessionSettings()).options(ort)
        self.session = ort.InferenceSession(
            str(graph_path(export_dir, metadata, key)), options, providers=providers
        )
        self.name = "onnxruntime-int8" if int8 else "onnxruntime"
        self.device = device
        self.precision = {"student_fp16": "fp16", INT8_KEY: "int8"}.get(key, "fp32")
        self.max_batch = min(max_batch, int(metadata.get("max_batch", 1024)))
        self.w_dim = int(metadata["graphs"]["student"]["inputs"]["w"][1])
        self.img_resolution = int(metadata["img_resolution"])
        self.metadata = metadata

    def render(self, w: np.ndarray, c: np.ndarray) -> np.ndarray:
        """w [B, w_dim], c [B, 25] -> uint8 images [B, H, W, 3]."""
        (image, *_) = self.session.run(None, {"w": w, "c": c})
        return batch_to_uint8(image)


class OnnxMapper:
    """z -> w from an export's mapping.onnx, for services without PyTorch checkpoints. The graph
    bakes in the frontal conditioning camera, so other conditioning cameras are refused."""

    supports_conditioning = False

    def __init__(self, export_dir: Path) -> None:
        ort = _onnxruntime()
        metadata = read_export(export_dir)
        self.session = ort.InferenceSession(
            str(graph_path(export_dir, metadata, "mapping")), providers=["CPUExecutionProvider"]
        )
        self.z_dim = int(metadata["graphs"]["mapping"]["inputs"]["z"][1])
        self.w_dim = int(metadata["graphs"]["mapping"]["outputs"]["w"][1])
        z = np.ones((1, self.z_dim), np.float32)  # any finite w will do; z = 0 maps to NaN
        # psi = 0 gives w_avg exactly: the graph's truncation lerps from w_avg by psi.
        zero = np.zeros((1, 1), np.float32)
        self.w_avg = self.session.run(None, {"z": z, "truncation_psi": zero})[0][0]

    def map(self, z: np.ndarray, c_cond: np.ndarray) -> np.ndarray:
        """Untruncated w [B, w_dim] of z [B, z_dim] (``c_cond`` is the graph's frontal camera)."""
        psi = np.ones((len(z), 1), np.float32)
        return self.session.run(None, {"z": z.astype(np.float32), "truncation_psi": psi})[0]

    def truncate(self, w: np.ndarray, psi: np.ndarray) -> np.ndarray:
        """Per-row truncation towards the graph's average w."""
        return truncate_rows(w, self.w_avg, psi)
