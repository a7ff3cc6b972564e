"""Model files: ``init`` (a random preset generator), ``convert`` (an official EG3D pickle) and
``info`` (a model's architecture as JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .common import SubParsers, add_plane_order, load_any


def add_init(sub: SubParsers) -> None:
    from ..models.eg3d.presets import PRESETS

    p = sub.add_parser(
        "init",
        help="write a randomly initialised generator of a preset architecture",
        description="Write a randomly initialised EG3D generator in distill3d's checkpoint format, "
        "so the pipeline can be tried without official weights.",
    )
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument(
        "--student",
        action="store_true",
        help="write the student architecture mirroring the preset instead (its teacher mapping "
        "and super-resolution copied from the preset teacher initialised with the same seed)",
    )
    p.set_defaults(func=cmd_init)


def _init_model(preset_name: str, seed: int, student: bool) -> torch.nn.Module:
    """The preset teacher for ``seed``, or the student built from it (seeded the same way)."""
    from ..models.load import init_generator
    from ..models.student import student_from_teacher, student_preset

    model = init_generator(preset_name, seed)
    if not student:
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return student_from_teacher(model, student_preset(preset_name))


def cmd_init(args: argparse.Namespace) -> None:
    from ..models.checkpoint import save_checkpoint

    model = _init_model(args.preset, args.seed, args.student)
    source = f"init --preset {args.preset} --seed {args.seed}"
    metadata: dict[str, object] = {"source": source}
    if args.student:
        metadata = {"source": source + " --student", "teacher": source}
    save_checkpoint(model, args.out, metadata=metadata)
    n_params = sum(p.numel() for p in model.parameters())
    kind = "student" if args.student else "teacher"
    print(f"wrote {args.out} ({args.preset} {kind}, {n_params:,} parameters, seed {args.seed})")


def add_convert(sub: SubParsers) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an official EG3D .pkl into a distill3d checkpoint",
        description="Read an official EG3D checkpoint with a restricted unpickler (its embedded "
        "code is never run) and write G_ema in distill3d's format.",
    )
    p.add_argument("src", type=Path, help="official EG3D .pkl (e.g. ffhq512-128.pkl)")
    p.add_argument("dst", type=Path, help="checkpoint folder to write")
    add_plane_order(
        p,
        "tri-plane axes the weights were trained with: 'original' (xy, xz, zx) for NVIDIA's "
        "checkpoints, 'corrected' (xy, yz, zx) for forks that fixed NVlabs/eg3d#67",
    )
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> None:
    from ..models.checkpoint import save_checkpoint, sha256_file
    from ..models.eg3d.convert import generator_from_official
    from ..models.eg3d.official import load_official_pickle

    generator = generator_from_official(load_official_pickle(args.src), args.plane_order)
    metadata = {
        "source": args.src.name,
        "source_sha256": sha256_file(args.src),
        "licence": "NVIDIA Source Code License for EG3D (non-commercial); see the README",
    }
    save_checkpoint(generator, args.dst, metadata=metadata)
    cfg = generator.config
    print(
        f"wrote {args.dst}: {cfg.img_resolution}px, neural rendering {cfg.neural_rendering_resolution}px, "
        f"super-resolution {cfg.superresolution.variant}, {cfg.mapping_layers} mapping layers, "
        f"plane order {cfg.plane_order}"
    )


def add_info(sub: SubParsers) -> None:
    p = sub.add_parser("info", help="print a model's architecture and rendering settings as JSON")
    p.add_argument("model", help="'default', a checkpoint folder or an EG3D .pkl")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> None:
    model = load_any(args.model)
    info = {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": model.config.to_dict(),
    }
    print(json.dumps(info, indent=2))
