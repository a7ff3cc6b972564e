"""GET and POST /mesh: the volumetric teacher's surface of one identity as a coloured mesh.

``models/mesh.py`` does the work (density grid, marching cubes, vertex radiance); this route
resolves the latent as /render does, runs the extraction in the teacher batcher's worker thread
(so it never runs beside a teacher batch: see ``RenderService.on_teacher_thread``), one request
at a time by default (``mesh_concurrency``; then 429), and caches the file like a render (the
key holds the teacher's hash, the latent, the grid resolution, the level and the format).

A student has no geometry, so ``backend=student`` is answered with the teacher's mesh and an
``X-Backend-Note`` saying so; the identity is the same, since z -> w is the teacher's mapping.
"""

from __future__ import annotations

import importlib.util
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ...models.errors import ConfigError
from ..dependencies import ReadyService, validate
from ..errors import RequestError
from ..render_service import RenderService
from ..schemas import DEFAULT_API_MESH_RESOLUTION, MeshRequest, parse_query
from .render import Produced, latent_key, query_openapi, response_key, serve_cached

MESH_MEDIA_TYPES = {"glb": "model/gltf-binary", "ply": "application/x-ply", "obj": "model/obj"}
BUSY = "a mesh is being extracted (mesh_concurrency); retry shortly"

router = APIRouter(tags=["geometry"])


async def mesh_query(request: Request) -> MeshRequest:
    """GET /mesh's query parameters as a MeshRequest (vectors comma-separated)."""
    return validate(MeshRequest, parse_query(dict(request.query_params)), "query")


def missing_extra() -> str | None:
    """Why meshes cannot be made here (the optional 'mesh' extra is not installed), or None."""
    from ...models.mesh import MESH_EXTRA

    for module in ("trimesh", "skimage"):
        if importlib.util.find_spec(module) is None:
            return f"mesh extraction needs {module} on the server: {MESH_EXTRA}"
    return None


def file_name(req: MeshRequest, resolution: int, key_digest: str) -> str:
    """A name that says which identity the file holds, for the browser's download."""
    stem = f"seed{req.seed}" if req.seed is not None else key_digest[:12]
    return f"distill3d-{stem}-{resolution}.{req.format}"


async def make_mesh(service: RenderService, req: MeshRequest, request: Request) -> Response:
    note = service.teacher(req.backend)
    missing = missing_extra()
    if missing is not None:
        return JSONResponse({"detail": missing}, 501)
    limit = service.settings.mesh_max_resolution
    resolution = req.resolution or min(DEFAULT_API_MESH_RESOLUTION, limit)
    if resolution > limit:
        raise RequestError(
            "resolution", f"resolution must be at most {limit} (mesh_max_resolution)"
        )
    service.latent(req)  # every latent error is a 422 before any work
    key = response_key(
        service,
        "volumetric",
        "mesh",
        latent=latent_key(req),
        resolution=resolution,
        level=req.level,
        format=req.format,
    )

    async def produce() -> Produced:
        from ...models.mesh import extract_mesh

        assert service.models is not None
        teacher = service.models.teacher_model

        def extract():  # in the teacher's thread: the latent's mapping, then the mesh
            import torch

            ws = torch.from_numpy(service.final_ws(req))[None]
            return extract_mesh(teacher, ws, resolution, req.level)

        with service.meshes.take(BUSY):
            try:
                mesh, seconds = await service.on_teacher_thread(extract)
            except ConfigError as exc:  # the density never crosses the level
                raise RequestError("level", str(exc)) from None

        def encode() -> bytes:
            data = mesh.to_trimesh().export(file_type=req.format)
            return data.encode() if isinstance(data, str) else bytes(data)

        data = await service.encode(encode, req.format)
        stored = {
            "X-Backend": "volumetric",
            "X-Vertices": str(len(mesh.vertices)),
            "X-Faces": str(len(mesh.faces)),
            "Content-Disposition": f'attachment; filename="{file_name(req, resolution, key.digest)}"',
        }
        return Produced(
            data, MESH_MEDIA_TYPES[req.format], stored, {"X-Model-Time-Ms": f"{seconds * 1e3:.1f}"}
        )

    per_request = {"X-Backend-Note": note} if note else {}
    return await serve_cached(service, request, key, produce, per_request)


@router.get("/mesh", response_class=Response, openapi_extra=query_openapi(MeshRequest))
async def mesh_get(
    service: ReadyService, req: Annotated[MeshRequest, Depends(mesh_query)], request: Request
) -> Response:
    """The teacher's surface of one identity as a coloured mesh file (glb, ply or obj): the
    same latent and edit fields as GET /render, resolution 16..256 cells a side (default 128),
    level (raw sigma, default 10). World units, y up, the face towards +z. A download
    (Content-Disposition); backend=student is answered by the teacher (X-Backend-Note)."""
    return await make_mesh(service, req, request)


@router.post("/mesh", response_class=Response)
async def mesh_post(service: ReadyService, req: MeshRequest, request: Request) -> Response:
    """The same as GET /mesh with a JSON body (for ws)."""
    return await make_mesh(service, req, request)
