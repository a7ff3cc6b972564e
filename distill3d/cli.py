"""The ``distill3d`` command line: each subcommand parses its flags and calls one library function.

Errors that a user can fix (bad file, bad flag value) are printed as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .models.errors import CheckpointError, ConfigError


def _add_init(sub: argparse._SubParsersAction) -> None:
    from .models.eg3d.presets import PRESETS

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


def cmd_init(args: argparse.Namespace) -> None:
    from .models.checkpoint import save_checkpoint
    from .models.load import init_generator
    from .models.student import student_from_teacher, student_preset

    model = init_generator(args.preset, args.seed)
    source = f"init --preset {args.preset} --seed {args.seed}"
    metadata: dict[str, object] = {"source": source}
    if args.student:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            model = student_from_teacher(model, student_preset(args.preset))
        metadata = {"source": source + " --student", "teacher": source}
    save_checkpoint(model, args.out, metadata=metadata)
    n_params = sum(p.numel() for p in model.parameters())
    kind = "student" if args.student else "teacher"
    print(f"wrote {args.out} ({args.preset} {kind}, {n_params:,} parameters, seed {args.seed})")


def _add_plane_order(p: argparse.ArgumentParser, help_text: str) -> None:
    from .models.eg3d.config import PLANE_AXES

    p.add_argument("--plane-order", choices=sorted(PLANE_AXES), default="original", help=help_text)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an official EG3D .pkl into a distill3d checkpoint",
        description="Read an official EG3D checkpoint with a restricted unpickler (its embedded "
        "code is never run) and write G_ema in distill3d's format.",
    )
    p.add_argument("src", type=Path, help="official EG3D .pkl (e.g. ffhq512-128.pkl)")
    p.add_argument("dst", type=Path, help="checkpoint folder to write")
    _add_plane_order(
        p,
        "tri-plane axes the weights were trained with: 'original' (xy, xz, zx) for NVIDIA's "
        "checkpoints, 'corrected' (xy, yz, zx) for forks that fixed NVlabs/eg3d#67",
    )
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> None:
    from .models.checkpoint import save_checkpoint, sha256_file
    from .models.eg3d.convert import generator_from_official
    from .models.eg3d.official import load_official_pickle

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


def _add_latent_flags(p: argparse.ArgumentParser) -> None:
    identity = p.add_mutually_exclusive_group()
    identity.add_argument(
        "--seed",
        type=int,
        default=None,
        help="identity: z = RandomState(seed).randn (EG3D's convention; default 0)",
    )
    identity.add_argument(
        "--latent",
        type=Path,
        default=None,
        help="identity: a latent file written by `distill3d invert` (its fitted camera is the "
        "default view)",
    )
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi (default 1: none)")
    p.add_argument(
        "--truncation-cutoff", type=int, default=None, help="truncate only the first N ws"
    )
    p.add_argument(
        "--mix-seed",
        type=int,
        default=None,
        help="style mixing: layers from --mix-cutoff on come from this seed's latent",
    )
    p.add_argument("--mix-cutoff", type=int, default=None, help="first layer taken from --mix-seed")
    p.add_argument(
        "--interpolate-seed",
        type=int,
        default=None,
        help="interpolate in W towards this seed's latent by --interpolate-t",
    )
    p.add_argument(
        "--interpolate-t", type=float, default=0.5, help="0 = the identity, 1 = the other"
    )


def _add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render",
        help="render one image of a latent from a yaw/pitch",
        description="Render one image. --model takes 'default' (the embedded model), a distill3d "
        "checkpoint folder or an official EG3D .pkl.",
    )
    p.add_argument(
        "--model", default="default", help="'default', a checkpoint folder or an EG3D .pkl"
    )
    _add_latent_flags(p)
    p.add_argument(
        "--yaw",
        type=float,
        default=None,
        help="degrees; positive turns the camera towards +x (default 0, or the latent's)",
    )
    p.add_argument(
        "--pitch",
        type=float,
        default=None,
        help="degrees of elevation; positive looks from above (default 0, or the latent's)",
    )
    p.add_argument("--noise-mode", choices=["const", "random", "none"], default="const")
    p.add_argument(
        "--render-seed", type=int, default=0, help="seed of the ray jitter and random noise"
    )
    p.add_argument(
        "--nrr", type=int, default=None, help="neural-rendering resolution (default: the model's)"
    )
    p.add_argument("--depth-samples", type=int, default=None, help="coarse samples per ray")
    p.add_argument(
        "--importance-samples", type=int, default=None, help="importance samples per ray"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    _add_plane_order(p, "for .pkl models only (see `distill3d convert --help`)")
    p.add_argument("--out", type=Path, required=True, help="image file (.png, .jpg or .webp)")
    p.add_argument(
        "--depth-out",
        type=Path,
        default=None,
        help="also write the depth map: .png (near = bright) or .npy (raw distances)",
    )
    p.add_argument(
        "--raw-out", type=Path, default=None, help="also write the low-resolution raw image"
    )
    p.set_defaults(func=cmd_render)


def cmd_render(args: argparse.Namespace) -> None:
    from .models.images import depth_to_uint8, save_image, to_uint8
    from .models.load import load_model
    from .models.render import RenderOptions, orbit_camera, render_ws
    from .models.rng import generator_for
    from .models.student import Student

    device = _device(args.device)
    generator = load_model(args.model, device, args.plane_order)
    if args.depth_out and isinstance(generator, Student):
        raise ConfigError(
            f"--depth-out: {args.model} is a student, which renders no depth; "
            "drop --depth-out or render with its teacher"
        )
    options = RenderOptions(
        truncation_psi=args.truncation,
        truncation_cutoff=args.truncation_cutoff,
        noise_mode=args.noise_mode,
        neural_rendering_resolution=args.nrr,
        depth_resolution=args.depth_samples,
        depth_resolution_importance=args.importance_samples,
    )
    ws, identity, yaw, pitch = _identity(args, generator, device)
    camera = orbit_camera(generator, yaw, pitch)  # type: ignore[arg-type]
    start = time.perf_counter()
    out = render_ws(generator, ws, camera, options, rng=generator_for(args.render_seed, device))  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    save_image(to_uint8(out["image"]), args.out)
    if args.raw_out:
        save_image(to_uint8(out["image_raw"]), args.raw_out)
    if args.depth_out:
        if args.depth_out.suffix == ".npy":
            args.depth_out.parent.mkdir(parents=True, exist_ok=True)
            np.save(args.depth_out, out["image_depth"][0, 0].cpu().numpy())
        else:
            save_image(depth_to_uint8(out["image_depth"]), args.depth_out)
    size = out["image"].shape[-1]
    print(
        f"wrote {args.out} ({size}x{size}, {identity}, yaw {yaw:g}, pitch {pitch:g}) "
        f"in {elapsed:.2f} s"
    )


def _seed_ws(generator: Any, seed: int, device: torch.device) -> torch.Tensor:
    from .models.latents import z_from_seed
    from .models.render import frontal_camera

    z = z_from_seed(seed, generator.z_dim).to(device)
    with torch.no_grad():
        return generator.mapping(z, frontal_camera(generator).to_label().to(device))


def _edited(
    args: argparse.Namespace, generator: Any, ws: torch.Tensor, device: torch.device, what: str
) -> tuple[torch.Tensor, str]:
    """--interpolate-seed, then --mix-seed, applied to untruncated ws. Truncation is linear and
    row-wise, so truncating afterwards equals truncating each latent first."""
    from .models.editing import interpolate, style_mix

    if args.interpolate_seed is not None:
        if not 0.0 <= args.interpolate_t <= 1.0:
            raise ConfigError("--interpolate-t must be between 0 and 1")
        other = _seed_ws(generator, args.interpolate_seed, device)
        ws = interpolate(ws, other, args.interpolate_t)
        what += f" -> seed {args.interpolate_seed} at t={args.interpolate_t:g}"
    if (args.mix_seed is None) != (args.mix_cutoff is None):
        raise ConfigError("style mixing needs both --mix-seed and --mix-cutoff")
    if args.mix_seed is not None:
        num_ws = int(generator.num_ws)
        if not 0 <= args.mix_cutoff <= num_ws:
            raise ConfigError(f"--mix-cutoff must be between 0 and {num_ws} (this model's num_ws)")
        ws = style_mix(ws, _seed_ws(generator, args.mix_seed, device), args.mix_cutoff, num_ws)
        what += f", layers {args.mix_cutoff}+ from seed {args.mix_seed}"
    return ws, what


def _identity(
    args: argparse.Namespace, generator: Any, device: torch.device
) -> tuple[torch.Tensor, str, float, float]:
    """ws [1, num_ws, w_dim] (untruncated, edited) from --seed or --latent, a description for
    messages, and the view (--yaw/--pitch, else the latent's fitted camera, else frontal)."""
    from .models.latents import load_latent
    from .models.render import check_ws

    if args.latent is not None:
        latent = load_latent(args.latent)
        try:
            ws = check_ws(generator, latent.ws[None].to(device))
        except ValueError as exc:
            raise ConfigError(f"--latent {args.latent}: {exc}") from None
        yaw = latent.yaw_deg if args.yaw is None else args.yaw
        pitch = latent.pitch_deg if args.pitch is None else args.pitch
        return (*_edited(args, generator, ws, device, f"latent {args.latent.name}"), yaw, pitch)
    seed = 0 if args.seed is None else args.seed
    ws = _seed_ws(generator, seed, device)
    yaw = 0.0 if args.yaw is None else args.yaw
    pitch = 0.0 if args.pitch is None else args.pitch
    return (*_edited(args, generator, ws, device, f"seed {seed}"), yaw, pitch)


def _add_orbit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "orbit",
        help="render a turntable video of one identity (seed or fitted latent)",
        description="yaw = A sin(2 pi t), pitch = P + B cos(2 pi t) around the model's pivot, as "
        "the service's GET /orbit; the container follows --out's suffix (.mp4, .webm, .gif).",
    )
    p.add_argument("--model", default="default", help="'default', a checkpoint or an EG3D .pkl")
    _add_latent_flags(p)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--yaw-amplitude", type=float, default=30.0, help="degrees either side")
    p.add_argument("--pitch-amplitude", type=float, default=5.0, help="degrees up and down")
    p.add_argument("--batch-size", type=int, default=8, help="frames rendered at once")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True, help="video file: .mp4, .webm or .gif")
    p.set_defaults(func=cmd_orbit, yaw=None, pitch=None)


