"""``demo``: the demo world (procedural scenes, the teacher trained on them, its student) and
the studies run on it (pose bias, the report, inversion)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..models.errors import ConfigError
from .common import (
    SubParsers,
    device,
    float_list,
    int_list,
    load_any,
    load_student,
    load_teacher,
    named_specs,
)


def add_demo(sub: SubParsers) -> None:
    p = sub.add_parser(
        "demo",
        help="the demo world: procedural scenes, a teacher trained on them, its student",
        description="Reproduce the shipped demo models from scratch with fixed seeds.",
    )
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    _add_scenes(what)
    _add_teacher(what)
    _add_dataset(what)
    _add_bias(what)
    _add_report(what)
    _add_inversion(what)


def _add_scenes(what: SubParsers) -> None:
    """``demo scenes``: ground truth of the demo world as a grid of seeds x yaws."""
    scenes_p = what.add_parser("scenes", help="render ground-truth scenes of seeds as a grid")
    scenes_p.add_argument("--seeds", default="0-7", help="e.g. 0-7 or 1,5,9")
    scenes_p.add_argument(
        "--yaws", default="-60,-30,0,30,60", help="degrees, comma-separated (--yaws=-30,30)"
    )
    scenes_p.add_argument("--pitch", type=float, default=10.0)
    scenes_p.add_argument("--resolution", type=int, default=128)
    scenes_p.add_argument(
        "--focal",
        type=float,
        default=None,
        help="normalised focal length: a teacher's framing (demo 2.4, the default; demo-face 3.2)",
    )
    scenes_p.add_argument("--out", required=True, type=Path, help="PNG to write")
    scenes_p.set_defaults(func=cmd_demo_scenes)


def _add_teacher(what: SubParsers) -> None:
    """``demo teacher``: train the demo teacher on the scenes (resumable)."""
    teacher_p = what.add_parser(
        "teacher",
        help="train the demo teacher (EG3D architecture) on the scenes; resumes in --out",
        description="Multi-view reconstruction of ray-traced scenes (image, raw image, opacity "
        "and depth L1). Deterministic for --seed; run the same command again to resume.",
    )
    teacher_p.add_argument("--out", required=True, type=Path, help="run folder")
    teacher_p.add_argument("--steps", type=int, default=15000)
    teacher_p.add_argument("--batch-size", type=int, default=8)
    teacher_p.add_argument("--lr", type=float, default=2e-3)
    teacher_p.add_argument("--seed", type=int, default=0)
    teacher_p.add_argument(
        "--preset",
        default="demo",
        help="architecture and framing: demo (the first demo world) or demo-face (faces fill "
        "the image, finer tri-planes)",
    )
    teacher_p.add_argument(
        "--feature-weight",
        type=float,
        default=0.0,
        help="extra image-L1 weight on facial-feature pixels (eyes, pupils, nose, mouth, brows)",
    )
    teacher_p.add_argument(
        "--max-steps-this-run",
        type=int,
        help="stop (state saved) after this many steps, to split a run over sessions",
    )
    teacher_p.add_argument("--device", default="cpu")
    teacher_p.add_argument("--quiet", action="store_true", help="no progress bar")
    teacher_p.set_defaults(func=cmd_demo_teacher)


def _add_dataset(what: SubParsers) -> None:
    """``demo dataset``: stage 2's single-view photos with a pose-dependent colour bias."""
    data_p = what.add_parser(
        "dataset",
        help="single-view 'real' photos for stage 2, green skin more frequent at large yaw",
    )
    data_p.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    data_p.add_argument("--count", type=int, default=4000)
    data_p.add_argument("--seed", type=int, default=7)
    data_p.add_argument("--resolution", type=int, default=128)
    data_p.add_argument(
        "--focal",
        type=float,
        default=None,
        help="normalised focal length of the photos: the teacher's (demo 2.4, demo-face 3.2)",
    )
    data_p.add_argument(
        "--green-at-large-yaw",
        type=float,
        default=0.6,
        help="P(green skin | |yaw| >= 30); small yaws keep the natural rate (0.2)",
    )
    data_p.add_argument("--quiet", action="store_true")
    data_p.set_defaults(func=cmd_demo_dataset)


