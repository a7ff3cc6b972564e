"""``bench``: the teacher and the student in every backend, timed on this machine in one run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..models.errors import ConfigError
from .common import SubParsers, auto_device, checkpoint_metadata, load_student, load_teacher


def add_bench(sub: SubParsers) -> None:
    p = sub.add_parser(
        "bench",
        help="time and measure teacher vs student in each backend across batch sizes",
        description="Same machine, same run: the volumetric teacher and the student in PyTorch "
        "(and autocast on CUDA), ONNX Runtime and TensorRT; per-image latency (median, p95), "
        "images/s, peak memory, FLOPs per image and the fraction of the measured matmul peak. "
        "--preset measures the official architectures with random weights.",
    )
    p.add_argument("--teacher", help="teacher: 'default', a checkpoint folder or an EG3D .pkl")
    p.add_argument("--student", help="'default-student' or a student checkpoint folder")
    p.add_argument(
        "--preset",
        choices=["ffhq512", "ffhq512-light", "ffhq512-lighter", "afhq512", "shapenet128", "tiny"],
        help="random-weight teacher and student of this architecture (instead of checkpoints); "
        "the light ones are a light student with the full teacher",
    )
    p.add_argument("--onnx-dir", type=Path, help="an export folder: add ONNX Runtime")
    p.add_argument(
        "--export-onnx",
        action="store_true",
        help="export the student first (to a temporary folder) and add ONNX Runtime",
    )
    p.add_argument("--plan-dir", type=Path, help="a TensorRT plan folder (needs --onnx-dir)")
    p.add_argument("--batch-sizes", default="1,2,4,8", help="comma-separated")
    p.add_argument(
        "--compile",
        action="store_true",
        help="add a torch.compile row (compiles once per batch size; minutes on CPU)",
    )
    p.add_argument(
        "--no-cuda-graphs", action="store_true", help="leave out the CUDA-graph row on CUDA"
    )
    p.add_argument("--teacher-max-batch", type=int, default=4, help="cap for the slow teacher")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", type=Path, help="write the measurements as JSON")
    p.add_argument("--plot", type=Path, help="write throughput and memory vs batch as a PNG")
    p.add_argument("--seed", type=int, default=0, help="weights seed for --preset")
    p.set_defaults(func=cmd_bench)


def _batch_sizes(text: str) -> list[int]:
    """``--batch-sizes 1,2,4`` as sorted distinct positive integers."""
    try:
        sizes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ConfigError(f"--batch-sizes takes comma-separated integers, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise ConfigError("--batch-sizes needs positive integers")
    return sizes


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse contradictory flags before any model is loaded."""
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError("--repeats must be at least 1 and --warmup at least 0")
    if args.plan_dir and not args.onnx_dir:
        raise ConfigError("--plan-dir needs --onnx-dir (the export the plan was built from)")
    if args.preset and (args.teacher or args.student):
        raise ConfigError("give --preset or --teacher/--student, not both")
    if not (args.preset or args.teacher or args.student or args.onnx_dir):
        raise ConfigError("nothing to measure: give --preset, --teacher, --student or --onnx-dir")
    if args.export_onnx and not (args.preset or args.student):
        raise ConfigError("--export-onnx needs a student (--student or --preset)")


def _models(args: argparse.Namespace) -> tuple[Any, Any]:
    """(teacher, student), either of them None: a preset's random pair or the named models."""
    from ..export.bench import preset_models

    if args.preset:
        return preset_models(args.preset, args.seed)
    teacher = load_teacher(args.teacher, "--teacher") if args.teacher else None
    student = load_student(args.student, "--student", command="bench") if args.student else None
    return teacher, student


def _runner_choice(args: argparse.Namespace) -> Any:
    """Which runners to add, and the provenance of an ONNX export made for the run."""
    from ..export.bench import RunnerChoice

    source = None
    if args.export_onnx:
        source = {"checkpoint": str(args.student or f"preset {args.preset}")}
        if args.student:
            source["weights_sha256"] = checkpoint_metadata(args.student).weights_sha256
    return RunnerChoice(
        cuda_graphs=not args.no_cuda_graphs,
        compiled=args.compile,
        onnx_dir=args.onnx_dir,
        plan_dir=args.plan_dir,
        export_source=source,
    )


def _print_row(row: Any) -> None:
    print(
        f"  {row.runner} batch {row.batch}: "
        + (row.error or f"{row.ms_per_image_median:.1f} ms/image"),
        flush=True,
    )


def cmd_bench(args: argparse.Namespace) -> None:
    import torch

    from ..export import bench

    sizes = _batch_sizes(args.batch_sizes)
    _check_flags(args)
    device = str(auto_device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, student = _models(args)
    choice = _runner_choice(args)
    if choice.export_source is not None:
        print("exporting the student to ONNX for the ONNX Runtime rows ...")
    with bench.bench_runners(teacher, student, device, choice) as runners:
        report = bench.run_bench(
            runners, sizes, device, args.warmup, args.repeats, args.teacher_max_batch, _print_row
        )
    print(bench.format_table(report))
    if args.json:
        bench.save_json(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        bench.plot_report(report, args.plot)
        print(f"wrote {args.plot}")


def add_gpu_check(sub: SubParsers) -> None:
    from .. import gpu_check

    p = sub.add_parser(
        "gpu-check",
        help="run every GPU path (or, with --cpu-only, what runs without CUDA) into one report",
        description="Student eager fp32/fp16/bf16, CUDA graphs, torch.compile, ONNX Runtime CUDA, "
        "the teacher, the FFHQ-512 bench at batch 1/8/32 with memory, the service on CUDA under "
        "a one-minute load, and each path's parity with the CPU; writes gpu-check.json and .md.",
    )
    gpu_check.add_arguments(p)
    p.set_defaults(func=cmd_gpu_check)


def cmd_gpu_check(args: argparse.Namespace) -> None:
    from .. import gpu_check

    code = gpu_check.run(args.out, args.device, args.cpu_only)
    if code:
        raise SystemExit(code)
