"""Drawing one identity: ``render`` (a still), ``orbit`` (a turntable video) and ``invert``
(fitting the latent of a photo, which render and orbit then take with ``--latent``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..models.errors import ConfigError
from .common import SubParsers, add_plane_order, device, load_any

if TYPE_CHECKING:
    import torch

    from ..models.identity import IdentityRequest
    from ..models.inversion import Inversion
    from ..models.orbit import OrbitPath


def add_latent_flags(p: argparse.ArgumentParser) -> None:
    """The identity flags render and orbit share (see :mod:`distill3d.models.identity`)."""
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


def identity_request(args: argparse.Namespace) -> IdentityRequest:
    """The identity flags as the library's request."""
    from ..models.identity import IdentityRequest

    return IdentityRequest(
        seed=args.seed,
        latent=args.latent,
        interpolate_seed=args.interpolate_seed,
        interpolate_t=args.interpolate_t,
        mix_seed=args.mix_seed,
        mix_cutoff=args.mix_cutoff,
        yaw=args.yaw,
        pitch=args.pitch,
    )


def add_render(sub: SubParsers) -> None:
    p = sub.add_parser(
        "render",
        help="render one image of a latent from a yaw/pitch",
        description="Render one image. --model takes 'default' (the embedded model), a distill3d "
        "checkpoint folder or an official EG3D .pkl.",
    )
    p.add_argument(
        "--model", default="default", help="'default', a checkpoint folder or an EG3D .pkl"
    )
    add_latent_flags(p)
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
    add_plane_order(p, "for .pkl models only (see `distill3d convert --help`)")
    p.add_argument("--out", type=Path, required=True, help="image file (.png, .jpg or .webp)")
    p.add_argument(
        "--depth-out",
        type=Path,
        default=None,
        help="also write the depth map: .png (16-bit, ray distance = value * 1e-4 world units, "
        "0 = no surface) or .npy (float32 ray distances)",
    )
    p.add_argument(
        "--raw-out", type=Path, default=None, help="also write the low-resolution raw image"
    )
    p.set_defaults(func=cmd_render)


def _save_render(out: dict[str, torch.Tensor], args: argparse.Namespace) -> None:
    """The image, and the raw image and depth map when asked for."""
    from ..models.depth import save_depth
    from ..models.images import save_image, to_uint8

    save_image(to_uint8(out["image"]), args.out)
    if args.raw_out:
        save_image(to_uint8(out["image_raw"]), args.raw_out)
    if not args.depth_out:
        return
    save_depth(out["image_depth"][0, 0], args.depth_out, out["image_alpha"][0, 0])


def cmd_render(args: argparse.Namespace) -> None:
    from ..models.identity import resolve_identity
    from ..models.render import RenderOptions, orbit_camera, render_ws
    from ..models.rng import generator_for
    from ..models.student import Student

    dev = device(args.device)
    generator = load_any(args.model, dev, args.plane_order)
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
    identity = resolve_identity(generator, identity_request(args), dev)
    yaw, pitch = identity.yaw_deg, identity.pitch_deg
    camera = orbit_camera(generator, yaw, pitch)
    start = time.perf_counter()
    out = render_ws(generator, identity.ws, camera, options, generator_for(args.render_seed, dev))
    elapsed = time.perf_counter() - start
    _save_render(out, args)
    size = out["image"].shape[-1]
    print(
        f"wrote {args.out} ({size}x{size}, {identity.description}, yaw {yaw:g}, "
        f"pitch {pitch:g}) in {elapsed:.2f} s"
    )


def add_orbit(sub: SubParsers) -> None:
    p = sub.add_parser(
        "orbit",
        help="render a turntable video of one identity (seed or fitted latent)",
        description="yaw = A sin(2 pi t), pitch = P + B cos(2 pi t) around the model's pivot, as "
        "the service's GET /orbit; the container follows --out's suffix (.mp4, .webm, .gif).",
    )
    p.add_argument("--model", default="default", help="'default', a checkpoint or an EG3D .pkl")
    add_latent_flags(p)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--yaw-amplitude", type=float, default=30.0, help="degrees either side")
    p.add_argument("--pitch-amplitude", type=float, default=5.0, help="degrees up and down")
    p.add_argument("--batch-size", type=int, default=8, help="frames rendered at once")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True, help="video file: .mp4, .webm or .gif")
    p.set_defaults(func=cmd_orbit, yaw=None, pitch=None)


