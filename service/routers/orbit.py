"""GET and POST /orbit: a turntable video of one identity."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...models.video import MEDIA_TYPES, encode_video
from ..dependencies import OrbitQuery, ReadyService
from ..render_service import RenderService
from ..schemas import OrbitRequest

router = APIRouter(tags=["render"])


async def _frames(
    service: RenderService, items: list, role: str, request: Request
) -> tuple[list[np.ndarray], set[str], str | None]:
    """Every frame, rendered in chunks that leave room in the queue for other requests; the
    backends that drew them, and the fallback reason when the student failed."""
    chunk = max(1, service.batchers[role].max_batch * 2)
    frames: list[np.ndarray] = []
    backends: set[str] = set()
    failure = None
    for i in range(0, len(items), chunk):
        results, failed = await service.render(items[i : i + chunk], role, request.is_disconnected)
        failure = failed or failure
        frames.extend(r.image for r in results)
        backends.update(r.backend for r in results)
    return frames, backends, failure


async def render_orbit(service: RenderService, req: OrbitRequest, request: Request) -> Response:
    """The video of ``req``, with the headers that say how it was made."""
    cameras = service.orbit_cameras(req)
    identity = service.latent(req)
    cond = service.conditioning(req)
    role, reason = service.choose(req.backend, cameras, identity.per_layer)
    if reason:
        service.metrics.fallbacks.labels(reason).inc()
    items = [service.item(cam, cond, identity) for cam in cameras]
    start = time.perf_counter()
    frames, backends, failed = await _frames(service, items, role, request)
    reason = failed or reason
    render_s = time.perf_counter() - start
    encode_start = time.perf_counter()
    video = np.stack(frames)
    data = await service.encode(lambda: encode_video(video, req.fps, req.format), req.format)
    headers = {
        "X-Backend": ",".join(sorted(backends)),
        "X-Frames": str(len(frames)),
        "X-Render-Time-Ms": f"{render_s * 1000:.1f}",
        "X-Encode-Time-Ms": f"{(time.perf_counter() - encode_start) * 1000:.1f}",
        "Content-Disposition": f'inline; filename="orbit.{req.format}"',
    }
    if reason:
        headers["X-Fallback"] = reason.split(":")[0]
    return Response(data, media_type=MEDIA_TYPES[req.format], headers=headers)


@router.get("/orbit", response_class=Response)
async def orbit_get(service: ReadyService, req: OrbitQuery, request: Request) -> Response:
    """A turntable video of one identity: yaw = A sin(2 pi t), pitch = B cos(2 pi t)."""
    return await render_orbit(service, req, request)


@router.post("/orbit", response_class=Response)
async def orbit_post(service: ReadyService, req: OrbitRequest, request: Request) -> Response:
    """The same as GET /orbit with a JSON body, for latents too long for a URL (ws)."""
    return await render_orbit(service, req, request)
