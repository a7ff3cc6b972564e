"""What renders a batch: the student in PyTorch, ONNX Runtime or TensorRT, or the volumetric
teacher. All take w [B, w_dim] and target cameras c [B, 25] (float32 numpy) and return uint8
images [B, H, W, 3], so the engine treats them alike. The PyTorch ones (``supports_ws``) also
take per-layer latents ws [B, num_ws, w_dim] (W+ inversions, style mixing); an exported graph
has one w input.

The z -> w mapping is separate (``LatentMapper``): it is the teacher's in every case (the student
carries a frozen copy), so a seed names the same identity whichever backend renders it.

The ONNX Runtime student and mapping (``OnnxStudent``, ``OnnxMapper``) and the TensorRT runner
live in ``models.runtime``, shared with the benchmarks; this module adapts the rest.
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
from ..models.mapping import LatentModel, map_to_w, truncate_rows
from ..models.rng import generator_for
from ..models.runtime.errors import BackendUnavailable, ExportError
from ..models.runtime.tensorrt import TensorRTRunner
from ..models.student import Student

log = logging.getLogger(__name__)

Role = Literal["student", "volumetric"]


class Backend(Protocol):
    name: str  # torch | onnxruntime | tensorrt | volumetric
    role: Role
    device: str
    precision: str
    max_batch: int
    supports_ws: bool
    w_dim: int
    img_resolution: int

    def render(self, w: np.ndarray, c: np.ndarray) -> np.ndarray: ...


class Mapper(Protocol):
    """z (+ conditioning camera) -> w, and truncation towards the average w."""

    z_dim: int
    w_dim: int
    supports_conditioning: bool

    def map(self, z: np.ndarray, c_cond: np.ndarray) -> np.ndarray: ...

    def truncate(self, w: np.ndarray, psi: np.ndarray) -> np.ndarray: ...


class LatentMapper:
    """z (+ conditioning camera) -> w with per-item truncation, on a torch model's mapping
    (the teacher's, or the frozen copy inside a student)."""

    supports_conditioning = True

    def __init__(self, model: LatentModel, device: str) -> None:
        self.model = model
        self.device = torch.device(device)
        self.z_dim = model.z_dim
        self.w_dim = model.w_dim
        self.w_avg = model.w_avg.detach().float().cpu().numpy()

    def map(self, z: np.ndarray, c_cond: np.ndarray) -> np.ndarray:
        w = map_to_w(self.model, torch.from_numpy(z), torch.from_numpy(c_cond))
        return w.float().cpu().numpy()

    def truncate(self, w: np.ndarray, psi: np.ndarray) -> np.ndarray:
        """Truncation towards the average w, one psi per row."""
        return truncate_rows(w, self.w_avg, psi)


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
        self.w_dim = self.student.w_dim
        self.img_resolution = self.student.config.img_resolution

    @torch.no_grad()
    def render(self, w: np.ndarray, c: np.ndarray) -> np.ndarray:
        wt = torch.from_numpy(w).to(self.device)
        ct = torch.from_numpy(c).to(self.device)
        out = self.student.synthesis(wt, ct, noise_mode="const")
        return batch_to_uint8(out["image"])


class TensorRTStudent:
    name = "tensorrt"
    role: Role = "student"
    supports_ws = False

    def __init__(self, plan_dir: Path, export_dir: Path, device: str) -> None:
        if not device.startswith("cuda"):
            raise BackendUnavailable("TensorRT needs a CUDA device")
        try:
            self.runner = TensorRTRunner(plan_dir, device, export_dir=export_dir)
        except ExportError as exc:
            raise BackendUnavailable(str(exc)) from exc
        self.device = device
        self.precision = self.runner.metadata.precision
        self.max_batch = self.runner.max_batch
        self.w_dim = int(self.runner.metadata.inputs["w"][1])
        self.img_resolution = self.runner.metadata.img_resolution

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
        self.w_dim = self.teacher.w_dim
        self.img_resolution = self.teacher.config.img_resolution

    @torch.no_grad()
    def render(self, w: np.ndarray, c: np.ndarray) -> np.ndarray:
        wt = torch.from_numpy(w).to(self.device)
        ws = wt if wt.ndim == 3 else wt[:, None].expand(-1, self.teacher.num_ws, -1)
        ct = torch.from_numpy(c).to(self.device)
        rng = [generator_for(self.render_seed, self.device) for _ in range(len(w))]
        out = self.teacher.synthesis(ws, ct, noise_mode="const", rng=rng)
        return batch_to_uint8(out["image"])


def time_backend(
    backend: Backend, w: np.ndarray, c: np.ndarray, repeats: int = 3, warm: bool = True
) -> float:
    """Median seconds of one render of the batch ``w``, ``c`` (after one untimed call, which
    allocates and picks kernels, unless ``warm`` is False): how ``auto`` compares backends and
    sizes batches."""
    if warm:
        backend.render(w, c)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend.render(w, c)
        if backend.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def batch_sizes_to_try(cap: int) -> list[int]:
    """1, 2, 4, ... below ``cap``, then ``cap``."""
    sizes = [1]
    while sizes[-1] * 2 < cap:
        sizes.append(sizes[-1] * 2)
    return [*sizes, cap] if cap > 1 else sizes


def tune_max_batch(
    backend: Backend, c: np.ndarray, cap: int, budget_s: float = 60.0
) -> tuple[int, dict[int, float]]:
    """(batch limit, images/s by batch size): the size with the most images/s among 1, 2, 4,
    ... up to ``cap``, so that batching never serves slower than batch 1 (on a CPU a batch can
    cost more per image than one image does).

    Stops at the first size below 90 % of the best rate so far (past the peak) or once the
    timings have taken ``budget_s``; ``c`` is one camera label [1, 25].
    """
    rates: dict[int, float] = {}
    start = time.perf_counter()
    for size in batch_sizes_to_try(cap):
        w = np.zeros((size, backend.w_dim), np.float32)
        seconds = time_backend(backend, w, np.repeat(c[:1], size, axis=0), repeats=2)
        rates[size] = size / seconds
        if rates[size] < 0.9 * max(rates.values()) or time.perf_counter() - start > budget_s:
            break
    best = max(rates, key=rates.__getitem__)  # the first (smallest) of equal rates
    return best, rates