def _video_format(out: Path) -> str:
    """The container of ``--out`` from its suffix."""
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("mp4", "webm", "gif"):
        raise ConfigError(f"--out {out}: the suffix must be .mp4, .webm or .gif")
    return fmt


def _check_orbit_flags(args: argparse.Namespace) -> None:
    """Refuse flag values no turntable can be made of, before any model is loaded."""
    if args.frames < 2 or args.fps < 1 or args.batch_size < 1:
        raise ConfigError("need --frames >= 2, --fps >= 1 and --batch-size >= 1")
    if not 0 <= args.pitch_amplitude < 90:
        raise ConfigError("--pitch-amplitude must be in [0, 90) degrees")


def orbit_path(args: argparse.Namespace, pitch_center: float) -> OrbitPath:
    """The turntable the orbit flags ask for, around the identity's own pitch."""
    from ..models.orbit import OrbitPath

    return OrbitPath(args.frames, args.yaw_amplitude, args.pitch_amplitude, pitch_center)


def cmd_orbit(args: argparse.Namespace) -> None:
    from ..models.identity import resolve_identity
    from ..models.orbit import render_orbit
    from ..models.render import RenderOptions
    from ..models.video import encode_video

    fmt = _video_format(args.out)
    _check_orbit_flags(args)
    dev = device(args.device)
    generator = load_any(args.model, dev)
    identity = resolve_identity(generator, identity_request(args), dev)
    options = RenderOptions(
        truncation_psi=args.truncation, truncation_cutoff=args.truncation_cutoff
    )
    start = time.perf_counter()
    path = orbit_path(args, identity.pitch_deg)
    frames = render_orbit(generator, identity.ws, path, options, args.batch_size, progress=True)
    video = encode_video(frames, args.fps, fmt)  # type: ignore[arg-type]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(video)
    print(
        f"wrote {args.out} ({args.frames} frames, {identity.description}) in "
        f"{time.perf_counter() - start:.1f} s"
    )


def add_invert(sub: SubParsers) -> None:
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


def _known_camera(text: str | None) -> tuple[float, float] | None:
    """``--camera yaw,pitch`` in degrees, or None (estimate the view)."""
    if text is None:
        return None
    try:
        yaw, pitch = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--camera takes yaw,pitch in degrees, got {text!r}") from None
    return yaw, pitch


def _write_fit(
    args: argparse.Namespace, model: Any, target: torch.Tensor, result: Inversion
) -> None:
    """target.png, fit.png, comparison.png, the tuned model if any, and latent.json."""
    from ..models.checkpoint import save_checkpoint
    from ..models.images import save_image, to_uint8
    from ..models.inversion import prepare_target
    from ..models.latents import save_latent

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


def cmd_invert(args: argparse.Namespace) -> None:
    from ..models.images import read_image
    from ..models.inversion import InversionConfig, invert

    camera = _known_camera(args.camera)
    config = InversionConfig(
        steps=args.steps, lr=args.lr, space=args.space, w_reg=args.w_reg, tune_steps=args.tune_steps
    )
    dev = device(args.device)
    target = read_image(args.image)
    model = load_any(args.model, dev)
    lpips = None
    if args.lpips is not None:
        from ..models.lpips import load_lpips

        lpips = load_lpips(args.lpips, dev)
    result = invert(model, target, config, camera, lpips, progress=not args.quiet)
    _write_fit(args, model, target, result)
    how = "estimated" if result.camera_estimated else "given"
    tuned = "" if result.tuned_psnr_db is None else f", after tuning {result.tuned_psnr_db:.2f} dB"
    print(
        f"fitted {args.image} in {result.seconds:.1f} s ({config.steps} steps, {config.space}): "
        f"PSNR {result.psnr_db:.2f} dB{tuned}; camera ({how}) yaw {result.yaw_deg:.1f}, "
        f"pitch {result.pitch_deg:.1f}"
    )
    print(f"wrote {args.out / 'latent.json'} and {args.out / 'comparison.png'}")
