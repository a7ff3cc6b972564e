"""POST and GET /render: one image of one identity from one camera; GET and POST /depth: the
teacher's depth map of the same; and the render cache's HTTP side, shared with /orbit and /mesh.

Caching. Every response of these routes is decided by its request and the loaded models, so it
has a key (``service/cache.py``'s ``render_key``) built from the model that renders (role,
backend, weights hash), the mapping that turns seeds into latents, the latent fields and edits,
the resolved camera, the format and quality. The key's digest is the ETag, known before any
work: a GET with a matching ``If-None-Match`` is answered 304 at once, and a repeat of a
request served from memory (``X-Cache: hit``) byte for byte; neither runs a model. POST answers
use and fill the same memory but carry no validators (HTTP caches do not store POST answers). A
teacher standing in after a student error produced bytes the key does not name: they are sent
with ``Cache-Control: no-store`` and no ETag, and not stored.

``Cache-Control`` is ``public, max-age=<render_cache_max_age_s>`` (``private`` when an API key
is set, so that a shared cache never hands an authorised render to anyone else), not
``immutable``: the key holds the model's hash but the URL does not, so after a model is replaced
the same URL means other pixels; a bounded max-age makes caches revalidate, and the ETag then
turns an unchanged model's revalidation into a 304.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, get_args

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel

from ...models.errors import ConfigError
from ..cache import CachedResponse, CacheKey, not_modified, render_key
from ..dependencies import ReadyService, RenderQuery, validate
from ..errors import RequestError
from ..render_service import RenderService, label
from ..schemas import (
    LIST_FIELDS,
    NESTED_FIELDS,
    DepthRequest,
    LatentFields,
    RenderRequest,
    parse_query,
)

IMAGE_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
DEPTH_MEDIA_TYPES = {"png16": "image/png", "npy": "application/x-npy"}
LATENT_KEY_FIELDS = frozenset({"seed", "z", "w", "ws", "mix", "interpolate", "conditioning_camera"})

router = APIRouter(tags=["render"])


def encode_image(image: np.ndarray, fmt: str, quality: int) -> bytes:
    """uint8 [H, W, 3] -> PNG (fast compression), JPEG or WebP bytes."""
    buffer = io.BytesIO()
    pil = Image.fromarray(image)
    if fmt == "png":
        pil.save(buffer, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        pil.save(buffer, format="JPEG", quality=quality)
    else:
        pil.save(buffer, format="WEBP", quality=quality)
    return buffer.getvalue()


def query_parameters(model: type[BaseModel], prefix: str = "") -> list[dict[str, Any]]:
    """OpenAPI query parameters of a GET route whose query is parsed by ``parse_query``.

    Those routes read the query themselves (a vector is one comma-separated parameter, nested
    edits are flattened to ``mix_seed`` ...), so FastAPI cannot derive them; without this the
    schema would show no parameters and clients and fuzzers would not see the limits (a mesh's
    resolution range above all). ``ws`` is left out: it is too long for a URL (POST it).
    """
    params: list[dict[str, Any]] = []
    properties = model.model_json_schema()["properties"]
    for name, info in model.model_fields.items():
        if name == "ws":
            continue
        if name in NESTED_FIELDS:
            nested = next(a for a in get_args(info.annotation) if isinstance(a, type))
            params.extend(query_parameters(nested, f"{prefix}{name}_"))
            continue
        prop = dict(properties[name])
        branches = [b for b in prop.pop("anyOf", [prop]) if b.get("type") != "null"]
        schema = dict(branches[0]) if len(branches) == 1 else {"anyOf": branches}
        for extra in ("title", "description", "default"):
            schema.pop(extra, None)
            if extra == "default" and prop.get("default") is not None:
                schema["default"] = prop["default"]
        description = prop.get("description", "")
        if name in LIST_FIELDS:
            schema = {"type": "string", "pattern": r"^[^,]+(,[^,]+)*$"}
            description = f"comma-separated numbers: {description}"
        params.append(
            {
                "name": prefix + name,
                "in": "query",
                "required": info.is_required() and not prefix,
                "schema": schema,
                "description": description,
            }
        )
    return params


def query_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """A GET route's ``openapi_extra`` declaring ``model``'s fields as query parameters."""
    return {"parameters": query_parameters(model)}


# -- the cache's HTTP side ----------------------------------------------------------------------


def latent_key(req: LatentFields) -> dict[str, Any]:
    """The fields that decide the identity: the latent, its edits, its conditioning camera and
    the truncation as resolved (an omitted truncation and its default give one key)."""
    fields = req.model_dump(include=set(LATENT_KEY_FIELDS))
    fields["psi"] = req.psi()
    return fields


def response_key(service: RenderService, role: str, kind: str, **fields: Any) -> CacheKey:
    """The key of one response of ``kind`` (image, depth, video, mesh) rendered by ``role``."""
    return render_key(
        {"model": service.model_id(role), "mapping": service.mapping_id(), "kind": kind, **fields}
    )


@dataclass
class Produced:
    """A freshly made response: its bytes, the headers that describe them (stored with them),
    the headers of this one making (timings: not stored) and whether the key names it."""

    body: bytes
    media_type: str
    stored: dict[str, str] = field(default_factory=dict)
    timings: dict[str, str] = field(default_factory=dict)
    cacheable: bool = True


def validator_headers(service: RenderService, key: CacheKey) -> dict[str, str]:
    """ETag and Cache-Control of a cacheable GET answer (module docstring)."""
    scope = "private" if service.settings.api_key is not None else "public"
    max_age = service.settings.render_cache_max_age_s
    return {"ETag": key.etag, "Cache-Control": f"{scope}, max-age={max_age}"}


async def serve_cached(
    service: RenderService,
    request: Request,
    key: CacheKey,
    produce: Callable[[], Awaitable[Produced]],
    per_request: dict[str, str] | None = None,
) -> Response:
    """304, a stored response, or ``produce()``'s (stored when cacheable).

    ``per_request`` headers depend on the request rather than the bytes (why the teacher
    answered), so they are sent on every answer and never stored.
    """
    per_request = per_request or {}
    is_get = request.method == "GET"
    validators = validator_headers(service, key) if is_get else {}
    if is_get and not_modified(request.headers.get("if-none-match"), key.etag):
        return Response(status_code=304, headers={**validators, **per_request})
    cache = service.cache
    hit = cache.get(key)
    if hit is not None:
        headers = {**dict(hit.headers), **per_request, **validators, "X-Cache": "hit"}
        return Response(hit.body, media_type=hit.media_type, headers=headers)
    made = await produce()
    headers = {**made.stored, **made.timings, **per_request}
    if not made.cacheable:
        headers["Cache-Control"] = "no-store"
    else:
        headers.update(validators)
        if cache.active:
            cache.put(key, CachedResponse.of(made.body, made.media_type, made.stored))
            headers["X-Cache"] = "miss"
    return Response(made.body, media_type=made.media_type, headers=headers)


def fallback_header(reason: str | None) -> dict[str, str]:
    return {"X-Fallback": reason.split(":")[0]} if reason else {}


# -- /render ------------------------------------------------------------------------------------


async def render_image(service: RenderService, req: RenderRequest, request: Request) -> Response:
    """The image of ``req``, with the headers that say how it was rendered."""
    assert service.models is not None
    identity = service.latent(req)
    cond = service.conditioning(req)
    camera = service.camera(req)
    role, reason = service.choose(req.backend, [camera], identity.per_layer)
    key = response_key(
        service,
        role,
        "image",
        latent=latent_key(req),
        camera=label(camera)[0],
        size=service.infos[role].img_resolution,
        format=req.format,
        quality=None if req.format == "png" else req.quality,
    )

    async def produce() -> Produced:
        if reason:
            service.metrics.fallbacks.labels(reason).inc()
        item = service.item(camera, cond, identity)
        (result,), failed = await service.render([item], role, request.is_disconnected)
        data = await service.encode(
            lambda: encode_image(result.image, req.format, req.quality), req.format
        )
        timings = {
            "X-Model-Time-Ms": f"{result.model_s * 1000:.1f}",
            "X-Queue-Wait-Ms": f"{result.queue_s * 1000:.1f}",
            "X-Batch-Size": str(result.batch_size),
            **fallback_header(failed),
        }
        stored = {"X-Backend": result.backend}
        return Produced(data, IMAGE_MEDIA_TYPES[req.format], stored, timings, failed is None)

    return await serve_cached(service, request, key, produce, fallback_header(reason))


@router.post("/render", response_class=Response)
async def render_post(service: ReadyService, req: RenderRequest, request: Request) -> Response:
    """Render one image. Body: a latent (seed, z or w), a camera (yaw/pitch[/radius/fov_deg]
    or a 25-number label), truncation, backend, format."""
    return await render_image(service, req, request)


@router.get("/render", response_class=Response, openapi_extra=query_openapi(RenderRequest))
async def render_get(service: ReadyService, req: RenderQuery, request: Request) -> Response:
    """The same as POST /render with the fields as query parameters (vectors
    comma-separated), so a render is a shareable URL. Strong ETag, Cache-Control and 304 on
    If-None-Match; repeats are answered from memory (X-Cache: hit)."""
    return await render_image(service, req, request)


# -- /depth -------------------------------------------------------------------------------------


async def depth_query(request: Request) -> DepthRequest:
    """GET /depth's query parameters as a DepthRequest (vectors comma-separated)."""
    return validate(DepthRequest, parse_query(dict(request.query_params)), "query")


