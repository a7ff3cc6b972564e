"""What renders a batch: the student in PyTorch, ONNX Runtime or TensorRT, or the volumetric
teacher. All take w [B, w_dim] and target cameras c [B, 25] (float32 numpy) and return uint8
images [B, H, W, 3], so the engine treats them alike. The PyTorch ones (``supports_ws``) also
take per-layer latents ws [B, num_ws, w_dim] (W+ inversions, style mixing); an exported graph
has one w input.

The z -> w mapping is separate (``LatentMapper``): it is the teacher's in every case (the student
carries a frozen copy), so a seed names the same identity whichever backend renders it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from ..models.eg3d.generator import TriPlaneGenerator
from ..models.images import batch_to_uint8
from ..models.render import Generator, w_avg_of
from ..models.rng import generator_for
from ..models.student import Student

log = logging.getLogger(__name__)

Role = Literal["student", "volumetric"]


class BackendUnavailable(RuntimeError):
    """A backend that cannot load here (missing package, no GPU, no file); the message says why."""


class Backend(Protocol):
    name: str  # torch | onnxruntime | tensorrt | volumetric
    role: Role
    device: str
    precision: str
    max_batch: int
    supports_ws: bool

    def render(self, w: np.ndarray, c: np.ndarray) -> np.ndarray: ...


class Mapper(Protocol):
    """z (+ conditioning camera) -> w, and truncation towards the average w."""

    z_dim: int
    w_dim: int
    supports_conditioning: bool

    def map(self, z: np.ndarray, c_cond: np.ndarray) -> np.ndarray: ...

    def truncate(self, w: np.ndarray, psi: np.ndarray) -> np.ndarray: ...


class LatentMapper:
    """z (+ conditioning camera) -> w with per-item truncation, on a torch generator's mapping."""

    supports_conditioning = True

    def __init__(self, generator: Generator, device: str) -> None:
        self.generator = generator
        self.device = torch.device(device)
        self.z_dim = generator.z_dim
        self.w_dim = generator.w_dim
        self.w_avg = w_avg_of(generator).detach().float().cpu().numpy()

    @torch.no_grad()
    def map(self, z: np.ndarray, c_cond: np.ndarray) -> np.ndarray:
        zt = torch.from_numpy(z).to(self.device)
        ct = torch.from_numpy(c_cond).to(self.device)
        return self.generator.mapping(zt, ct)[:, 0].float().cpu().numpy()

    def truncate(self, w: np.ndarray, psi: np.ndarray) -> np.ndarray:
        """Truncation towards the average w: ``w_avg + psi (w - w_avg)`` per row."""
        return (self.w_avg + psi[:, None] * (w - self.w_avg)).astype(np.float32)


class OnnxMapper:
    """z -> w from an export's mapping.onnx, for services without PyTorch checkpoints. The graph
    bakes in the frontal conditioning camera, so other conditioning cameras are refused."""

    supports_conditioning = False

    def __init__(self, export_dir: Path) -> None:
        import onnxruntime as ort

        from ..export.onnx import graph_path, read_export

        metadata = read_export(export_dir)
        self.session = ort.InferenceSession(
            str(graph_path(export_dir, metadata, "mapping")), providers=["CPUExecutionProvider"]
        )
        self.z_dim = int(metadata["graphs"]["mapping"]["inputs"]["z"][1])
        self.w_dim = int(metadata["graphs"]["mapping"]["outputs"]["w"][1])
        ones = np.ones((1, 1), np.float32)
        z = np.ones((1, self.z_dim), np.float32)  # any finite w will do; z = 0 maps to NaN
        # psi = 0 gives w_avg exactly: w_avg + 0 (w - w_avg).
        self.w_avg = self.session.run(None, {"z": z, "truncation_psi": 0 * ones})[0][0]

    def map(self, z: np.ndarray, c_cond: np.ndarray) -> np.ndarray:
        psi = np.ones((len(z), 1), np.float32)
        return self.session.run(None, {"z": z.astype(np.float32), "truncation_psi": psi})[0]

    def truncate(self, w: np.ndarray, psi: np.ndarray) -> np.ndarray:
        return (self.w_avg + psi[:, None] * (w - self.w_avg)).astype(np.float32)


LatentMapper.supports_conditioning = True  # type: ignore[attr-defined]


