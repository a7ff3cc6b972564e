"""Building TensorRT plans of the exported student, verified against the ONNX graph.

One build path for TensorRT 10.12+ and 11.x (docs/serving.md §2.1-2.2): the network is created
strongly typed (opt-in on 10.x, implied on 11, where the FP16 builder flag no longer exists), so
precision comes from the graph itself: build from ``student_fp16.onnx`` for an FP16 engine.
The plan's metadata, the checks that refuse a plan made for another machine and the runner live
in ``distill3d.models.runtime.tensorrt``, shared with the service and the benchmarks.

TensorRT is an optional dependency (it is not installable from PyPI alone): everything here
imports it lazily and says how to get it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..models.checkpoint import sha256_file
from ..models.runtime.errors import ExportError
from ..models.runtime.export_files import graph_path, read_export
from ..models.runtime.tensorrt import (
    GRAPHS,
    PLAN_METADATA,
    PLAN_NAME,
    PlanMetadata,
    Platform,
    TensorRTRunner,
    import_tensorrt,
    require_cuda,
)
from .onnx import sample_inputs

TIMING_CACHE = "timing.cache"


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

    TensorRT has shipped silent miscompilations (docs/serving.md §2.1), so no plan is kept unchecked.
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


def describe(metadata: PlanMetadata) -> Sequence[str]:
    """Lines for the CLI."""
    p = metadata.platform
    return [
        f"TensorRT {p.tensorrt_version} on {p.gpu_name} (sm {p.compute_capability}), "
        f"{metadata.precision} from {metadata.onnx_file}",
        f"batch {metadata.min_batch}..{metadata.max_batch}, built in {metadata.build_seconds} s",
    ]