def _add_bias(what: SubParsers) -> None:
    """``demo bias``: a student's pose bias against its teacher."""
    bias_p = what.add_parser(
        "bias",
        help="how much greener a student draws large-yaw views than its teacher (pose bias)",
    )
    bias_p.add_argument("--teacher", required=True, help="'default' or a checkpoint folder")
    bias_p.add_argument("--student", required=True, action="append", help="repeatable")
    bias_p.add_argument("--samples", type=int, default=64)
    bias_p.add_argument("--large-yaw", type=float, default=45.0)
    bias_p.add_argument("--json", type=Path, help="write the measurements as JSON")
    bias_p.set_defaults(func=cmd_demo_bias)


def _add_report(what: SubParsers) -> None:
    """``demo report``: ground truth vs teacher vs student on held-out scenes."""
    report_p = what.add_parser(
        "report",
        help="ground truth vs teacher vs student: fidelity, 3D consistency, speed, pose bias",
    )
    report_p.add_argument("--teacher", default="default", help="'default' or a checkpoint folder")
    report_p.add_argument(
        "--student", default="default-student", help="'default-student' or a checkpoint folder"
    )
    report_p.add_argument("--out", required=True, type=Path, help="report folder")
    report_p.add_argument(
        "--bias",
        action="append",
        default=[],
        metavar="NAME=STUDENT",
        help="add a student's pose bias to the report (repeatable)",
    )
    report_p.add_argument("--scenes", type=int, default=16)
    report_p.add_argument("--yaws", default="-60,-30,0,30,60", help="--yaws=-60,0,60")
    report_p.add_argument(
        "--pitches", default="-20,0,20", help="every yaw at each of these (--pitches=-20,0,20)"
    )
    report_p.add_argument("--turntable-frames", type=int, default=36)
    report_p.add_argument("--speed-repeats", type=int, default=5)
    report_p.add_argument("--bias-samples", type=int, default=64)
    report_p.set_defaults(func=cmd_demo_report)


def _add_inversion(what: SubParsers) -> None:
    """``demo inversion``: inversion through each model, scored at novel views."""
    inv_p = what.add_parser(
        "inversion",
        help="fit latents to one ground-truth view of held-out scenes; PSNR at novel views, time",
    )
    inv_p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="a model to fit with (repeatable; default: student=default-student and "
        "teacher=default)",
    )
    inv_p.add_argument("--out", required=True, type=Path, help="report folder")
    inv_p.add_argument("--scenes", type=int, default=8)
    inv_p.add_argument("--steps", type=int, default=300)
    inv_p.add_argument("--space", choices=["w", "w+"], default="w")
    inv_p.add_argument("--novel-yaws", default="-30,30", help="--novel-yaws=-30,30")
    inv_p.add_argument("--estimate-camera", action="store_true", help="do not give the input view")
    inv_p.add_argument("--quiet", action="store_true")
    inv_p.set_defaults(func=cmd_demo_inversion)


def cmd_demo_inversion(args: argparse.Namespace) -> None:
    from ..training.demo.inversion import InversionStudyConfig, inversion_study

    specs = args.model or ["student=default-student", "teacher=default"]
    models = {name: load_any(spec) for name, spec in named_specs(specs, "--model", "MODEL").items()}
    yaws = float_list(args.novel_yaws, "--novel-yaws")
    if args.steps < 1:
        raise ConfigError("--steps must be at least 1")
    config = InversionStudyConfig(
        scenes=args.scenes,
        novel_yaws=yaws,
        steps=args.steps,
        space=args.space,
        estimate_camera=args.estimate_camera,
    )
    report = inversion_study(models, args.out, config, progress=not args.quiet)
    for name, result in report["models"].items():
        cells = ", ".join(f"{v} {s['mean']:.2f} dB" for v, s in result["psnr_db"].items())
        print(f"{name}: {cells}; {result['seconds_per_inversion']['mean']:.2f} s per inversion")
    print(f"report: {args.out / 'report.md'}")


