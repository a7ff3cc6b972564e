"""POST and GET /render: one image of one identity from one camera."""

from __future__ import annotations

import io

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from PIL import Image

from ...models.camera import Camera
from ..dependencies import ReadyService, RenderQuery
from ..render_service import RenderService
from ..schemas import RenderRequest

IMAGE_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

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


async def render_image(service: RenderService, req: RenderRequest, request: Request) -> Response:
    """The image of ``req``, with the headers that say how it was rendered."""
    assert service.models is not None
    identity = service.latent(req)
    cond = service.conditioning(req)
    if req.camera is not None:
        camera = Camera.from_label(req.camera)
    else:
        camera = service.models.camera.orbit(req.yaw, req.pitch, req.radius, req.fov_deg)
    role, reason = service.choose(req.backend, [camera], identity.per_layer)
    item = service.item(camera, cond, identity)
    if reason:
        service.metrics.fallbacks.labels(reason).inc()
    (result,), failed = await service.render([item], role, request.is_disconnected)
    reason = failed or reason
    data = await service.encode(
        lambda: encode_image(result.image, req.format, req.quality), req.format
    )
    headers = {
        "X-Backend": result.backend,
        "X-Model-Time-Ms": f"{result.model_s * 1000:.1f}",
        "X-Queue-Wait-Ms": f"{result.queue_s * 1000:.1f}",
        "X-Batch-Size": str(result.batch_size),
    }
    if reason:
        headers["X-Fallback"] = reason.split(":")[0]
    return Response(data, media_type=IMAGE_MEDIA_TYPES[req.format], headers=headers)


@router.post("/render", response_class=Response)
async def render_post(service: ReadyService, req: RenderRequest, request: Request) -> Response:
    """Render one image. Body: a latent (seed, z or w), a camera (yaw/pitch[/radius/fov_deg]
    or a 25-number label), truncation, backend, format."""
    return await render_image(service, req, request)


@router.get("/render", response_class=Response)
async def render_get(service: ReadyService, req: RenderQuery, request: Request) -> Response:
    """The same as POST /render with the fields as query parameters (vectors
    comma-separated), so a render is a shareable URL."""
    return await render_image(service, req, request)
