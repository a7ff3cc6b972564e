"""A teacher's geometry as a coloured triangle mesh: density on a grid, marching cubes, radiance.

The volumetric teacher is a density field plus a radiance field over the box its tri-planes span
(``rendering.box_warp`` world units a side, centred on the world origin), so its shape can be
taken out of it and used elsewhere (a 3D viewer, a printer, a game engine):

1. the tri-planes of one w are synthesised once, then the decoder's raw density ``sigma`` is
   evaluated at the centres of a ``resolution``^3 grid of cells filling the box, a slab of
   cells at a time so memory stays bounded at any resolution;
2. marching cubes (scikit-image) extracts the surface where sigma crosses ``level``;
3. each vertex is coloured the way the renderer colours a pixel: a short ray arriving along
   the inward normal (from 3% of the box outside the surface to 6% inside, 24 samples) is
   composited with the renderer's own ray marcher, and the weighted mean of the radiance is
   kept. The radiance is the first three decoded feature channels, which the renderer
   composites into ``image_raw`` (in [0, 1] per sample, then ``2 x - 1`` in the image);
   it is converted to [0, 255] with the images' own rounding. Reading the radiance at the
   vertex alone would be wrong: the level sits where opacity only begins, and the radiance
   there is what the renders never show (on the demo world it is twice as far from the truth);
4. trimesh writes the mesh as .ply, .obj or .glb.

Vertices are in the world frame the cameras orbit (``models/camera.py``): world units, y up,
faces looking towards +z, the same axes glTF uses, so a .glb opens upright and facing the viewer.

The level: EG3D's shape extraction (``gen_samples.py --shapes``) saves the raw sigma grid and
meshes it at level 10 (its README's ChimeraX instructions). The renderer turns sigma into a
density ``softplus(sigma - 1)`` per world unit, so level 10 is a density of 9: over one of the
demo teacher's coarse ray steps (1.3 / 23 = 0.057 units) that is an opacity of 0.40, about
where a ray's weight rises to its peak: the surface the renders show. The shipped demo teacher's
sigma jumps from below -100 in empty space to 70 and more inside a figure within a cell or two,
so any level between 0 and 50 moves its surface by less than a grid cell; 10 keeps EG3D's
convention, which also suits converted official checkpoints.

A student has no geometry (a CNN that draws images, not a field): :func:`require_teacher`
refuses it with an error pointing at its teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

from .camera import Camera
from .eg3d.generator import TriPlaneGenerator
from .eg3d.renderer import march_rays, sample_from_planes
from .errors import ConfigError
from .render import check_ws
from .stylegan2 import NoiseMode

if TYPE_CHECKING:
    import trimesh

MIN_MESH_RESOLUTION = 16  # coarser grids lose the figure's features altogether
MAX_MESH_RESOLUTION = (
    512  # a 512^3 float32 grid is 0.5 GiB, marching cubes needs about as much again
)
DEFAULT_MESH_RESOLUTION = 256
DEFAULT_SIGMA_LEVEL = 10.0  # EG3D's shape-extraction level on the raw decoder sigma (see above)
# The colour ray of a vertex: from this fraction of the box outside the surface to this inside.
COLOUR_RAY = (0.03, 0.06)
COLOUR_SAMPLES = 24
DEFAULT_CHUNK_POINTS = 2**18  # points decoded at once: ~50 MB of features for the demo teacher
MESH_FORMATS = (".ply", ".obj", ".glb")
MESH_EXTRA = "pip install 'distill3d[mesh]'"  # scikit-image and trimesh


@dataclass(frozen=True)
class TeacherMesh:
    """A triangle mesh in world units with one RGB colour per vertex.

    ``vertices`` [V, 3] float32 (x, y, z world units), ``faces`` [F, 3] int64 (counter-clockwise
    seen from outside, so normals point out of the figure), ``colours`` [V, 3] uint8.
    ``level`` and ``resolution`` record how it was extracted.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colours: np.ndarray
    level: float
    resolution: int

    def to_trimesh(self) -> trimesh.Trimesh:
        """The mesh as a ``trimesh.Trimesh`` (unprocessed: vertex order and count are kept)."""
        trimesh = _import("trimesh")
        alpha = np.full((len(self.colours), 1), 255, dtype=np.uint8)
        return trimesh.Trimesh(
            vertices=self.vertices,
            faces=self.faces,
            vertex_colors=np.concatenate([self.colours, alpha], axis=1),
            process=False,
        )


