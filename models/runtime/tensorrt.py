"""TensorRT plans at run time: their metadata, the checks that refuse a plan built for another
GPU, TensorRT version or graph, and a runner on torch CUDA tensors.

A plan is an executable tied to the GPU, the TensorRT version and the graph it was built from,
so ``student.plan.json`` beside it records all three and :class:`TensorRTRunner` refuses a plan
made for something else instead of failing obscurely or computing garbage. Never load plans
from sources you do not trust. Building plans is ``distill3d.export.tensorrt``'s job.

TensorRT is an optional dependency (it is not installable from PyPI alone): everything here
imports it lazily and says how to get it.
"""

from __future__ import annotations

import json
import os
import platform
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ... import __version__
from ..checkpoint import sha256_file
from ..sidecar import SidecarSpec, read_sidecar
from .errors import ExportError
from .export_files import read_export

PLAN_NAME = "student.plan"
PLAN_METADATA = "student.plan.json"
PLAN_FORMAT = "distill3d-tensorrt-plan"
GRAPHS = {"fp16": "student_fp16", "fp32": "student"}

INSTALL_HINT = (
    "install TensorRT 10.12+ or 11 from NVIDIA's index (pip install --extra-index-url "
    "https://pypi.nvidia.com tensorrt-cu13) or use the GPU image (docker/Dockerfile.gpu)"
)


class PlanMismatchError(ExportError):
    """A plan built for another GPU, TensorRT version or graph than the one at hand."""


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or an error that says how to install it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ExportError(f"TensorRT is not installed: {INSTALL_HINT}") from exc
    return tensorrt