def cmd_orbit(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .models.images import batch_to_uint8
    from .models.load import load_model
    from .models.render import RenderOptions, orbit_camera, render_ws
    from .models.rng import generator_for
    from .models.video import encode_video

    fmt = args.out.suffix.lower().lstrip(".")
    if fmt not in ("mp4", "webm", "gif"):
        raise ConfigError(f"--out {args.out}: the suffix must be .mp4, .webm or .gif")
    if args.frames < 2 or args.fps < 1 or args.batch_size < 1:
        raise ConfigError("need --frames >= 2, --fps >= 1 and --batch-size >= 1")
    if not 0 <= args.pitch_amplitude < 90:
        raise ConfigError("--pitch-amplitude must be in [0, 90) degrees")
    device = _device(args.device)
    generator = load_model(args.model, device)
    ws, identity, _, pitch0 = _identity(args, generator, device)
    t = np.arange(args.frames) / args.frames
    yaws = (args.yaw_amplitude * np.sin(2 * np.pi * t)).tolist()
    pitches = np.clip(pitch0 + args.pitch_amplitude * np.cos(2 * np.pi * t), -89, 89).tolist()
    options = RenderOptions(
        truncation_psi=args.truncation, truncation_cutoff=args.truncation_cutoff
    )
    frames = []
    start = time.perf_counter()
    with torch.no_grad():
        for i in tqdm(range(0, args.frames, args.batch_size), desc="orbit", unit="batch"):
            yaw, pitch = yaws[i : i + args.batch_size], pitches[i : i + args.batch_size]
            camera = orbit_camera(generator, yaw, pitch)  # type: ignore[arg-type]
            batch = ws.expand(len(yaw), -1, -1)
            rng = [generator_for(0, device) for _ in yaw]  # the same jitter as a single render
            out = render_ws(generator, batch, camera, options, rng=rng)  # type: ignore[arg-type]
            frames.append(batch_to_uint8(out["image"]))
    video = encode_video(np.concatenate(frames), args.fps, fmt)  # type: ignore[arg-type]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(video)
    print(
        f"wrote {args.out} ({args.frames} frames, {identity}) in "
        f"{time.perf_counter() - start:.1f} s"
    )


def _add_invert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "invert",
        help="fit a latent (and camera) so that a model draws an image",
        description="Optimise w (W or W+, from the average w) and, unless --camera is given, "
        "yaw/pitch, so that the model's render matches IMAGE: L1 + MSE (+ LPIPS with local "
        "weights) + a pull towards the w distribution. Writes latent.json (for render, orbit and "
        "the service), the target, the fit and a side-by-side. Works through a student (seconds) "
        "or the volumetric teacher (slower), so the two can be compared.",
    )
    p.add_argument("image", type=Path, help="PNG, JPEG or WebP; resized to the model's output")
    p.add_argument("--model", default="default-student", help="student or teacher to fit with")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--camera", default=None, help="yaw,pitch in degrees: the view is known")
    view.add_argument(
        "--estimate-camera",
        action="store_true",
        help="search and optimise the view (the default when --camera is not given)",
    )
    p.add_argument("--space", choices=["w", "w+"], default="w", help="one w or one per layer")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--w-reg", type=float, default=1e-3, help="pull towards the w distribution")
    p.add_argument(
        "--tune-steps",
        type=int,
        default=0,
        help="pivotal tuning: fine-tune a copy of the model around the fit (default 0: off); the "
        "copy is written to OUT/tuned-model",
    )
    p.add_argument("--lpips", default=None, help="LPIPS weights (file or folder); off when absent")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", type=Path, required=True, help="folder to write")
    p.set_defaults(func=cmd_invert)


