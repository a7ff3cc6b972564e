"""TensorRT plans of the exported student, their metadata, and a runtime on torch CUDA tensors.

One build path for TensorRT 10.12+ and 11.x (SERVING.md §1.1-1.3): the network is created
strongly typed (opt-in on 10.x, implied on 11, where the FP16 builder flag no longer exists), so
precision comes from the graph itself: build from ``student_fp16.onnx`` for an FP16 engine.
A plan is an executable tied to the GPU, the TensorRT version and the graph it was built from,
so ``student.plan.json`` beside it records all three and the runtime refuses a plan made for
something else instead of failing obscurely or computing garbage. Never load plans from sources
you do not trust.

TensorRT is an optional dependency (it is not installable from PyPI alone): everything here
imports it lazily and says how to get it.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..models.checkpoint import sha256_file
from .onnx import ExportError, graph_path, read_export, sample_inputs

PLAN_NAME = "student.plan"
PLAN_METADATA = "student.plan.json"
TIMING_CACHE = "timing.cache"
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


@dataclass(frozen=True)
class BuildSettings:
    """Knobs of one engine build. The profile's batch range is what the engine accepts."""

    precision: str = "fp16"  # which exported graph: "fp16" (student_fp16.onnx) or "fp32"
    min_batch: int = 1
    opt_batch: int = 8  # kernels are tuned for this batch size
    max_batch: int = 32
    workspace_gib: float = 4.0
    builder_optimization_level: int = 3  # TensorRT's default; 5 searches longest
    min_psnr_db: float = 35.0  # engine vs FP32 ONNX graph, checked after the build
    verify_batch_sizes: tuple[int, ...] = (1, 2, 5)

    def __post_init__(self) -> None:
        if self.precision not in GRAPHS:
            raise ValueError(f"precision must be one of {sorted(GRAPHS)}, got {self.precision!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                "batch sizes must satisfy 1 <= min_batch <= opt_batch <= max_batch, got "
                f"{self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )
        if self.workspace_gib <= 0:
            raise ValueError(f"workspace_gib must be positive, got {self.workspace_gib}")
        if not 0 <= self.builder_optimization_level <= 5:
            raise ValueError("builder_optimization_level must be within 0..5")

    def batch_sizes_to_verify(self) -> list[int]:
        inside = [b for b in self.verify_batch_sizes if self.min_batch <= b <= self.max_batch]
        return sorted(set(inside) | {self.min_batch, self.max_batch})


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
    format: str = "distill3d-tensorrt-plan"
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
        path = Path(path)
        if not path.is_file():
            raise PlanMismatchError(
                f"{path} is missing: a plan without its metadata cannot be checked, so it is not "
                "loaded; rebuild it with distill3d export tensorrt"
            )
        try:
            data = json.loads(path.read_text())
            if data.get("format") != "distill3d-tensorrt-plan":
                raise ValueError("not a distill3d plan description")
            data["platform"] = Platform(**data["platform"])
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise PlanMismatchError(
                f"{path} is not valid plan metadata ({exc}); rebuild with distill3d export tensorrt"
            ) from exc


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


def _parse_errors(parser: Any) -> str:
    return "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"


def _read_timing_cache(path: Path | None) -> bytes:
    if path is None or not path.is_file():
        return b""
    return path.read_bytes()


def build_plan(
    export_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    settings: BuildSettings | None = None,
    device: str | torch.device = "cuda",
    timing_cache: str | os.PathLike[str] | None = None,
    trt: ModuleType | None = None,
    here: Platform | None = None,
    verify: bool = True,
) -> PlanMetadata:
    """Build ``student.plan`` from an export folder's graph and write it with its metadata.

    The timing cache (default ``OUT/timing.cache``) is read if present and written back, so a
    rebuild on the same GPU skips most kernel timing. With ``verify``, the engine is run at
    several batch sizes against the FP32 ONNX graph in ONNX Runtime and refused below
    ``settings.min_psnr_db``. ``trt`` and ``here`` let tests drive the build without a GPU.
    """
    settings = settings or BuildSettings()
    export_dir = Path(export_dir)
    out = Path(out_dir) if out_dir is not None else export_dir / "tensorrt"
    cache_path = Path(timing_cache) if timing_cache is not None else out / TIMING_CACHE
    metadata = read_export(export_dir)
    onnx_path = graph_path(export_dir, metadata, GRAPHS[settings.precision])
    graph = metadata["graphs"][GRAPHS[settings.precision]]
    if trt is None:
        problems = []
        try:
            trt = import_tensorrt()
        except ExportError as exc:
            problems.append(str(exc))
        try:
            device = require_cuda(device)
        except ExportError as exc:
            problems.append(str(exc))
        if problems:
            raise ExportError("cannot build a TensorRT plan here. " + " ".join(problems))
    if here is None:
        here = Platform.current(trt, torch.device(device))

    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: precision is the graph's. On 11.x the flag is implied (and ignored).
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise ExportError(f"TensorRT could not parse {onnx_path}: {_parse_errors(parser)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_gib * 2**30))
    config.builder_optimization_level = settings.builder_optimization_level
    if settings.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # an "fp32" engine should match the FP32 graph

    profile = builder.create_optimization_profile()
    shapes: dict[str, list[list[int]]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        features = [int(d) for d in list(tensor.shape)[1:]]
        if any(d < 0 for d in features):
            raise ExportError(f"{onnx_path}: input {tensor.name} has a dynamic non-batch axis")
        triple = [
            [b, *features] for b in (settings.min_batch, settings.opt_batch, settings.max_batch)
        ]
        profile.set_shape(tensor.name, *triple)
        shapes[tensor.name] = triple
    config.add_optimization_profile(profile)

    cache = config.create_timing_cache(_read_timing_cache(cache_path))
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"TensorRT failed to build an engine from {onnx_path} (see the messages above); "
            "try a larger --workspace-gib or a smaller --max-batch"
        )
    build_seconds = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    tmp_plan = out / f".{PLAN_NAME}.tmp"
    tmp_plan.write_bytes(bytes(serialized))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_cache = cache_path.with_name(f".{cache_path.name}.tmp")
    tmp_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    os.replace(tmp_cache, cache_path)

    plan_meta = PlanMetadata(
        plan_file=PLAN_NAME,
        plan_sha256=sha256_file(tmp_plan),
        onnx_file=onnx_path.name,
        onnx_sha256=graph["sha256"],
        precision=settings.precision,
        platform=here,
        profile=shapes,
        inputs=graph["inputs"],
        outputs=graph["outputs"],
        source=metadata["source"],
        img_resolution=int(metadata["img_resolution"]),
        camera=metadata["camera"],
        build_seconds=round(build_seconds, 2),
    )
    try:
        if verify:
            runner = TensorRTRunner.from_plan_file(tmp_plan, plan_meta, device, trt=trt)
            plan_meta.verification = verify_plan(runner, export_dir, metadata, settings)
        os.replace(tmp_plan, out / PLAN_NAME)
    finally:
        tmp_plan.unlink(missing_ok=True)
    plan_meta.save(out / PLAN_METADATA)
    return plan_meta


def verify_plan(
    runner: TensorRTRunner,
    export_dir: Path,
    metadata: dict[str, Any],
    settings: BuildSettings,
) -> dict[str, Any]:
    """Engine output vs the FP32 ONNX graph in ONNX Runtime, by image PSNR.

    TensorRT has shipped silent miscompilations (SERVING.md §1.1), so no plan is kept unchecked.
    """
    import onnxruntime as ort

    from .fp16 import psnr_db

    reference = ort.InferenceSession(
        str(graph_path(export_dir, metadata, "student")), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in reference.get_outputs()]
    make = sample_inputs(export_dir, metadata, seed=200)
    report: dict[str, Any] = {"reference": "student.onnx", "min_psnr_db": settings.min_psnr_db}
    report["psnr_db"] = {}
    for b in settings.batch_sizes_to_verify():
        inputs = make(b)
        want = dict(zip(names, reference.run(None, inputs), strict=True))
        got = runner({k: torch.from_numpy(v) for k, v in inputs.items()})
        for name, ref in want.items():
            value = psnr_db(ref, got[name].float().cpu().numpy())
            report["psnr_db"][f"{name}@{b}"] = round(value, 2) if np.isfinite(value) else "inf"
            if not value >= settings.min_psnr_db:
                raise ExportError(
                    f"the TensorRT engine's {name} at batch {b} is {value:.1f} dB from the FP32 "
                    f"ONNX graph (needs >= {settings.min_psnr_db} dB); the plan was not written. "
                    "Try --precision fp32, or another TensorRT version"
                )
    return report


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


def describe(metadata: PlanMetadata) -> Sequence[str]:
    """Lines for the CLI."""
    p = metadata.platform
    return [
        f"TensorRT {p.tensorrt_version} on {p.gpu_name} (sm {p.compute_capability}), "
        f"{metadata.precision} from {metadata.onnx_file}",
        f"batch {metadata.min_batch}..{metadata.max_batch}, built in {metadata.build_seconds} s",
    ]