def require_cuda(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type != "cuda":
        raise ExportError(f"TensorRT runs on CUDA devices only, not {device}")
    if not torch.cuda.is_available():
        raise ExportError(
            "TensorRT needs an NVIDIA GPU, and PyTorch sees none (torch.cuda.is_available() is "
            "False); build the plan on the GPU that will serve it, or serve the ONNX graph with "
            "ONNX Runtime instead"
        )
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ExportError(f"{device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Platform:
    """What a plan is bound to: the GPU model and architecture, TensorRT and the OS."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    os: str

    @classmethod
    def current(cls, trt: ModuleType, device: torch.device) -> Platform:
        major, minor = torch.cuda.get_device_capability(device)
        return cls(
            gpu_name=torch.cuda.get_device_name(device),
            compute_capability=f"{major}.{minor}",
            tensorrt_version=str(trt.__version__),
            os=platform.system(),
        )


@dataclass
class PlanMetadata:
    """``student.plan.json``: where a plan came from and what it is bound to."""

    plan_file: str
    plan_sha256: str
    onnx_file: str
    onnx_sha256: str
    precision: str
    platform: Platform
    profile: dict[str, list[list[int]]]  # input -> [min, opt, max] shapes
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    source: dict[str, Any]
    img_resolution: int
    camera: dict[str, Any]
    build_seconds: float = 0.0
    verification: dict[str, Any] = field(default_factory=dict)
    format: str = PLAN_FORMAT
    format_version: int = 1
    distill3d_version: str = __version__

    @property
    def max_batch(self) -> int:
        return min(shapes[2][0] for shapes in self.profile.values())

    @property
    def min_batch(self) -> int:
        return max(shapes[0][0] for shapes in self.profile.values())

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PlanMetadata:
        """Read and check ``student.plan.json``; a missing or malformed one refuses the plan."""
        path = Path(path)
        missing = (
            f"{path} is missing: a plan without its metadata cannot be checked, so it is not "
            "loaded; rebuild it with distill3d export tensorrt"
        )
        data = read_sidecar(path, PLAN_SIDECAR, missing)
        try:
            data["platform"] = Platform(**data["platform"])
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise PlanMismatchError(
                f"{path} is not valid plan metadata ({exc}); rebuild with distill3d export tensorrt"
            ) from exc


PLAN_SIDECAR = SidecarSpec(
    what="plan metadata",
    fix="rebuild with distill3d export tensorrt",
    error=PlanMismatchError,
    format=PLAN_FORMAT,
)


def check_compatible(
    metadata: PlanMetadata, here: Platform, onnx_sha256: str | None = None
) -> None:
    """Refuse a plan built elsewhere. Each mismatch is named, with the fix.

    TensorRT itself would reject some of these at deserialisation with an opaque message, and
    others (another GPU of the same architecture, a changed graph) it would not notice at all.
    """
    built = metadata.platform
    problems = []
    if built.tensorrt_version != here.tensorrt_version:
        problems.append(
            f"built with TensorRT {built.tensorrt_version}, this is {here.tensorrt_version}"
        )
    if built.compute_capability != here.compute_capability:
        problems.append(
            f"built for compute capability {built.compute_capability}, "
            f"this GPU is {here.compute_capability}"
        )
    if built.gpu_name != here.gpu_name:
        problems.append(f"built on a {built.gpu_name}, this GPU is a {here.gpu_name}")
    if built.os != here.os:
        problems.append(f"built on {built.os}, this is {here.os}")
    if onnx_sha256 is not None and onnx_sha256 != metadata.onnx_sha256:
        problems.append(
            f"built from another {metadata.onnx_file} (sha256 {metadata.onnx_sha256[:12]}..., "
            f"the export now has {onnx_sha256[:12]}...)"
        )
    if problems:
        raise PlanMismatchError(
            f"refusing TensorRT plan {metadata.plan_file}: "
            + "; ".join(problems)
            + ". Rebuild it here with distill3d export tensorrt --onnx EXPORT_DIR"
        )


class TensorRTRunner:
    """Runs a plan on torch CUDA tensors: ``runner({"w": w, "c": c}) -> {"image": ..., ...}``.

    Work goes to a dedicated CUDA stream (TensorRT adds synchronisation on the legacy default
    stream), ordered after the caller's current stream and before it again, so callers need no
    explicit synchronisation. One execution context; calls are serialised by a lock, as contexts
    are not thread-safe.
    """

    def __init__(
        self,
        plan_dir: str | os.PathLike[str],
        device: str | torch.device = "cuda",
        export_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """Load ``plan_dir/student.plan`` after checking its metadata against this machine (and
        against the export's current graph hash when ``export_dir`` is given)."""
        plan_dir = Path(plan_dir)
        metadata = PlanMetadata.load(plan_dir / PLAN_METADATA)
        trt = import_tensorrt()
        device = require_cuda(device)
        onnx_sha = None
        if export_dir is not None:
            export = read_export(export_dir)
            onnx_sha = export["graphs"][GRAPHS[metadata.precision]]["sha256"]
        check_compatible(metadata, Platform.current(trt, device), onnx_sha)
        plan_path = plan_dir / metadata.plan_file
        if not plan_path.is_file():
            raise ExportError(f"{plan_path} is missing; rebuild with distill3d export tensorrt")
        if sha256_file(plan_path) != metadata.plan_sha256:
            raise PlanMismatchError(
                f"{plan_path} does not match the hash in {PLAN_METADATA}; it was changed or "
                "replaced after the build. Rebuild it with distill3d export tensorrt"
            )
        self._setup(plan_path.read_bytes(), metadata, device, trt)

    @classmethod
    def from_plan_file(
        cls,
        plan_path: Path,
        metadata: PlanMetadata,
        device: str | torch.device,
        trt: ModuleType,
    ) -> TensorRTRunner:
        """A runner for a plan just built (the build verifies it before writing it)."""
        runner = cls.__new__(cls)
        runner._setup(plan_path.read_bytes(), metadata, require_cuda(device), trt)
        return runner

    def _setup(
        self, plan: bytes, metadata: PlanMetadata, device: torch.device, trt: ModuleType
    ) -> None:
        self.metadata = metadata
        self.device = device
        self._trt = trt
        self._lock = threading.Lock()
        with torch.cuda.device(device):
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise ExportError(
                    "TensorRT could not deserialise the plan (see the messages above); "
                    "rebuild it with distill3d export tensorrt"
                )
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(device)
        self._dtypes = _torch_dtypes(trt)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]

    @property
    def max_batch(self) -> int:
        return self.metadata.max_batch

    def _dtype(self, name: str) -> torch.dtype:
        trt_dtype = self.engine.get_tensor_dtype(name)
        if trt_dtype not in self._dtypes:
            raise ExportError(f"tensor {name} has TensorRT type {trt_dtype}, unsupported here")
        return self._dtypes[trt_dtype]

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise ValueError(f"missing inputs {sorted(missing)}; the plan takes {self.input_names}")
        batch = {int(t.shape[0]) for t in inputs.values()}
        if len(batch) != 1:
            raise ValueError(f"inputs disagree on the batch size: {sorted(batch)}")
        (b,) = batch
        if not self.metadata.min_batch <= b <= self.max_batch:
            raise ValueError(
                f"batch {b} is outside the plan's profile [{self.metadata.min_batch}, "
                f"{self.max_batch}]; split the batch or rebuild with a larger --max-batch"
            )
        with self._lock, torch.cuda.device(self.device):
            caller = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(caller)  # inputs may still be being written on the caller's
            with torch.cuda.stream(self.stream):
                staged = {}
                for name in self.input_names:
                    t = inputs[name].to(self.device, self._dtype(name)).contiguous()
                    staged[name] = t
                    self.context.set_input_shape(name, tuple(t.shape))
                    self.context.set_tensor_address(name, t.data_ptr())
                outputs = {}
                for name in self.output_names:
                    shape = tuple(self.context.get_tensor_shape(name))
                    out = torch.empty(shape, dtype=self._dtype(name), device=self.device)
                    outputs[name] = out
                    self.context.set_tensor_address(name, out.data_ptr())
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise RuntimeError("TensorRT execute_async_v3 failed (see the messages above)")
            caller.wait_stream(self.stream)
            for out in outputs.values():
                out.record_stream(caller)  # allocated on our stream, read on the caller's
        return outputs


def _torch_dtypes(trt: ModuleType) -> dict[Any, torch.dtype]:
    pairs = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "INT8": torch.int8,
        "BOOL": torch.bool,
    }
    return {getattr(trt.DataType, k): v for k, v in pairs.items() if hasattr(trt.DataType, k)}