def cmd_demo_scenes(args: argparse.Namespace) -> None:
    from ..models.images import batch_to_uint8, save_image
    from ..training.demo.scenes import (
        CAMERA_FOCAL,
        build_scenes,
        check_focal,
        render_scenes,
        scene_camera,
    )
    from ..training.demo.scenes import sample_z as scene_z

    seeds = int_list(args.seeds, "--seeds")
    yaws = float_list(args.yaws, "--yaws")
    focal = check_focal(CAMERA_FOCAL if args.focal is None else args.focal)
    z = torch.cat([scene_z(seed, 1) for seed in seeds])
    scenes = build_scenes(z)
    rows = []
    for yaw in yaws:
        camera = scene_camera([yaw] * len(seeds), [args.pitch] * len(seeds), focal)
        image = render_scenes(scenes, camera, args.resolution, supersample=2).image
        rows.append(torch.cat(list(image), dim=2))
    save_image(batch_to_uint8(torch.cat(rows, dim=1)[None])[0], args.out)
    print(f"wrote {args.out} ({len(yaws)} yaws x {len(seeds)} seeds)")


def cmd_demo_teacher(args: argparse.Namespace) -> None:
    from ..training.demo.teacher import TEACHER_DIR, DemoTeacherConfig, train_demo_teacher

    config = DemoTeacherConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        preset=args.preset,
        feature_weight=args.feature_weight,
    )
    evaluation = train_demo_teacher(
        args.out, config, device(args.device), not args.quiet, args.max_steps_this_run
    )
    if evaluation:
        print(
            f"step {evaluation['step']}: held-out PSNR vs ground truth "
            f"{evaluation['psnr_db']:.2f} dB, depth error {evaluation['depth_mae']:.4f}"
        )
    print(f"teacher checkpoint: {args.out / TEACHER_DIR}")


def cmd_demo_dataset(args: argparse.Namespace) -> None:
    from ..training.demo.dataset import BiasedDatasetConfig, write_biased_dataset

    config = BiasedDatasetConfig(
        count=args.count,
        seed=args.seed,
        resolution=args.resolution,
        green_at_large_yaw=args.green_at_large_yaw,
        **({} if args.focal is None else {"focal": args.focal}),
    )
    info = write_biased_dataset(args.out, config, progress=not args.quiet)
    print(
        f"wrote {config.count} images to {args.out}: green skin in "
        f"{info['green_fraction_small_yaw']:.1%} of small-yaw and "
        f"{(info['green_fraction_large_yaw'] or 0):.1%} of large-yaw images"
    )


def cmd_demo_bias(args: argparse.Namespace) -> None:
    from ..training.demo.dataset import green_shift

    teacher = load_teacher(args.teacher, "--teacher")
    results = {}
    for spec in args.student:
        student = load_student(spec, "--student", command="demo bias")
        r = green_shift(student, teacher, args.samples, large_yaw_deg=args.large_yaw)
        results[spec] = r
        print(
            f"{spec}: green shift at |yaw| {args.large_yaw:g} vs frontal "
            f"{r['green_shift']:+.4f} ± {r['green_shift_std_error']:.4f} "
            f"({r['samples']} latents)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def cmd_demo_report(args: argparse.Namespace) -> None:
    from ..training.demo.report import DemoReportConfig, demo_report

    teacher = load_teacher(args.teacher, "--teacher")
    student = load_student(args.student, "--student", command="demo report")
    bias = {
        name: load_student(spec, "--bias", command="demo report")
        for name, spec in named_specs(args.bias, "--bias", "STUDENT").items()
    }
    yaws = float_list(args.yaws, "--yaws")
    pitches = float_list(args.pitches, "--pitches")
    if (
        args.scenes < 1
        or not yaws
        or not pitches
        or args.turntable_frames < 2
        or args.speed_repeats < 1
    ):
        raise ConfigError(
            "need --scenes >= 1, at least one yaw and one pitch, --turntable-frames >= 2, "
            "--speed-repeats >= 1"
        )
    config = DemoReportConfig(
        scenes=args.scenes,
        yaws=yaws,
        pitches=pitches,
        grid_scenes=min(4, args.scenes),
        turntable_frames=args.turntable_frames,
        speed_repeats=args.speed_repeats,
        bias_samples=args.bias_samples,
    )
    report = demo_report(teacher, student, args.out, config, bias)
    f, r = report["fidelity"], report["reprojection_error"]
    print(
        f"teacher vs ground truth {f['teacher_psnr']:.2f} dB; student vs teacher "
        f"{f['student_psnr']:.2f} dB; reprojection GT {r['ground_truth']:.4f}, teacher "
        f"{r['teacher']:.4f}, student {r['student']:.4f}; pupil contrast teacher "
        f"{f['teacher_pupil_contrast']:.3f}, student {f['student_pupil_contrast']:.3f}"
    )
    print(f"report: {args.out / 'report.md'}")