@dataclass
class TorchStudent:
    student: Student
    device: str
    name: str = "torch"
    role: Role = "student"
    max_batch: int = 64
    supports_ws = True

    def __post_init__(self) -> None:
        self.student = self.student.to(self.device).eval()
        self.precision = "fp32"

    @torch.no_grad()
    def render(self, w: np.ndarray, c: np.ndarray) -> np.ndarray:
        wt = torch.from_numpy(w).to(self.device)
        ct = torch.from_numpy(c).to(self.device)
        out = self.student.synthesis(wt, ct, noise_mode="const")
        return batch_to_uint8(out["image"])


class OnnxStudent:
    """The exported graph in ONNX Runtime: CPU, CUDA or the TensorRT execution provider."""

    name = "onnxruntime"
    role: Role = "student"
    supports_ws = False

    def __init__(self, export_dir: Path, device: str, max_batch: int = 64) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(
                "onnxruntime is not installed: pip install 'distill3d[export]' (CPU) or "
                "'distill3d[gpu]' (CUDA)"
            ) from exc
        from ..export.onnx import graph_path, read_export

        metadata = read_export(export_dir)
        available = ort.get_available_providers()
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise BackendUnavailable(
                    f"onnxruntime here has no CUDA provider (it has {available}); "
                    "install onnxruntime-gpu"
                )
            key, providers = "student_fp16", ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if "student_fp16" not in metadata["graphs"]:
                key = "student"
        else:
            key, providers = "student", ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(graph_path(export_dir, metadata, key)), options, providers=providers
        )
        self.device = device
        self.precision = "fp16" if key == "student_fp16" else "fp32"
        self.max_batch = min(max_batch, int(metadata.get("max_batch", 1024)))
        self.metadata = metadata

    def render(self, w: np.ndarray, c: np.ndarray) -> np.ndarray:
        (image, *_) = self.session.run(None, {"w": w, "c": c})
        return batch_to_uint8(image)


class TensorRTStudent:
    name = "tensorrt"
    role: Role = "student"
    supports_ws = False

    def __init__(self, plan_dir: Path, export_dir: Path, device: str) -> None:
        from ..export.onnx import ExportError
        from ..export.tensorrt import TensorRTRunner

        if not device.startswith("cuda"):
            raise BackendUnavailable("TensorRT needs a CUDA device")
        try:
            self.runner = TensorRTRunner(plan_dir, device, export_dir=export_dir)
        except ExportError as exc:
            raise BackendUnavailable(str(exc)) from exc
        self.device = device
        self.precision = self.runner.metadata.precision
        self.max_batch = self.runner.max_batch

    def render(self, w: np.ndarray, c: np.ndarray) -> np.ndarray:
        out = self.runner({"w": torch.from_numpy(w), "c": torch.from_numpy(c)})
        return batch_to_uint8(out["image"])


@dataclass
class Volumetric:
    """The teacher, rendering tri-planes by ray marching: slow, the reference, the fallback.

    Stochastic parts (ray jitter, importance samples) use one generator per image seeded with
    ``render_seed``, so a render does not depend on the batch it was served in.
    """

    teacher: TriPlaneGenerator
    device: str
    max_batch: int = 2
    render_seed: int = 0
    name: str = "volumetric"
    role: Role = "volumetric"
    supports_ws = True

    def __post_init__(self) -> None:
        self.teacher = self.teacher.to(self.device).eval()
        self.precision = "fp32"

    @torch.no_grad()
    def render(self, w: np.ndarray, c: np.ndarray) -> np.ndarray:
        wt = torch.from_numpy(w).to(self.device)
        ws = wt if wt.ndim == 3 else wt[:, None].expand(-1, self.teacher.num_ws, -1)
        ct = torch.from_numpy(c).to(self.device)
        rng = [generator_for(self.render_seed, self.device) for _ in range(len(w))]
        out = self.teacher.synthesis(ws, ct, noise_mode="const", rng=rng)
        return batch_to_uint8(out["image"])


def time_backend(backend: Backend, w: np.ndarray, c: np.ndarray, repeats: int = 3) -> float:
    """Median seconds of a batch-1 render (after one untimed call): how ``auto`` compares."""
    backend.render(w[:1], c[:1])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend.render(w[:1], c[:1])
        if backend.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
