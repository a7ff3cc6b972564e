"""``mesh``: one identity's surface from a volumetric teacher, as a coloured .ply / .obj / .glb
(see :mod:`distill3d.models.mesh`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..models.errors import ConfigError
from .common import SubParsers, add_plane_order, device, load_any
from .render import add_latent_flags, identity_request

if TYPE_CHECKING:
    import torch

    from ..models.eg3d.generator import TriPlaneGenerator
    from ..models.mesh import TeacherMesh


def add_mesh(sub: SubParsers) -> None:
    p = sub.add_parser(
        "mesh",
        help="extract a teacher's surface as a coloured mesh (.ply, .obj, .glb)",
        description="Samples the teacher's density on a grid over its tri-plane box, extracts "
        "the surface with marching cubes at a sigma level (EG3D's 10 by default) and colours "
        "the vertices from its radiance. World units, y up, the face towards +z. Needs the "
        "'mesh' extra (pip install 'distill3d[mesh]'). A student has no geometry: pass its "
        "teacher.",
    )
    p.add_argument("--model", default="default", help="a teacher: 'default', a checkpoint or .pkl")
    add_latent_flags(p)
    p.add_argument(
        "--resolution",
        type=int,
        default=256,
        help="grid cells a side, 16..512 (default 256; memory grows as its cube)",
    )
    p.add_argument(
        "--level", type=float, default=10.0, help="raw sigma level of the surface (default 10)"
    )
    p.add_argument(
        "--chunk", type=int, default=2**18, help="points decoded at once (bounds memory)"
    )
    p.add_argument("--noise-mode", choices=("const", "random", "none"), default="const")
    p.add_argument("--device", default="cpu")
    add_plane_order(p, "tri-plane axes of an official .pkl (our checkpoints record theirs)")
    p.add_argument("--out", type=Path, required=True, help="mesh file: .ply, .obj or .glb")
    p.add_argument(
        "--preview-out",
        type=Path,
        default=None,
        help="also write a picture from --yaw/--pitch: the teacher's render, the coloured mesh "
        "and the mesh shaded grey, side by side",
    )
    p.add_argument("--yaw", type=float, default=None, help="preview view, degrees")
    p.add_argument("--pitch", type=float, default=None, help="preview view, degrees")
    p.set_defaults(func=cmd_mesh)


def cmd_mesh(args: argparse.Namespace) -> None:
    from ..models.editing import truncate
    from ..models.identity import resolve_identity
    from ..models.mesh import (
        MESH_FORMATS,
        check_mesh_resolution,
        extract_mesh,
        require_teacher,
        save_mesh,
    )
    from ..models.render import w_avg_of

    # Everything a user can get wrong is checked before the model loads or a grid is allocated.
    check_mesh_resolution(args.resolution)
    if args.out.suffix.lower() not in MESH_FORMATS:
        raise ConfigError(f"--out must end in one of {', '.join(MESH_FORMATS)}, got {args.out}")
    dev = device(args.device)
    model = load_any(args.model, dev, args.plane_order)
    try:
        teacher = require_teacher(model)
    except ConfigError as exc:
        raise ConfigError(f"--model {args.model}: {exc}") from None
    identity = resolve_identity(teacher, identity_request(args), dev)
    ws = identity.ws
    if args.truncation != 1.0:
        ws = truncate(ws, w_avg_of(teacher), args.truncation, args.truncation_cutoff)
    start = time.perf_counter()
    mesh = extract_mesh(teacher, ws, args.resolution, args.level, args.chunk, args.noise_mode)
    elapsed = time.perf_counter() - start
    save_mesh(mesh, args.out)
    print(
        f"wrote {args.out} ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces, "
        f"{identity.description}, {args.resolution}^3 grid, level {args.level:g}) in "
        f"{elapsed:.2f} s"
    )
    if args.preview_out:
        _save_preview(teacher, ws, mesh, identity.yaw_deg, identity.pitch_deg, args)
        print(f"wrote {args.preview_out}")


def _save_preview(
    teacher: TriPlaneGenerator,
    ws: torch.Tensor,
    mesh: TeacherMesh,
    yaw: float,
    pitch: float,
    args: argparse.Namespace,
) -> None:
    """The teacher's image next to the mesh drawn from the same camera (colours, then grey)."""
    import numpy as np
    from PIL import Image

    from ..models.images import save_image, to_uint8
    from ..models.mesh import mesh_preview
    from ..models.render import RenderOptions, orbit_camera, render_ws

    camera = orbit_camera(teacher, yaw, pitch)
    image = to_uint8(
        render_ws(teacher, ws, camera, RenderOptions(noise_mode=args.noise_mode))["image"]
    )
    size = max(256, image.shape[0])
    image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
    coloured = mesh_preview(mesh, camera, size)
    grey = mesh_preview(mesh, camera, size, shaded=True)
    save_image(np.concatenate([image, coloured, grey], axis=1), args.preview_out)