def require_teacher(model: object) -> TriPlaneGenerator:
    """``model`` if it is a volumetric teacher; a student (or anything else) is refused, because
    only the teacher holds a density field to take a surface from."""
    if isinstance(model, TriPlaneGenerator):
        return model
    from .student import Student

    if isinstance(model, Student):
        raise ConfigError(
            "a student has no geometry: it draws images with convolutions and holds no density "
            "field; extract the mesh from its teacher (the volumetric EG3D model it was "
            "distilled from, e.g. 'default' for 'default-student')"
        )
    raise ConfigError(
        f"cannot extract a mesh from a {type(model).__name__}; pass a volumetric EG3D teacher"
    )


def check_mesh_resolution(resolution: int) -> int:
    """The grid resolution if it is an integer in [MIN, MAX], else a ConfigError; called before
    anything is allocated, so a typo cannot ask for a terabyte."""
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise ConfigError(f"mesh resolution must be an integer, got {resolution!r}")
    if not MIN_MESH_RESOLUTION <= resolution <= MAX_MESH_RESOLUTION:
        raise ConfigError(
            f"mesh resolution must be between {MIN_MESH_RESOLUTION} and {MAX_MESH_RESOLUTION} "
            f"cells a side, got {resolution}"
        )
    return resolution


def cell_centres(resolution: int, box: float) -> np.ndarray:
    """World coordinates of the grid's cell centres along one axis: [resolution] float32.

    Centres rather than corners keep every sample strictly inside the box, where the tri-planes
    are defined (outside, ``grid_sample`` reads zero-padded features).
    """
    return ((np.arange(resolution, dtype=np.float64) + 0.5) * (box / resolution) - box / 2).astype(
        np.float32
    )


@torch.no_grad()
def teacher_planes(
    teacher: TriPlaneGenerator, ws: torch.Tensor, noise_mode: NoiseMode = "const"
) -> torch.Tensor:
    """The tri-planes [1, 3, C, H, W] of one latent (ws [1, num_ws, w_dim] or w [1, w_dim]).

    ``const`` noise is the default, as for renders, so the mesh is that of the rendered figure.
    """
    device = next(teacher.parameters()).device
    ws = check_ws(teacher, ws.to(device))
    if ws.shape[0] != 1:
        raise ValueError(f"one latent at a time: got a batch of {ws.shape[0]}")
    return teacher.synthesize_planes(ws, noise_mode=noise_mode)


