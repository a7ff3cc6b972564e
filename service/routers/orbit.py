"""GET and POST /orbit: a turntable video of one identity, cached like /render (its key holds
every frame's camera, the fps and the format; see ``routers/render.py``)."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...models.video import MEDIA_TYPES, encode_video
from ..dependencies import OrbitQuery, ReadyService
from ..render_service import RenderService, label
from ..schemas import OrbitRequest
from .render import Produced, fallback_header, latent_key, response_key, serve_cached

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
    key = response_key(
        service,
        role,
        "video",
        latent=latent_key(req),
        cameras=np.concatenate([label(cam) for cam in cameras]),
        size=service.infos[role].img_resolution,
        fps=req.fps,
        format=req.format,
    )

    async def produce() -> Produced:
        if reason:
            service.metrics.fallbacks.labels(reason).inc()
        items = [service.item(cam, cond, identity) for cam in cameras]
        start = time.perf_counter()
        frames, backends, failed = await _frames(service, items, role, request)
        render_s = time.perf_counter() - start
        encode_start = time.perf_counter()
        video = np.stack(frames)
        data = await service.encode(lambda: encode_video(video, req.fps, req.format), req.format)
        stored = {
            "X-Backend": ",".join(sorted(backends)),
            "X-Frames": str(len(frames)),
            "Content-Disposition": f'inline; filename="orbit.{req.format}"',
        }
        timings = {
            "X-Render-Time-Ms": f"{render_s * 1000:.1f}",
            "X-Encode-Time-Ms": f"{(time.perf_counter() - encode_start) * 1000:.1f}",
            **fallback_header(failed),
        }
        return Produced(data, MEDIA_TYPES[req.format], stored, timings, failed is None)

    return await serve_cached(service, request, key, produce, fallback_header(reason))


@router.get("/orbit", response_class=Response)
async def orbit_get(service: ReadyService, req: OrbitQuery, request: Request) -> Response:
    """A turntable video of one identity: yaw = A sin(2 pi t), pitch = B cos(2 pi t)."""
    return await render_orbit(service, req, request)


@router.post("/orbit", response_class=Response)
async def orbit_post(service: ReadyService, req: OrbitRequest, request: Request) -> Response:
    """The same as GET /orbit with a JSON body, for latents too long for a URL (ws)."""
    return await render_orbit(service, req, request)