def cmd_invert(args: argparse.Namespace) -> None:
    from .models.checkpoint import save_checkpoint
    from .models.images import read_image, save_image, to_uint8
    from .models.inversion import InversionConfig, invert, prepare_target
    from .models.latents import save_latent
    from .models.load import load_model

    camera = None
    if args.camera is not None:
        try:
            yaw, pitch = (float(v) for v in args.camera.split(","))
        except ValueError:
            raise ConfigError(f"--camera takes yaw,pitch in degrees, got {args.camera!r}") from None
        camera = (yaw, pitch)
    config = InversionConfig(
        steps=args.steps, lr=args.lr, space=args.space, w_reg=args.w_reg, tune_steps=args.tune_steps
    )
    device = _device(args.device)
    target = read_image(args.image)
    model = load_model(args.model, device)
    lpips = None
    if args.lpips is not None:
        from .models.lpips import load_lpips

        lpips = load_lpips(args.lpips, device)
    result = invert(model, target, config, camera, lpips, progress=not args.quiet)
    args.out.mkdir(parents=True, exist_ok=True)
    fitted = to_uint8(result.image)
    goal = to_uint8(prepare_target(model, target).cpu())
    save_image(goal, args.out / "target.png")
    save_image(fitted, args.out / "fit.png")
    save_image(np.concatenate([goal, fitted], axis=1), args.out / "comparison.png")
    metadata = {"model": args.model, "image": args.image.name}
    if result.tuned_model is not None:
        source = f"distill3d invert --tune-steps {args.tune_steps} --model {args.model}"
        save_checkpoint(result.tuned_model, args.out / "tuned-model", metadata={"source": source})
        metadata["tuned_model"] = "tuned-model"
    save_latent(result.latent(metadata), args.out / "latent.json")
    how = "estimated" if result.camera_estimated else "given"
    tuned = "" if result.tuned_psnr_db is None else f", after tuning {result.tuned_psnr_db:.2f} dB"
    print(
        f"fitted {args.image} in {result.seconds:.1f} s ({config.steps} steps, {config.space}): "
        f"PSNR {result.psnr_db:.2f} dB{tuned}; camera ({how}) yaw {result.yaw_deg:.1f}, "
        f"pitch {result.pitch_deg:.1f}"
    )
    print(f"wrote {args.out / 'latent.json'} and {args.out / 'comparison.png'}")


