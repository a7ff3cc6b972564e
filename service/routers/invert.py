"""POST /invert: fit a latent to an uploaded image.

The order matters for a public endpoint: the one-at-a-time slot is taken (or the request is
answered 429) before the upload is received, so a busy service does not read, buffer or decode
images it will refuse; the image is decoded only once its format is one we accept.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ...models.inversion import InversionConfig, invert
from ..dependencies import ReadyService, validate
from ..errors import InternalFailure, RequestError
from ..render_service import RenderService
from ..schemas import InvertRequest
from ..uploads import decode_upload, read_upload

log = logging.getLogger(__name__)

router = APIRouter(tags=["edit"])

BUSY = "an inversion is already running; retry shortly"


def _role_hint(service: RenderService, request: Request) -> str:
    """The role a request would fit through, from its query alone (for the busy count)."""
    try:
        return service.inversion_model(request.query_params.get("backend", "auto"))[0]
    except RequestError:
        return "none"


async def _fit(service: RenderService, request: Request) -> JSONResponse:
    """Inside the slot: read and check the upload, fit, answer the latent file."""
    data, fields = await read_upload(request)
    params = validate(InvertRequest, {**dict(request.query_params), **fields}, "query")
    settings = service.settings
    steps = params.steps or settings.invert_steps
    if steps > settings.max_invert_steps:
        raise RequestError("steps", f"steps must be at most {settings.max_invert_steps}")
    role, model = service.inversion_model(params.backend)
    loop = asyncio.get_running_loop()
    try:  # decoding a large image is CPU work: not on the event loop
        target = await loop.run_in_executor(None, decode_upload, data, settings.max_upload_pixels)
    except RequestError:
        service.metrics.inversions.labels(role, "bad_input").inc()
        raise
    config = InversionConfig(steps=steps, space=params.space)
    camera = None if params.yaw is None else (params.yaw, params.pitch or 0.0)
    start = time.perf_counter()
    try:
        result = await loop.run_in_executor(None, invert, model, target, config, camera)
    except Exception as exc:
        service.metrics.inversions.labels(role, "failed").inc()
        log.exception("inversion failed")
        raise InternalFailure(f"inversion failed: {exc}") from exc
    seconds = time.perf_counter() - start
    service.metrics.inversions.labels(role, "ok").inc()
    service.metrics.inversion_time.labels(role).observe(seconds)
    info = service.infos.get(role)
    body = result.latent({"role": role, "source": info.source if info else ""}).to_json()
    return JSONResponse(
        body, headers={"X-Backend": role, "X-Invert-Time-Ms": f"{seconds * 1000:.1f}"}
    )


@router.post("/invert")
async def invert_upload(service: ReadyService, request: Request) -> JSONResponse:
    """Fit a latent to an uploaded image: the body is the image (Content-Type image/png,
    image/jpeg or image/webp) or a multipart form with an ``image`` file; parameters
    (yaw and pitch to fix the camera, steps, space, backend) as query or form fields.
    Returns a latent file (``w`` or ``ws``, the fitted yaw/pitch and the fit's PSNR and
    time) that /render and /orbit take as they are."""
    if service.inversions.free <= 0:
        service.metrics.inversions.labels(_role_hint(service, request), "busy").inc()
    with service.inversions.take(BUSY):
        return await _fit(service, request)
