"""Compiling a student for serving: ``export onnx`` / ``fp16`` / ``tensorrt`` / ``triton``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import SubParsers, checkpoint_metadata, load_student


def add_export(sub: SubParsers) -> None:
    p = sub.add_parser(
        "export",
        help="export a student to ONNX (FP32, FP16), TensorRT plans and a Triton repository",
        description="Compile a student for serving. Every graph is checked in ONNX Runtime "
        "against PyTorch at several batch sizes and refused when it disagrees.",
    )
    targets = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    onnx_p = targets.add_parser(
        "onnx",
        help="student.onnx (w, c -> image, image_raw), mapping.onnx (z, psi -> w), student_fp16.onnx",
    )
    onnx_p.add_argument(
        "--model", required=True, help="'default-student' or a student checkpoint folder"
    )
    onnx_p.add_argument("--out", required=True, type=Path, help="folder to write")
    onnx_p.add_argument("--no-fp16", action="store_true", help="skip the FP16 graph")
    onnx_p.add_argument("--no-raw", action="store_true", help="image output only")
    onnx_p.add_argument("--atol", type=float, default=1e-3, help="FP32 tolerance vs PyTorch")
    onnx_p.add_argument(
        "--min-fp16-psnr", type=float, default=40.0, help="FP16 vs FP32 image PSNR floor, dB"
    )
    onnx_p.set_defaults(func=cmd_export_onnx)

    fp16_p = targets.add_parser(
        "fp16",
        help="add student_fp16.onnx (FP16 arithmetic, FP32 I/O) to an export folder, verified",
    )
    fp16_p.add_argument("--onnx", required=True, type=Path, help="an export folder")
    fp16_p.add_argument(
        "--min-psnr", type=float, default=40.0, help="FP16 vs FP32 image PSNR floor, dB"
    )
    fp16_p.set_defaults(func=cmd_export_fp16)

    int8_p = targets.add_parser(
        "int8",
        help="add student_int8.onnx (static QDQ INT8 convolutions, ONNX Runtime CPU), verified",
        description="Quantize an export folder's student.onnx with ONNX Runtime, calibrated on "
        "w from mapping.onnx and cameras in the student's pose range, and keep it only when its "
        "images reach --min-psnr against the FP32 graph's on held-out samples.",
    )
    int8_p.add_argument("--onnx", required=True, type=Path, help="an export folder")
    int8_p.add_argument(
        "--min-psnr", type=float, default=30.0, help="INT8 vs FP32 image PSNR floor, dB"
    )
    int8_p.add_argument("--samples", type=int, default=64, help="calibration samples")
    int8_p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    int8_p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor")
    int8_p.set_defaults(func=cmd_export_int8)

    trt_p = targets.add_parser(
        "tensorrt",
        help="build a TensorRT plan (strongly typed, TensorRT 10.12+/11) on this GPU",
        description="Build student.plan from an export folder on the GPU that will run it. "
        "Needs TensorRT and an NVIDIA GPU. The plan is checked against the FP32 ONNX graph and "
        "written with student.plan.json (GPU, TensorRT version, graph hash); runtimes refuse "
        "plans built for another GPU or version.",
    )
    trt_p.add_argument("--onnx", required=True, type=Path, help="an export folder")
    trt_p.add_argument("--out", type=Path, help="plan folder (default: ONNX_DIR/tensorrt)")
    trt_p.add_argument(
        "--precision",
        choices=["fp16", "fp32"],
        default="fp16",
        help="build from student_fp16.onnx (default) or student.onnx",
    )
    trt_p.add_argument("--min-batch", type=int, default=1)
    trt_p.add_argument("--opt-batch", type=int, default=8, help="batch the kernels are tuned for")
    trt_p.add_argument("--max-batch", type=int, default=32)
    trt_p.add_argument("--workspace-gib", type=float, default=4.0)
    trt_p.add_argument("--optimization-level", type=int, default=3, help="0..5 (TensorRT's)")
    trt_p.add_argument(
        "--timing-cache", type=Path, help="timing cache to reuse (default: OUT/timing.cache)"
    )
    trt_p.add_argument(
        "--min-psnr", type=float, default=35.0, help="engine vs FP32 graph PSNR floor, dB"
    )
    trt_p.add_argument("--device", default="cuda", help="CUDA device to build on")
    trt_p.set_defaults(func=cmd_export_tensorrt)

    triton_p = targets.add_parser(
        "triton",
        help="write a Triton Inference Server model repository (student, mapping, ensemble)",
    )
    triton_p.add_argument("--onnx", required=True, type=Path, help="an export folder")
    triton_p.add_argument("--out", required=True, type=Path, help="model repository folder")
    triton_p.add_argument("--plan", type=Path, help="serve this TensorRT plan folder instead")
    triton_p.add_argument("--name", default="distill3d", help="model name (default: distill3d)")
    triton_p.add_argument(
        "--precision",
        choices=["fp16", "fp32"],
        default="fp16",
        help="which ONNX graph when no plan is given",
    )
    triton_p.add_argument("--max-batch-size", type=int, default=32)
    triton_p.add_argument(
        "--max-queue-delay-us", type=int, default=2000, help="dynamic batcher wait, microseconds"
    )
    triton_p.add_argument("--kind", choices=["gpu", "cpu", "auto"], default="gpu")
    triton_p.add_argument("--instances", type=int, default=1, help="instances per device")
    triton_p.add_argument("--no-ensemble", action="store_true", help="skip the z -> image model")
    triton_p.set_defaults(func=cmd_export_triton)


def export_source(spec: str) -> dict[str, object]:
    """Where the exported weights came from, recorded in export.json: the model argument, its
    weights' and teacher's hashes and, when recorded, the poses the student is valid for."""
    info = checkpoint_metadata(spec)
    source: dict[str, object] = {
        "checkpoint": str(spec),
        "weights_sha256": info.weights_sha256,
        "teacher_sha256": info.metadata.get("teacher_sha256", ""),
    }
    if "pose_range" in info.metadata:  # served with the graphs as the student's valid poses
        source["pose_range"] = info.metadata["pose_range"]
    return source


def _worst(check: dict) -> str:
    """The worst disagreement a graph's verification found, in words."""
    if "max_abs_error" in check:
        return f"max |error| {max(check['max_abs_error'].values()):.2g}"
    finite = [v for v in check["psnr_db"].values() if v != "inf"]
    return f"min PSNR {min(finite):.1f} dB" if finite else "identical"