def _add_train(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--init-from", help="stage 2: the stage-1 run directory")
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


def train_config_from_args(args: argparse.Namespace) -> object:
    """Defaults, then --config, then flags and --set, validated once as a whole."""
    import yaml

    from .training.config import TrainConfig, apply_overrides, load_config_file

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


def cmd_train(args: argparse.Namespace) -> None:
    from .training.train import train

    if args.resume:
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
        config = None
    else:
        config = train_config_from_args(args)
    result = train(config, args.out, resume=args.resume, steps=args.steps, progress=not args.quiet)  # type: ignore[arg-type]
    if not result.is_main:
        return
    print(
        f"{args.out}: step {result.step}; held-out PSNR vs teacher "
        f"{result.heldout_psnr_start:.2f} -> {result.heldout_psnr_end:.2f} dB; "
        f"student checkpoint: {args.out / 'student'}"
    )


def _add_cache(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_cache)


def cmd_cache(args: argparse.Namespace) -> None:
    from .training.config import CameraDistribution
    from .training.data import PoseSampler, TeacherSampler, write_cache
    from .training.train import load_teacher

    teacher, digest = load_teacher(args.teacher, _device(args.device))
    labels = None
    if args.dataset:
        from .training.dataset import ImageDataset

        labels = ImageDataset(args.dataset).labels
    sampler = TeacherSampler(
        teacher, PoseSampler(teacher, CameraDistribution(), labels), args.seed, args.truncation
    )
    write_cache(sampler, args.out, args.count, args.shard_size, args.batch_size, digest)
    print(f"wrote {args.count} teacher samples to {args.out}")


def _add_export(sub: argparse._SubParsersAction) -> None:
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
    onnx_p.add_argument("--model", required=True, help="a student checkpoint folder")
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


def cmd_export_onnx(args: argparse.Namespace) -> None:
    from .export.onnx import export_onnx
    from .models.checkpoint import read_checkpoint_info

    model = _load_student(args.model, "--model", command="export")
    info = read_checkpoint_info(args.model)
    source = {
        "checkpoint": str(args.model),
        "weights_sha256": info.weights_sha256,
        "teacher_sha256": info.metadata.get("teacher_sha256", ""),
    }
    if "pose_range" in info.metadata:  # served with the graphs as the student's valid poses
        source["pose_range"] = info.metadata["pose_range"]
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
        worst = (
            f"max |error| {max(check['max_abs_error'].values()):.2g}"
            if "max_abs_error" in check
            else f"min PSNR {min(v for v in check['psnr_db'].values() if v != 'inf'):.1f} dB"
            if any(v != "inf" for v in check["psnr_db"].values())
            else "identical"
        )
        print(
            f"{args.out / graph['file']}: {key}, verified at batch {check.get('batch_sizes', [1, 2, 5])}, {worst}"
        )
    print(f"exported in {elapsed:.1f} s; metadata in {args.out / 'export.json'}")


def cmd_export_fp16(args: argparse.Namespace) -> None:
    from .export.fp16 import add_fp16_graph

    metadata = add_fp16_graph(args.onnx, min_psnr_db=args.min_psnr)
    graph = metadata["graphs"]["student_fp16"]
    values = [v for v in graph["verification"]["psnr_db"].values() if v != "inf"]
    worst = f"min PSNR {min(values):.1f} dB" if values else "identical"
    print(f"{args.onnx / graph['file']}: verified against student.onnx at batch 1, 2, 5, {worst}")


def cmd_export_tensorrt(args: argparse.Namespace) -> None:
    from .export.tensorrt import BuildSettings, build_plan, describe

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
    from .export.triton import TritonSettings, write_repository

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


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the HTTP service (render, orbit, metrics); the embedded model on CPU by default",
        description="Serve /render, /orbit, /v1/models, /metrics, /healthz, /readyz and /docs. "
        "Settings come from DISTILL3D_* environment variables, then --config FILE (YAML/JSON), "
        "then these flags. The API key is read from DISTILL3D_API_KEY or the file only.",
    )
    p.add_argument("--config", type=Path, help="settings file (YAML or JSON)")
    p.add_argument("--host", help="bind address (default 127.0.0.1; 0.0.0.0 in containers)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--teacher", help="'default', a checkpoint folder, an EG3D .pkl, or 'none'")
    p.add_argument("--student", help="a student checkpoint folder")
    p.add_argument("--onnx-dir", type=Path, help="an export folder (ONNX Runtime backend)")
    p.add_argument("--plan-dir", type=Path, help="a TensorRT plan folder")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--student-backend", choices=["auto", "torch", "onnxruntime", "tensorrt"], default=None
    )
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--teacher-max-batch-size", type=int)
    p.add_argument("--max-wait-ms", type=float)
    p.add_argument("--queue-size", type=int)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    import logging

    import uvicorn
    from pydantic import ValidationError

    from .service.app import create_app
    from .service.settings import load_settings

    try:
        settings = load_settings(
            args.config,
            host=args.host,
            port=args.port,
            teacher=args.teacher,
            student=args.student,
            onnx_dir=args.onnx_dir,
            plan_dir=args.plan_dir,
            device=args.device,
            student_backend=args.student_backend,
            max_batch_size=args.max_batch_size,
            teacher_max_batch_size=args.teacher_max_batch_size,
            max_wait_ms=args.max_wait_ms,
            queue_size=args.queue_size,
        )
        settings.resolved_device()
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {exc}") from None
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # One worker: it owns the models and the batching queue (several would split the queue).
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=10,
    )


