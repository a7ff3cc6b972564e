"""``eval``: how faithfully and consistently a student draws what its teacher draws."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from .common import SubParsers, checkpoint_metadata, device, load_student, load_teacher


def add_eval(sub: SubParsers) -> None:
    p = sub.add_parser(
        "eval",
        help="fidelity (PSNR, SSIM, LPIPS) and 3D consistency of a student vs its teacher",
        description="Render held-out latents with the teacher and the student at poses inside "
        "and beyond the student's training range; write report.md, report.json, grid.png and "
        "turntable.gif to --out.",
    )
    p.add_argument(
        "--teacher", required=True, help="'default', a checkpoint folder or an EG3D .pkl"
    )
    p.add_argument(
        "--student", required=True, help="'default-student' or a student checkpoint folder"
    )
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=20231)
    p.add_argument("--truncation", type=float, default=0.7)
    p.add_argument("--pair-offset", type=float, default=10.0, help="yaw between paired views")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lpips", help="LPIPS weights (file or folder); default: the usual places")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument(
        "--fid-real",
        metavar="DIR|teacher",
        help="add FID/KID: against a folder of real images (the teacher is scored too), or "
        "against teacher renders of other latents ('teacher'); needs the Inception weights",
    )
    p.add_argument(
        "--fid-samples", type=int, default=1000, help="generated images per model for FID/KID"
    )
    p.add_argument(
        "--inception",
        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth; default: $DISTILL3D_INCEPTION, "
        "then torch's hub cache",
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_eval)


def _eval_config(args: argparse.Namespace) -> Any:
    """The evaluation settings; the training pose range is the student's recorded valid range
    (which is 1.5 times what it was trained on), else the default one."""
    from ..models.student import DEFAULT_POSE_RANGE
    from ..training.evaluation.evaluate import EvalConfig

    limits = checkpoint_metadata(args.student).metadata.get("pose_range") or DEFAULT_POSE_RANGE
    return EvalConfig(
        samples=args.samples,
        seed=args.seed,
        truncation_psi=args.truncation,
        train_yaw_deg=float(limits["yaw_deg"]) / 1.5,
        train_pitch_deg=float(limits["pitch_deg"]) / 1.5,
        pair_offset_deg=args.pair_offset,
        batch_size=args.batch_size,
        fid_samples=args.fid_samples,
    )


def _inception(args: argparse.Namespace, dev: torch.device) -> tuple[Any, str | None]:
    """The Inception network and the real-image folder for FID/KID (None, None without
    --fid-real); loaded first so a missing network fails before any rendering."""
    if args.fid_real is None:
        return None, None
    from ..training.evaluation.inception import load_inception

    real = None if args.fid_real == "teacher" else args.fid_real
    return load_inception(args.inception, dev), real


def _lpips(args: argparse.Namespace, dev: torch.device) -> Any:
    """LPIPS when asked for and found, else None (with a note when none is found)."""
    if args.no_lpips:
        return None
    from ..models.lpips import find_lpips_weights, load_lpips

    if args.lpips or find_lpips_weights() is not None:
        return load_lpips(args.lpips, dev)
    print("no LPIPS weights found (see README, Training): reporting PSNR and SSIM only")
    return None


def _print_report(report: dict[str, Any]) -> None:
    """One line per pose group, then FID/KID lines when measured."""
    for group, f in report["fidelity"].items():
        c = report["consistency"][group]
        print(
            f"{group}: PSNR {f['psnr_db']['mean']:.2f} dB, SSIM {f['ssim']['mean']:.3f}"
            + (f", LPIPS {f['lpips']['mean']:.3f}" if "lpips" in f else "")
            + f"; reprojection teacher {c['teacher_reprojection_error']['mean']:.4f}, "
            f"student {c['student_reprojection_error']['mean']:.4f}"
        )
    d = report.get("distribution") or {}
    for name in ("student", "teacher"):
        if name in d:
            print(
                f"{name} vs {d['reference']}: FID {d[name]['fid']:.3f}, "
                f"KID x 10^3 {d[name]['kid']['mean'] * 1e3:.3f} ({d['samples']} samples)"
            )


def cmd_eval(args: argparse.Namespace) -> None:
    from ..training.evaluation.evaluate import evaluate

    dev = device(args.device)
    teacher = load_teacher(args.teacher, "--teacher", dev)
    student = load_student(args.student, "--student", dev, command="eval")
    config = _eval_config(args)
    inception, real = _inception(args, dev)
    lpips = _lpips(args, dev)
    report = evaluate(teacher, student, args.out, config, lpips, inception, real, progress=True)
    _print_report(report)
    print(f"report: {args.out / 'report.md'}")
