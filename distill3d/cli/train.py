"""Distillation: ``train`` (stage 1 or 2) and ``cache`` (pre-rendered teacher samples)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..models.errors import ConfigError
from .common import SubParsers, device

if TYPE_CHECKING:
    from ..training.config import TrainConfig


def add_train(sub: SubParsers) -> None:
    p = sub.add_parser(
        "train",
        help="distil a teacher into a convolutional student (stage 1 or 2)",
        description="Distil an EG3D teacher into a student. Settings come from defaults, then "
        "--config FILE.yaml, then flags (--set KEY=VALUE reaches any field, e.g. "
        "--set loss.hr_l1=2 --set cameras.yaw_max_deg=40). Under torchrun each process takes "
        "a share of the batch.",
    )
    p.add_argument("--teacher", help="teacher: checkpoint folder, EG3D .pkl or 'default'")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--stage", type=int, choices=[1, 2], help="1: reconstruction; 2: + adversarial")
    p.add_argument("--config", type=Path, help="YAML (or JSON) file of TrainConfig fields")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--init-from",
        help="run directory to start from: stage 2's stage-1 run, or a stage-1 warm start",
    )
    p.add_argument("--steps", type=int, help="total optimisation steps")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--seed", type=int, help="run seed (weights, latents, poses)")
    p.add_argument("--lr", type=float, help="student learning rate")
    p.add_argument("--truncation", type=float, help="truncation psi of the sampled identities")
    p.add_argument("--dataset", help="EG3D-style folder/zip with dataset.json (poses, reals)")
    p.add_argument("--real-mix", type=float, help="stage 2: share of real images in D's batch")
    p.add_argument("--cache", help="pre-rendered teacher cache (see `distill3d cache`)")
    p.add_argument("--lpips", help="LPIPS weights: .safetensors file or folder")
    p.add_argument("--no-lpips", action="store_true", help="train without the LPIPS term")
    p.add_argument("--device", help="auto, cpu, cuda (default auto)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--sample-every", type=int, help="steps between previews and held-out PSNR")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


_TRAIN_FLAGS = {
    "teacher": "teacher",
    "stage": "stage",
    "init_from": "init_from",
    "steps": "steps",
    "batch_size": "batch_size",
    "seed": "seed",
    "lr": "lr",
    "truncation": "truncation_psi",
    "dataset": "dataset",
    "real_mix": "discriminator.real_mix",
    "cache": "cache",
    "lpips": "lpips",
    "device": "device",
    "precision": "precision",
    "checkpoint_every": "checkpoint_every",
    "sample_every": "sample_every",
}


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then --config, then flags and --set, validated once as a whole."""
    import yaml

    from ..training.config import TrainConfig, apply_overrides, load_config_file

    changes: dict[str, object] = dict(load_config_file(args.config)) if args.config else {}
    for flag, field_name in _TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            changes[field_name] = value
    if getattr(args, "no_lpips", False):
        changes["use_lpips"] = False
    for item in getattr(args, "overrides", []):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set loss.hr_l1=2")
        changes[key.strip()] = yaml.safe_load(raw)
    return TrainConfig.from_dict(apply_overrides(TrainConfig().to_dict(), changes))


def _check_resume(args: argparse.Namespace) -> None:
    """--resume keeps the run's saved config: any setting flag but --steps is an error."""
    ignored = [
        f"--{f.replace('_', '-')}"
        for f in _TRAIN_FLAGS
        if f != "steps" and getattr(args, f) is not None
    ]
    if ignored or args.config or args.overrides or args.no_lpips:
        raise ConfigError(
            "--resume continues the run with its saved config; only --steps may change "
            f"(got {' '.join(ignored) or '--config/--set/--no-lpips'})"
        )


def cmd_train(args: argparse.Namespace) -> None:
    from ..training.train import train

    if args.resume:
        _check_resume(args)
    config = None if args.resume else train_config_from_args(args)
    result = train(config, args.out, resume=args.resume, steps=args.steps, progress=not args.quiet)  # type: ignore[arg-type]
    if not result.is_main:
        return
    print(
        f"{args.out}: step {result.step}; held-out PSNR vs teacher "
        f"{result.heldout_psnr_start:.2f} -> {result.heldout_psnr_end:.2f} dB; "
        f"student checkpoint: {args.out / 'student'}"
    )


def add_cache(sub: SubParsers) -> None:
    p = sub.add_parser(
        "cache",
        help="pre-render teacher samples (w, camera, image, feature) into shards",
        description="Render the teacher once into safetensors shards that `distill3d train "
        "--cache DIR` reads instead of rendering live.",
    )
    p.add_argument("--teacher", required=True, help="checkpoint folder, EG3D .pkl or 'default'")
    p.add_argument("--out", required=True, type=Path, help="cache folder to write")
    p.add_argument("--count", type=int, required=True, help="number of samples")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--dataset", help="take poses from this dataset's labels")
    from ..training.config import CameraDistribution

    cameras = CameraDistribution()
    for flag, field in (
        ("--yaw-std", "yaw_std_deg"),
        ("--yaw-max", "yaw_max_deg"),
        ("--pitch-std", "pitch_std_deg"),
        ("--pitch-max", "pitch_max_deg"),
    ):
        p.add_argument(
            flag,
            type=float,
            dest=field,
            default=getattr(cameras, field),
            help=f"degrees, without --dataset (train with --set cameras.{field}= the same)",
        )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_cache)


def cmd_cache(args: argparse.Namespace) -> None:
    from ..training.config import CameraDistribution
    from ..training.data import PoseSampler, TeacherSampler, write_cache
    from ..training.train import load_teacher

    teacher, digest = load_teacher(args.teacher, device(args.device))
    labels = None
    if args.dataset:
        from ..training.dataset import ImageDataset

        labels = ImageDataset(args.dataset).labels
    cameras = CameraDistribution(
        args.yaw_std_deg, args.yaw_max_deg, args.pitch_std_deg, args.pitch_max_deg
    )
    sampler = TeacherSampler(
        teacher, PoseSampler(teacher, cameras, labels), args.seed, args.truncation
    )
    write_cache(sampler, args.out, args.count, args.shard_size, args.batch_size, digest)
    print(f"wrote {args.count} teacher samples to {args.out}")