def _add_loadtest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "loadtest",
        help="measure requests/s and p50/p99 latency of a local service at several concurrencies",
        description="Send a bounded number of /render requests to a service on this machine "
        "(loopback only). With --url it measures a running service; without, it starts one per "
        "--batching mode (on: --max-batch-size, off: batch 1) with the model flags given.",
    )
    p.add_argument("--url", help="a running service, e.g. http://127.0.0.1:8000")
    p.add_argument("--concurrency", default="1,2,4,8", help="comma-separated levels")
    p.add_argument("--requests", type=int, default=32, help="requests per level")
    p.add_argument("--batching", default="on,off", help="modes to start (without --url)")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--backend", default="auto", choices=["auto", "student", "volumetric"])
    p.add_argument("--yaw", type=float, default=20.0)
    p.add_argument("--teacher", help="passed to distill3d serve")
    p.add_argument("--student", help="passed to distill3d serve")
    p.add_argument("--onnx-dir", help="passed to distill3d serve")
    p.add_argument("--device", help="passed to distill3d serve")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.set_defaults(func=cmd_loadtest)


def cmd_loadtest(args: argparse.Namespace) -> None:
    import asyncio
    import os

    from .service.loadtest import format_table, run_level, spawn_service

    levels = [int(v) for v in args.concurrency.split(",") if v.strip()]
    params = {"yaw": args.yaw, "backend": args.backend}
    key = os.environ.get("DISTILL3D_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else None
    results = []

    def measure(url: str, label: str) -> None:
        for level in levels:
            result = asyncio.run(run_level(url, level, args.requests, label, params, headers))
            print(format_table([result]).splitlines()[-1] if results else format_table([result]))
            results.append(result)

    if args.url:
        measure(args.url, "service")
    else:
        serve = []
        for flag in ("teacher", "student", "onnx_dir", "device"):
            if getattr(args, flag):
                serve += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        for mode in [m.strip() for m in args.batching.split(",") if m.strip()]:
            if mode not in ("on", "off"):
                raise ConfigError(f"--batching takes on and/or off, got {mode!r}")
            batch = args.max_batch_size if mode == "on" else 1
            extra = ["--max-batch-size", str(batch), "--teacher-max-batch-size", str(batch)]
            extra += ["--max-wait-ms", str(args.max_wait_ms)]
            with spawn_service([*serve, *extra]) as url:
                measure(url, f"batching {mode}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time and measure teacher vs student in each backend across batch sizes",
        description="Same machine, same run: the volumetric teacher and the student in PyTorch "
        "(and autocast on CUDA), ONNX Runtime and TensorRT; per-image latency (median, p95), "
        "images/s, peak memory, FLOPs per image and the fraction of the measured matmul peak. "
        "--preset measures the official architectures with random weights.",
    )
    p.add_argument("--teacher", help="teacher: 'default', a checkpoint folder or an EG3D .pkl")
    p.add_argument("--student", help="a student checkpoint folder")
    p.add_argument(
        "--preset",
        choices=["ffhq512", "afhq512", "shapenet128", "tiny"],
        help="random-weight teacher and student of this architecture (instead of checkpoints)",
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


def cmd_bench(args: argparse.Namespace) -> None:
    import tempfile

    from .export import bench
    from .models.checkpoint import read_checkpoint_info
    from .models.load import init_generator
    from .models.student import student_from_teacher, student_preset

    try:
        sizes = sorted({int(v) for v in args.batch_sizes.split(",") if v.strip()})
    except ValueError:
        raise ConfigError(
            f"--batch-sizes takes comma-separated integers, got {args.batch_sizes!r}"
        ) from None
    if not sizes or sizes[0] < 1:
        raise ConfigError("--batch-sizes needs positive integers")
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError("--repeats must be at least 1 and --warmup at least 0")
    if args.plan_dir and not args.onnx_dir:
        raise ConfigError("--plan-dir needs --onnx-dir (the export the plan was built from)")
    device_name = args.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = str(_device(device_name))
    if args.threads:
        torch.set_num_threads(args.threads)

    teacher = student = None
    if args.preset:
        if args.teacher or args.student:
            raise ConfigError("give --preset or --teacher/--student, not both")
        teacher = init_generator(args.preset, seed=args.seed)
        student = student_from_teacher(teacher, student_preset(args.preset))
    else:
        if args.teacher:
            teacher = _load_teacher(args.teacher, "--teacher")
        if args.student:
            student = _load_student(args.student, "--student", command="bench")
    if teacher is None and student is None and args.onnx_dir is None:
        raise ConfigError("nothing to measure: give --preset, --teacher, --student or --onnx-dir")

    runners = []
    if teacher is not None:
        runners.append(bench.teacher_runner(teacher, device))
    student_flops = 0.0
    if student is not None:
        torch_runners = bench.student_torch_runners(student, device)
        student_flops = torch_runners[0].flops_per_image
        if device.startswith("cuda") and not args.no_cuda_graphs:
            torch_runners.append(bench.student_cuda_graph_runner(student, device))
        if args.compile:
            torch_runners.append(bench.student_compiled_runner(student, device))
        for runner in torch_runners:
            runner.flops_per_image = student_flops
        runners += torch_runners
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = args.onnx_dir
        if args.export_onnx:
            if student is None:
                raise ConfigError("--export-onnx needs a student (--student or --preset)")
            from .export.onnx import export_onnx

            print("exporting the student to ONNX for the ONNX Runtime rows ...")
            source = {"checkpoint": str(args.student or f"preset {args.preset}")}
            if args.student:
                source["weights_sha256"] = read_checkpoint_info(args.student).weights_sha256
            onnx_dir = Path(tmp) / "export"
            export_onnx(student, onnx_dir, source, fp16=device.startswith("cuda"))
        if onnx_dir is not None:
            runners.append(bench.student_onnx_runner(onnx_dir, device, student_flops))
        if args.plan_dir is not None:
            runners.append(
                bench.student_tensorrt_runner(args.plan_dir, onnx_dir, device, student_flops)
            )
        report = bench.run_bench(
            runners,
            sizes,
            device,
            args.warmup,
            args.repeats,
            args.teacher_max_batch,
            progress=lambda row: print(
                f"  {row.runner} batch {row.batch}: "
                + (row.error or f"{row.ms_per_image_median:.1f} ms/image"),
                flush=True,
            ),
        )
    print(bench.format_table(report))
    if args.json:
        bench.save_json(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        bench.plot_report(report, args.plot)
        print(f"wrote {args.plot}")


def _add_eval(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--student", required=True, help="a student checkpoint folder")
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


def cmd_eval(args: argparse.Namespace) -> None:
    from .models.checkpoint import read_checkpoint_info
    from .training.evaluation.evaluate import EvalConfig, evaluate

    device = _device(args.device)
    teacher = _load_teacher(args.teacher, "--teacher", device)
    student = _load_student(args.student, "--student", device, command="eval")
    from .models.student import DEFAULT_POSE_RANGE

    limits = read_checkpoint_info(args.student).metadata.get("pose_range") or DEFAULT_POSE_RANGE
    config = EvalConfig(
        samples=args.samples,
        seed=args.seed,
        truncation_psi=args.truncation,
        train_yaw_deg=float(limits["yaw_deg"]) / 1.5,
        train_pitch_deg=float(limits["pitch_deg"]) / 1.5,
        pair_offset_deg=args.pair_offset,
        batch_size=args.batch_size,
        fid_samples=args.fid_samples,
    )
    inception = None
    real = None
    if args.fid_real is not None:
        from .training.evaluation.inception import load_inception

        inception = load_inception(args.inception, device)  # fails before any rendering
        real = None if args.fid_real == "teacher" else args.fid_real
    lpips = None
    if not args.no_lpips:
        from .models.lpips import find_lpips_weights, load_lpips

        if args.lpips or find_lpips_weights() is not None:
            lpips = load_lpips(args.lpips, device)
        else:
            print("no LPIPS weights found (see README, Training): reporting PSNR and SSIM only")
    report = evaluate(teacher, student, args.out, config, lpips, inception, real, progress=True)
    for group, f in report["fidelity"].items():
        c = report["consistency"][group]
        print(
            f"{group}: PSNR {f['psnr_db']['mean']:.2f} dB, SSIM {f['ssim']['mean']:.3f}"
            + (f", LPIPS {f['lpips']['mean']:.3f}" if "lpips" in f else "")
            + f"; reprojection teacher {c['teacher_reprojection_error']['mean']:.4f}, "
            f"student {c['student_reprojection_error']['mean']:.4f}"
        )
    if "distribution" in report:
        d = report["distribution"]
        for name in ("student", "teacher"):
            if name in d:
                print(
                    f"{name} vs {d['reference']}: FID {d[name]['fid']:.3f}, "
                    f"KID x 10^3 {d[name]['kid']['mean'] * 1e3:.3f} ({d['samples']} samples)"
                )
    print(f"report: {args.out / 'report.md'}")


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a model's architecture and rendering settings as JSON")
    p.add_argument("model", help="'default', a checkpoint folder or an EG3D .pkl")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> None:
    from .models.load import load_model

    model = load_model(args.model)
    info = {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": model.config.to_dict(),  # type: ignore[operator]
    }
    print(json.dumps(info, indent=2))


def _load_teacher(spec: str, flag: str, device: torch.device | str = "cpu") -> Any:
    """A volumetric EG3D generator, or an error naming the flag and what was found instead."""
    from .models.eg3d.generator import TriPlaneGenerator
    from .models.load import load_model

    model = load_model(spec, device=device)
    if not isinstance(model, TriPlaneGenerator):
        raise ConfigError(
            f"{flag} {spec} is a {type(model).__name__}, not a volumetric EG3D generator; "
            "pass 'default', a teacher checkpoint folder or an EG3D .pkl"
        )
    return model


def _load_student(
    spec: str, flag: str, device: torch.device | str = "cpu", command: str = "this"
) -> Any:
    """A student, or an error naming the flag and what was found instead."""
    from .models.load import load_model
    from .models.student import Student

    model = load_model(spec, device=device)
    if not isinstance(model, Student):
        raise ConfigError(
            f"{flag} {spec} is a {type(model).__name__}; {command} takes a student checkpoint "
            "(the run directory's student/ folder)"
        )
    return model


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name}: CUDA is not available on this machine; use --device cpu"
        )
    return device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill3d",
        description="Distil EG3D into a fast convolutional generator, export it and serve it.",
    )
    parser.add_argument("--version", action="version", version=f"distill3d {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_init(sub)
    _add_convert(sub)
    _add_render(sub)
    _add_orbit(sub)
    _add_invert(sub)
    _add_info(sub)
    _add_train(sub)
    _add_cache(sub)
    _add_export(sub)
    _add_serve(sub)
    _add_loadtest(sub)
    _add_bench(sub)
    _add_eval(sub)
    _add_demo(sub)
    return parser


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the demo world: procedural scenes, a teacher trained on them, its student",
        description="Reproduce the shipped demo models from scratch with fixed seeds.",
    )
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    scenes_p = what.add_parser("scenes", help="render ground-truth scenes of seeds as a grid")
    scenes_p.add_argument("--seeds", default="0-7", help="e.g. 0-7 or 1,5,9")
    scenes_p.add_argument(
        "--yaws", default="-60,-30,0,30,60", help="degrees, comma-separated (--yaws=-30,30)"
    )
    scenes_p.add_argument("--pitch", type=float, default=10.0)
    scenes_p.add_argument("--resolution", type=int, default=128)
    scenes_p.add_argument("--out", required=True, type=Path, help="PNG to write")
    scenes_p.set_defaults(func=cmd_demo_scenes)

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

    data_p = what.add_parser(
        "dataset",
        help="single-view 'real' photos for stage 2, green skin more frequent at large yaw",
    )
    data_p.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    data_p.add_argument("--count", type=int, default=4000)
    data_p.add_argument("--seed", type=int, default=7)
    data_p.add_argument("--resolution", type=int, default=128)
    data_p.add_argument(
        "--green-at-large-yaw",
        type=float,
        default=0.6,
        help="P(green skin | |yaw| >= 30); small yaws keep the natural rate (0.2)",
    )
    data_p.add_argument("--quiet", action="store_true")
    data_p.set_defaults(func=cmd_demo_dataset)

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
    report_p.add_argument("--yaws", default="-50,-25,0,25,50", help="--yaws=-50,0,50")
    report_p.add_argument("--turntable-frames", type=int, default=36)
    report_p.add_argument("--speed-repeats", type=int, default=5)
    report_p.add_argument("--bias-samples", type=int, default=64)
    report_p.set_defaults(func=cmd_demo_report)
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
    from .models.load import load_model
    from .training.demo.inversion import InversionStudyConfig, inversion_study

    specs = args.model or ["student=default-student", "teacher=default"]
    models = {}
    for item in specs:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ConfigError(f"--model takes NAME=MODEL, got {item!r}")
        models[name] = load_model(spec)
    try:
        yaws = tuple(float(v) for v in args.novel_yaws.split(",") if v.strip())
    except ValueError:
        raise ConfigError(
            f"--novel-yaws takes comma-separated degrees, got {args.novel_yaws!r}"
        ) from None
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


def _int_list(text: str, flag: str) -> list[int]:
    """``0-7`` or ``1,5,9`` (or a mix) as integers."""
    values: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.strip().split("-", 1)
                values += list(range(int(lo), int(hi) + 1))
            elif part.strip():
                values.append(int(part))
    except ValueError:
        raise ConfigError(f"{flag} takes integers like 0-7 or 1,5,9, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} is empty")
    return values


def cmd_demo_scenes(args: argparse.Namespace) -> None:
    from .models.images import batch_to_uint8, save_image
    from .training.demo.scenes import build_scenes, render_scenes, scene_camera
    from .training.demo.scenes import sample_z as scene_z

    seeds = _int_list(args.seeds, "--seeds")
    try:
        yaws = [float(v) for v in args.yaws.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--yaws takes comma-separated degrees, got {args.yaws!r}") from None
    z = torch.cat([scene_z(seed, 1) for seed in seeds])
    scenes = build_scenes(z)
    rows = []
    for yaw in yaws:
        camera = scene_camera([yaw] * len(seeds), [args.pitch] * len(seeds))
        image = render_scenes(scenes, camera, args.resolution, supersample=2).image
        rows.append(torch.cat(list(image), dim=2))
    save_image(batch_to_uint8(torch.cat(rows, dim=1)[None])[0], args.out)
    print(f"wrote {args.out} ({len(yaws)} yaws x {len(seeds)} seeds)")


def cmd_demo_teacher(args: argparse.Namespace) -> None:
    from .training.demo.teacher import TEACHER_DIR, DemoTeacherConfig, train_demo_teacher

    config = DemoTeacherConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        preset=args.preset,
        feature_weight=args.feature_weight,
    )
    evaluation = train_demo_teacher(
        args.out, config, _device(args.device), not args.quiet, args.max_steps_this_run
    )
    if evaluation:
        print(
            f"step {evaluation['step']}: held-out PSNR vs ground truth "
            f"{evaluation['psnr_db']:.2f} dB, depth error {evaluation['depth_mae']:.4f}"
        )
    print(f"teacher checkpoint: {args.out / TEACHER_DIR}")


def cmd_demo_dataset(args: argparse.Namespace) -> None:
    from .training.demo.dataset import BiasedDatasetConfig, write_biased_dataset

    config = BiasedDatasetConfig(
        count=args.count,
        seed=args.seed,
        resolution=args.resolution,
        green_at_large_yaw=args.green_at_large_yaw,
    )
    info = write_biased_dataset(args.out, config, progress=not args.quiet)
    print(
        f"wrote {config.count} images to {args.out}: green skin in "
        f"{info['green_fraction_small_yaw']:.1%} of small-yaw and "
        f"{(info['green_fraction_large_yaw'] or 0):.1%} of large-yaw images"
    )


def cmd_demo_bias(args: argparse.Namespace) -> None:
    from .training.demo.dataset import green_shift

    teacher = _load_teacher(args.teacher, "--teacher")
    results = {}
    for spec in args.student:
        student = _load_student(spec, "--student", command="demo bias")
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
    from .training.demo.report import DemoReportConfig, demo_report

    teacher = _load_teacher(args.teacher, "--teacher")
    student = _load_student(args.student, "--student", command="demo report")
    bias = {}
    for item in args.bias:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ConfigError(f"--bias takes NAME=STUDENT, got {item!r}")
        bias[name] = _load_student(spec, "--bias", command="demo report")
    try:
        yaws = tuple(float(v) for v in args.yaws.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--yaws takes comma-separated degrees, got {args.yaws!r}") from None
    if args.scenes < 1 or not yaws or args.turntable_frames < 2 or args.speed_repeats < 1:
        raise ConfigError(
            "need --scenes >= 1, at least one yaw, --turntable-frames >= 2, --speed-repeats >= 1"
        )
    config = DemoReportConfig(
        scenes=args.scenes,
        yaws=yaws,
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
        f"{r['teacher']:.4f}, student {r['student']:.4f}"
    )
    print(f"report: {args.out / 'report.md'}")


def _export_error() -> type[Exception]:
    from .export.onnx import ExportError

    return ExportError


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError, _export_error()) as exc:
        print(f"distill3d {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