def encode_depth(depth: np.ndarray, alpha: np.ndarray, fmt: str) -> bytes:
    """models/depth.py's encodings: the 16-bit PNG of its fixed map, or float32 .npy."""
    from ...models.depth import encode_depth_png

    if fmt == "png16":
        try:
            return encode_depth_png(depth, alpha)
        except ConfigError as exc:  # a surface beyond the 16-bit range
            raise RequestError("format", f"{exc} (format=npy)") from None
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(depth, np.float32))
    return buffer.getvalue()


def depth_headers(fmt: str) -> dict[str, str]:
    """The encoding, stated on the answer so a client needs no documentation to decode it:
    distance = value x scale, in world units along each pixel's ray from the camera centre."""
    from ...models.depth import DEPTH_PNG_UNIT, NO_SURFACE

    headers = {"X-Depth-Quantity": "ray-distance", "X-Depth-Unit": "world"}
    if fmt == "png16":
        headers.update(
            {"X-Depth-Scale": f"{DEPTH_PNG_UNIT:g}", "X-Depth-No-Surface": str(NO_SURFACE)}
        )
    else:
        headers["X-Depth-Scale"] = "1"
    return headers


async def render_depth(service: RenderService, req: DepthRequest, request: Request) -> Response:
    """The teacher's depth map of ``req`` (a student has none: the teacher answers, and says so)."""
    note = service.teacher(req.backend)
    identity = service.latent(req)
    camera = service.camera(req)
    service.choose("volumetric", [camera], identity.per_layer)  # the teacher's pose range
    key = response_key(
        service,
        "volumetric",
        "depth",
        latent=latent_key(req),
        camera=label(camera)[0],
        format=req.format,
    )
    extension = "png" if req.format == "png16" else "npy"
    disposition = "inline" if req.format == "png16" else "attachment"

    async def produce() -> Produced:
        (depth, alpha), seconds = await service.on_teacher_thread(
            lambda: service.depth_map(service.final_ws(req), camera)
        )
        data = await service.encode(lambda: encode_depth(depth, alpha, req.format), req.format)
        stored = {
            "X-Backend": "volumetric",
            "Content-Disposition": f'{disposition}; filename="depth.{extension}"',
            **depth_headers(req.format),
        }
        timings = {"X-Model-Time-Ms": f"{seconds * 1000:.1f}"}
        return Produced(data, DEPTH_MEDIA_TYPES[req.format], stored, timings)

    per_request = {"X-Backend-Note": note} if note else {}
    return await serve_cached(service, request, key, produce, per_request)


@router.get("/depth", response_class=Response, openapi_extra=query_openapi(DepthRequest))
async def depth_get(
    service: ReadyService,
    req: Annotated[DepthRequest, Depends(depth_query)],
    request: Request,
) -> Response:
    """The volumetric teacher's depth map of one latent from one camera: the same latent, edit
    and camera fields as GET /render; format png16 (16-bit, distance = value x 0.0001 world
    units, 0 = no surface) or npy (float32 ray distances). Headers X-Depth-Unit and
    X-Depth-Scale state the encoding. backend=student is answered by the teacher
    (X-Backend-Note says so): a student has no geometry."""
    return await render_depth(service, req, request)


@router.post("/depth", response_class=Response)
async def depth_post(service: ReadyService, req: DepthRequest, request: Request) -> Response:
    """The same as GET /depth with a JSON body (for ws)."""
    return await render_depth(service, req, request)