@torch.no_grad()
def decode_points(
    teacher: TriPlaneGenerator,
    planes: torch.Tensor,
    points: torch.Tensor,
    chunk_points: int = DEFAULT_CHUNK_POINTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Radiance features [M, C] (in [0, 1]) and raw sigma [M] at world points [M, 3], decoded
    ``chunk_points`` at a time, exactly as the renderer decodes its ray samples."""
    box = teacher.config.rendering.box_warp
    order = teacher.config.plane_order
    features, sigmas = [], []
    for start in range(0, len(points), chunk_points):
        chunk = points[start : start + chunk_points].to(planes.device, torch.float32)
        sampled = sample_from_planes(planes, chunk[None], box, order)
        rgb, sigma = teacher.decoder(sampled)
        features.append(rgb[0].cpu())
        sigmas.append(sigma[0, :, 0].cpu())
    if not features:
        channels = teacher.config.feature_channels
        return torch.zeros(0, channels), torch.zeros(0)
    return torch.cat(features), torch.cat(sigmas)


@torch.no_grad()
def density_grid(
    teacher: TriPlaneGenerator,
    planes: torch.Tensor,
    resolution: int,
    chunk_points: int = DEFAULT_CHUNK_POINTS,
) -> np.ndarray:
    """The raw sigma at the cell centres of a ``resolution``^3 grid filling the box: float32
    [x, y, z] (axis 0 is world x). Evaluated in slabs of x so at most ``chunk_points`` points
    (and never the whole grid's coordinates) are in flight."""
    resolution = check_mesh_resolution(resolution)
    axis = torch.from_numpy(cell_centres(resolution, teacher.config.rendering.box_warp))
    grid = np.empty((resolution, resolution, resolution), dtype=np.float32)
    y, z = torch.meshgrid(axis, axis, indexing="ij")
    plane_yz = torch.stack([y.reshape(-1), z.reshape(-1)], dim=-1)  # [R*R, 2]
    slab = max(1, chunk_points // (resolution * resolution))
    for i0 in range(0, resolution, slab):
        xs = axis[i0 : i0 + slab]
        x = xs.repeat_interleave(len(plane_yz))[:, None]
        points = torch.cat([x, plane_yz.repeat(len(xs), 1)], dim=1)
        _, sigma = decode_points(teacher, planes, points, chunk_points)
        grid[i0 : i0 + len(xs)] = sigma.reshape(len(xs), resolution, resolution).numpy()
    return grid


def surface_from_grid(
    grid: np.ndarray, box: float, level: float = DEFAULT_SIGMA_LEVEL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marching cubes on a density grid from :func:`density_grid`: vertices [V, 3] in world
    units, faces [F, 3] oriented outwards (density rises inwards) and unit outward normals
    [V, 3] (from the field's gradient).

    The grid is padded with one cell below ``level`` on every side, so a figure cut by the box
    still gives a closed surface. A ConfigError says so when the field never crosses ``level``.
    """
    measure = _import("skimage.measure")
    lo, hi = float(grid.min()), float(grid.max())
    if not lo < level < hi:
        raise ConfigError(
            f"the teacher's density never crosses level {level:g} inside its box (sigma ranges "
            f"from {lo:.3g} to {hi:.3g}): there is no surface there; pass a level in that range"
        )
    padded = np.pad(grid, 1, mode="constant", constant_values=min(lo, level) - 1.0)
    step = box / grid.shape[0]
    vertices, faces, normals, _ = measure.marching_cubes(
        padded, level=level, spacing=(step, step, step), gradient_direction="descent"
    )
    # Padded index p is cell p - 1, whose centre is at -box/2 + (p - 1/2) step.
    vertices = vertices - step / 2 - box / 2
    # scikit-image winds triangles clockwise seen along the normals it returns; reversing each
    # triangle makes them counter-clockwise from outside, as .ply/.obj/.glb readers expect.
    return vertices.astype(np.float32), faces[:, ::-1].astype(np.int64), normals.astype(np.float32)


def radiance_to_uint8(features: torch.Tensor) -> np.ndarray:
    """RGB [M, 3] uint8 from decoded features [M, C]: channels 0..2 are the radiance the
    renderer composites (``image_raw = 2 * composite - 1``), then the images' own conversion
    ``(x * 127.5 + 128)`` clamped and truncated (``models/images.py``)."""
    image_value = features[:, :3].float() * 2 - 1
    return (image_value * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()


@torch.no_grad()
def vertex_radiance(
    teacher: TriPlaneGenerator,
    planes: torch.Tensor,
    vertices: np.ndarray,
    normals: np.ndarray,
    chunk_points: int = DEFAULT_CHUNK_POINTS,
) -> torch.Tensor:
    """Radiance features [V, C] in [0, 1] seen by a ray arriving at each vertex along its
    inward normal (``COLOUR_RAY``), composited as the renderer does (``march_rays``) and
    normalised by the ray's total weight, so the colour is the surface's, not the background's."""
    box = teacher.config.rendering.box_warp
    t = torch.linspace(-COLOUR_RAY[0] * box, COLOUR_RAY[1] * box, COLOUR_SAMPLES)
    per_chunk = max(1, chunk_points // COLOUR_SAMPLES)
    colours = []
    for start in range(0, len(vertices), per_chunk):
        v = torch.from_numpy(vertices[start : start + per_chunk])
        n = torch.from_numpy(normals[start : start + per_chunk])
        points = v[:, None] - t[None, :, None] * n[:, None]  # [V, S, 3], outside to inside
        features, sigma = decode_points(teacher, planes, points.reshape(-1, 3), chunk_points)
        features = features.reshape(1, len(v), COLOUR_SAMPLES, -1)
        depths = t.expand(len(v), COLOUR_SAMPLES).reshape(1, len(v), COLOUR_SAMPLES, 1)
        _, _, weights = march_rays(
            features, sigma.reshape(1, len(v), COLOUR_SAMPLES, 1), depths, white_back=False
        )
        mid = (features[:, :, :-1] + features[:, :, 1:]) / 2  # the marcher's own midpoints
        total = weights.sum(2).clamp_min(1e-8)
        colours.append(((weights * mid).sum(2) / total)[0])
    if not colours:
        return torch.zeros(0, teacher.config.feature_channels)
    return torch.cat(colours)


@torch.no_grad()
def extract_mesh(
    model: object,
    ws: torch.Tensor,
    resolution: int = DEFAULT_MESH_RESOLUTION,
    level: float = DEFAULT_SIGMA_LEVEL,
    chunk_points: int = DEFAULT_CHUNK_POINTS,
    noise_mode: NoiseMode = "const",
) -> TeacherMesh:
    """The coloured surface of one latent's figure (ws [1, num_ws, w_dim] or w [1, w_dim]).

    ``resolution`` cells a side over the teacher's box (validated first), ``level`` on the raw
    sigma (module docstring). ``model`` must be a teacher (:func:`require_teacher`).
    """
    teacher = require_teacher(model)
    resolution = check_mesh_resolution(resolution)
    if chunk_points < 1:
        raise ConfigError(f"chunk_points must be positive, got {chunk_points}")
    planes = teacher_planes(teacher, ws, noise_mode)
    grid = density_grid(teacher, planes, resolution, chunk_points)
    vertices, faces, normals = surface_from_grid(grid, teacher.config.rendering.box_warp, level)
    features = vertex_radiance(teacher, planes, vertices, normals, chunk_points)
    return TeacherMesh(vertices, faces, radiance_to_uint8(features), float(level), resolution)


def mesh_preview(
    mesh: TeacherMesh,
    camera: Camera,
    size: int = 256,
    shaded: bool = False,
    samples_per_pixel: int = 16,
) -> np.ndarray:
    """A picture of the mesh from ``camera``: uint8 [size, size, 3] on black.

    A point-splatting rasteriser, enough to show the surface without an OpenGL context: points
    spread over the triangles by area (``samples_per_pixel`` per pixel of image, whatever the
    mesh's size on screen) take their colour from the vertices (barycentric) and the nearest one
    in each pixel wins (a z-buffer). ``shaded`` draws it in grey under a light from the upper
    right front instead, to show the geometry alone.
    """
    trimesh = _import("trimesh")
    surface = mesh.to_trimesh()
    points, face = trimesh.sample.sample_surface(surface, samples_per_pixel * size * size, seed=0)
    points = np.asarray(points, dtype=np.float32)
    corners = surface.triangles[face]
    if shaded:
        light = np.array([0.45, 0.6, 0.75]) / np.linalg.norm([0.45, 0.6, 0.75])
        lambert = np.clip(surface.face_normals[face] @ light, 0, None)
        colour = np.repeat((40 + 200 * lambert)[:, None], 3, axis=1)
    else:
        weights = trimesh.triangles.points_to_barycentric(corners, points)
        colour = np.einsum("pk,pkc->pc", weights, mesh.colours[surface.faces[face]].astype(float))
    uvz = camera.project(torch.from_numpy(points)[None])[0].numpy()
    col = np.floor(uvz[:, 0] * size).astype(np.int64)
    row = np.floor(uvz[:, 1] * size).astype(np.int64)
    keep = (col >= 0) & (col < size) & (row >= 0) & (row < size) & (uvz[:, 2] > 0)
    pixel, depth, colour = row[keep] * size + col[keep], uvz[keep, 2], colour[keep]
    order = np.lexsort((depth, pixel))  # by pixel, nearest first
    pixel, colour = pixel[order], colour[order]
    first = np.ones(len(pixel), dtype=bool)
    first[1:] = pixel[1:] != pixel[:-1]
    image = np.zeros((size * size, 3), dtype=np.float64)
    image[pixel[first]] = colour[first]
    filled = np.zeros(size * size, dtype=bool)
    filled[pixel[first]] = True
    image, filled = image.reshape(size, size, 3), filled.reshape(size, size)
    # A pixel the samples happened to miss, surrounded by surface, takes its neighbours' mean.
    total, count = np.zeros_like(image), np.zeros((size, size))
    for dr, dc in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
        total += np.roll(image * filled[..., None], (dr, dc), axis=(0, 1))
        count += np.roll(filled, (dr, dc), axis=(0, 1))
    hole = ~filled & (count >= 6)
    image[hole] = total[hole] / count[hole, None]
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def save_mesh(mesh: TeacherMesh, path: str | Path) -> Path:
    """Write ``mesh`` as .ply (binary, vertex colours), .obj (colours after each vertex) or .glb
    (binary glTF, COLOR_0); the format follows the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise ConfigError(f"mesh file must end in one of {', '.join(MESH_FORMATS)}, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.to_trimesh().export(path, file_type=suffix.lstrip("."))
    return path


def _import(module: str) -> ModuleType:
    """An optional dependency of the ``mesh`` extra, or an ImportError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"mesh extraction needs {module.split('.')[0]} ({MESH_EXTRA}): {exc}"
        ) from exc