def cmd_export_onnx(args: argparse.Namespace) -> None:
    from ..export.onnx import export_onnx

    model = load_student(args.model, "--model", command="export")
    source = export_source(args.model)
    start = time.perf_counter()
    metadata = export_onnx(
        model,
        args.out,
        source,
        with_raw=not args.no_raw,
        fp16=not args.no_fp16,
        atol=args.atol,
        min_fp16_psnr_db=args.min_fp16_psnr,
    )
    elapsed = time.perf_counter() - start
    for key, graph in metadata["graphs"].items():
        check = graph["verification"]
        batches = check.get("batch_sizes", [1, 2, 5])
        print(f"{args.out / graph['file']}: {key}, verified at batch {batches}, {_worst(check)}")
    print(f"exported in {elapsed:.1f} s; metadata in {args.out / 'export.json'}")


def cmd_export_fp16(args: argparse.Namespace) -> None:
    from ..export.fp16 import add_fp16_graph

    metadata = add_fp16_graph(args.onnx, min_psnr_db=args.min_psnr)
    graph = metadata["graphs"]["student_fp16"]
    values = [v for v in graph["verification"]["psnr_db"].values() if v != "inf"]
    worst = f"min PSNR {min(values):.1f} dB" if values else "identical"
    print(f"{args.onnx / graph['file']}: verified against student.onnx at batch 1, 2, 5, {worst}")


def cmd_export_int8(args: argparse.Namespace) -> None:
    from ..export.int8 import INT8_KEY, Int8Settings, add_int8_graph

    settings = Int8Settings(
        calibration_samples=args.samples, method=args.method, per_channel=not args.per_tensor
    )
    metadata = add_int8_graph(args.onnx, min_psnr_db=args.min_psnr, settings=settings)
    graph = metadata["graphs"][INT8_KEY]
    values = [v for v in graph["verification"]["psnr_db"].values() if v != "inf"]
    worst = f"min PSNR {min(values):.1f} dB" if values else "identical"
    print(f"{args.onnx / graph['file']}: verified against student.onnx at batch 1, 2, 5, {worst}")


def cmd_export_tensorrt(args: argparse.Namespace) -> None:
    from ..export.tensorrt import BuildSettings, build_plan, describe

    settings = BuildSettings(
        precision=args.precision,
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        workspace_gib=args.workspace_gib,
        builder_optimization_level=args.optimization_level,
        min_psnr_db=args.min_psnr,
    )
    out = args.out or args.onnx / "tensorrt"
    print(f"building a TensorRT plan from {args.onnx} (this takes minutes on first build)")
    metadata = build_plan(args.onnx, out, settings, args.device, args.timing_cache)
    for line in describe(metadata):
        print(line)
    print(f"wrote {out / metadata.plan_file} and {out / 'student.plan.json'}")


def cmd_export_triton(args: argparse.Namespace) -> None:
    from ..export.triton import TritonSettings, write_repository

    settings = TritonSettings(
        name=args.name,
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        instance_kind=args.kind,
        instance_count=args.instances,
        precision=args.precision,
        ensemble=not args.no_ensemble,
    )
    names = write_repository(args.onnx, args.out, settings, args.plan)
    print(f"wrote models {', '.join(names)} to {args.out}")
    print(f"serve with: tritonserver --model-repository={args.out.resolve()}")
