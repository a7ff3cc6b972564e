"""The HTTP API: FastAPI app factory, routes, error mapping, auth, metrics middleware.

``create_app(settings)`` builds an app whose lifespan loads the models (off the event loop),
warms them up, starts one batching worker per backend, and only then reports ready.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..models.camera import Camera
from ..models.latents import z_from_seed
from .engine import (
    BackendFailed,
    Batcher,
    ClientDisconnected,
    DeadlineExceeded,
    QueueFull,
    RenderItem,
    RenderResult,
)
from .metrics import CONTENT_TYPE, ServiceMetrics
from .models import LoadedModels, ModelInfo, load_models
from .schemas import LatentFields, OrbitRequest, RenderRequest, parse_query
from .settings import ServiceSettings
from .video import MEDIA_TYPES, encode_video

log = logging.getLogger(__name__)

IMAGE_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class RequestError(Exception):
    """A request that is well-formed but cannot be served as asked: 422 naming the field."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


def _detail(field: str, message: str, location: str = "body") -> list[dict[str, Any]]:
    return [{"loc": [location, field], "msg": message, "type": "value_error"}]


class RenderService:
    """The loaded models and their batchers, plus the request -> images logic."""

    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = settings.resolved_device()
        self.models: LoadedModels | None = None
        self.batchers: dict[str, Batcher] = {}
        self.infos: dict[str, ModelInfo] = {}
        self.ready = False
        self.encoder = ThreadPoolExecutor(2, thread_name_prefix="encode")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.settings.threads:
            import torch

            torch.set_num_threads(self.settings.threads)
        self.models = await loop.run_in_executor(None, load_models, self.settings, self.device)
        s = self.settings
        for role in ("student", "volumetric"):
            pair = getattr(self.models, role)
            if pair is None:
                continue
            backend, info = pair
            max_batch = s.max_batch_size if role == "student" else s.teacher_max_batch_size
            self.batchers[role] = Batcher(
                backend,
                self.models.mapper,
                max_batch,
                s.max_wait_ms / 1000,
                s.queue_size,
                self.metrics,
            )
            self.infos[role] = info
            self.metrics.queue_depth.labels(backend.name).set(0)
        if s.warmup:
            await loop.run_in_executor(None, self._warm_up)
        for batcher in self.batchers.values():
            batcher.start()
        self.ready = True
        log.info("ready: %s", {k: v.backend for k, v in self.infos.items()})

    def _warm_up(self) -> None:
        """One render per backend (first calls allocate and pick kernels); time recorded."""
        assert self.models is not None
        for role, batcher in self.batchers.items():
            item = self.item(self.models.camera.frontal(), None, 0.7, z=np.zeros(self.models.z_dim))
            start = time.perf_counter()
            batcher.render_now([item])
            seconds = time.perf_counter() - start
            if self.infos[role].warmup_s_per_image is None:
                self.infos[role].warmup_s_per_image = round(seconds, 4)

    async def stop(self) -> None:
        self.ready = False
        for batcher in self.batchers.values():
            await batcher.stop()
        self.encoder.shutdown(wait=False, cancel_futures=True)

    # -- requests -> items ------------------------------------------------------------------

    def item(
        self,
        camera: Camera,
        c_cond: Camera | None,
        psi: float,
        z: np.ndarray | None = None,
        w: np.ndarray | None = None,
    ) -> RenderItem:
        assert self.models is not None
        cond = c_cond if c_cond is not None else self.models.camera.frontal()
        return RenderItem(
            c=camera.to_label()[0].numpy().astype(np.float32),
            c_cond=cond.to_label()[0].numpy().astype(np.float32),
            psi=psi,
            z=None if z is None else np.asarray(z, np.float32),
            w=None if w is None else np.asarray(w, np.float32),
        )

    def latent(self, req: LatentFields) -> tuple[np.ndarray | None, np.ndarray | None]:
        assert self.models is not None
        m = self.models
        if req.seed is not None:
            return z_from_seed(req.seed, m.z_dim)[0].numpy(), None
        if req.z is not None:
            if len(req.z) != m.z_dim:
                raise RequestError("z", f"z needs {m.z_dim} numbers, got {len(req.z)}")
            return np.asarray(req.z, np.float32), None
        assert req.w is not None
        if len(req.w) != m.w_dim:
            raise RequestError("w", f"w needs {m.w_dim} numbers, got {len(req.w)}")
        return None, np.asarray(req.w, np.float32)

    def conditioning(self, req: LatentFields) -> Camera | None:
        assert self.models is not None
        if req.conditioning_camera is None:
            return None
        if req.w is not None:
            raise RequestError(
                "conditioning_camera", "conditioning_camera applies to seed or z, not to w"
            )
        if not self.models.mapper.supports_conditioning:
            raise RequestError(
                "conditioning_camera",
                "this service maps latents with mapping.onnx (frontal camera only); load a "
                "PyTorch teacher or student to use conditioning_camera",
            )
        return Camera.from_label(req.conditioning_camera)

    def choose(self, requested: str, cameras: list[Camera]) -> tuple[str, str | None]:
        """The role to render with, and why it is not the student when it could have been.

        ``auto`` prefers the student; a pose outside the student's declared range goes to the
        teacher when the teacher covers it. An explicit backend must cover the pose itself.
        """
        if requested != "auto" and requested not in self.batchers:
            loaded = ", ".join(sorted(self.batchers))
            raise RequestError("backend", f"backend {requested} is not loaded (loaded: {loaded})")
        order = [requested] if requested != "auto" else ["student", "volumetric"]
        problems: list[tuple[str, str]] = []
        for role in (r for r in order if r in self.batchers):
            found = [v for cam in cameras for v in self.infos[role].pose_range.violations(cam)]
            if not found:
                tried_student = requested == "auto" and role == "volumetric" and problems
                return role, "pose_out_of_student_range" if tried_student else None
            problems.extend((field, f"{msg} (the {role} model's range)") for field, msg in found)
        messages = "; ".join(dict.fromkeys(msg for _, msg in problems))
        raise RequestError(problems[0][0], messages)

    async def render(
        self,
        items: list[RenderItem],
        role: str,
        is_disconnected: Callable[[], Awaitable[bool]] | None,
    ) -> tuple[list[RenderResult], str | None]:
        """Render through ``role``'s batcher; a failing student falls back to the teacher."""
        timeout = self.settings.request_timeout_s
        try:
            return await self.batchers[role].submit(items, timeout, is_disconnected), None
        except BackendFailed as exc:
            if role != "student" or not self.settings.fallback or "volumetric" not in self.batchers:
                raise
            log.warning("student failed, falling back to the teacher: %s", exc)
            self.metrics.fallbacks.labels("student_error").inc()
            results = await self.batchers["volumetric"].submit(items, timeout, is_disconnected)
            return results, f"student_error: {exc}"

    async def encode(self, fn: Callable[[], bytes], fmt: str) -> bytes:
        start = time.perf_counter()
        data = await asyncio.get_running_loop().run_in_executor(self.encoder, fn)
        self.metrics.encode_time.labels(fmt).observe(time.perf_counter() - start)
        return data


def encode_image(image: np.ndarray, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    pil = Image.fromarray(image)
    if fmt == "png":
        pil.save(buffer, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        pil.save(buffer, format="JPEG", quality=quality)
    else:
        pil.save(buffer, format="WEBP", quality=quality)
    return buffer.getvalue()


# -- middleware ---------------------------------------------------------------------------------


class BodyLimit:
    """413 for request bodies over ``max_bytes``, declared or streamed, before anything parses.

    The body is read here (it is small by construction) and replayed to the app, so a chunked
    upload without Content-Length is held to the same limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _too_large(self.max_bytes, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await _too_large(self.max_bytes, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(limit: int, send: Send) -> None:
    response = JSONResponse(
        {"detail": f"request body larger than {limit} bytes (DISTILL3D_MAX_BODY_BYTES)"}, 413
    )
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class RequestMetrics:
    """Count and time every request by route template, method, status and rendering backend."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status, backend = "500", "none"

        async def watch(message: Message) -> None:
            nonlocal status, backend
            if message["type"] == "http.response.start":
                status = str(message["status"])
                headers = dict(message.get("headers", []))
                backend = headers.get(b"x-backend", b"none").decode()
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            labels = (endpoint, scope["method"], status, backend)
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)


# -- the app ------------------------------------------------------------------------------------


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    metrics = ServiceMetrics(settings.resolved_device())
    service = RenderService(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="distill3d",
        version=__version__,
        description="3D-aware image generation: a distilled convolutional student of EG3D, "
        "with the volumetric teacher as fallback.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics = metrics
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)

    async def authorized(request: Request) -> None:
        if settings.api_key is None:
            return
        expected = settings.api_key.get_secret_value()
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), expected):
            raise HTTPException(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def require_ready() -> None:
        if not service.ready:
            raise HTTPException(503, "models are still loading", headers={"Retry-After": "5"})

    guarded = [Depends(authorized), Depends(require_ready)]

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        where = "query" if request.method == "GET" else "body"
        return JSONResponse({"detail": _detail(exc.field, str(exc), where)}, exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Without echoing the input: it may be huge, or NaN (which JSON cannot carry).
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, 422)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, 429, headers={"Retry-After": str(exc.retry_after_s)}
        )

    @app.exception_handler(DeadlineExceeded)
    async def _deadline(request: Request, exc: DeadlineExceeded) -> JSONResponse:
        return JSONResponse(
            {"detail": f"render timed out ({exc}); the service is overloaded, retry later"}, 504
        )

    @app.exception_handler(ClientDisconnected)
    async def _gone(request: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=499)

    @app.exception_handler(BackendFailed)
    async def _failed(request: Request, exc: BackendFailed) -> JSONResponse:
        return JSONResponse({"detail": f"rendering failed: {exc}"}, 503)

    # -- render ----------------------------------------------------------------------------

    async def do_render(req: RenderRequest, request: Request) -> Response:
        assert service.models is not None
        z, w = service.latent(req)
        cond = service.conditioning(req)
        if req.camera is not None:
            camera = Camera.from_label(req.camera)
        else:
            camera = service.models.camera.orbit(req.yaw, req.pitch, req.radius, req.fov_deg)
        role, reason = service.choose(req.backend, [camera])
        item = service.item(camera, cond, req.psi(), z=z, w=w)
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

    @app.post("/render", dependencies=guarded, response_class=Response, tags=["render"])
    async def render_post(req: RenderRequest, request: Request) -> Response:
        """Render one image. Body: a latent (seed, z or w), a camera (yaw/pitch[/radius/fov_deg]
        or a 25-number label), truncation, backend, format."""
        return await do_render(req, request)

    @app.get("/render", dependencies=guarded, response_class=Response, tags=["render"])
    async def render_get(request: Request) -> Response:
        """The same as POST /render with the fields as query parameters (vectors
        comma-separated), so a render is a shareable URL."""
        return await do_render(_from_query(RenderRequest, request), request)

    # -- orbit -----------------------------------------------------------------------------

    @app.get("/orbit", dependencies=guarded, response_class=Response, tags=["render"])
    async def orbit(request: Request) -> Response:
        """A turntable video of one identity: yaw = A sin(2 pi t), pitch = B cos(2 pi t)."""
        req = _from_query(OrbitRequest, request)
        assert service.models is not None
        if req.frames > settings.max_frames:
            raise RequestError("frames", f"frames must be at most {settings.max_frames}")
        if req.fps > settings.max_fps:
            raise RequestError("fps", f"fps must be at most {settings.max_fps}")
        z, w = service.latent(req)
        cond = service.conditioning(req)
        t = np.arange(req.frames) / req.frames
        yaws = req.yaw_amplitude * np.sin(2 * np.pi * t)
        pitches = req.pitch_amplitude * np.cos(2 * np.pi * t)
        cameras = [
            service.models.camera.orbit(float(y), float(p), req.radius, req.fov_deg)
            for y, p in zip(yaws, pitches, strict=True)
        ]
        role, reason = service.choose(req.backend, cameras)
        if reason:
            service.metrics.fallbacks.labels(reason).inc()
        items = [service.item(cam, cond, req.psi(), z=z, w=w) for cam in cameras]
        start = time.perf_counter()
        chunk = max(1, service.batchers[role].max_batch * 2)
        frames: list[np.ndarray] = []
        backends: set[str] = set()
        for i in range(0, len(items), chunk):  # chunks leave room in the queue for others
            results, failed = await service.render(
                items[i : i + chunk], role, request.is_disconnected
            )
            reason = failed or reason
            frames.extend(r.image for r in results)
            backends.update(r.backend for r in results)
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

    # -- health, models, metrics -----------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Alive (the process answers)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Ready: models loaded and warmed up, workers running."""
        if not service.ready:
            return JSONResponse({"status": "loading"}, 503)
        return JSONResponse(
            {"status": "ready", "backends": {k: v.backend for k, v in service.infos.items()}}
        )

    @app.get("/v1/models", dependencies=[Depends(authorized)], tags=["models"])
    async def list_models() -> dict[str, Any]:
        """What is loaded: role, backend, device, precision, resolution, source and hash, the
        declared pose range, batch limits, warm-up time."""
        m = service.models
        return {
            "ready": service.ready,
            "models": [info.to_json() for info in service.infos.values()],
            "latent": None if m is None else {"z_dim": m.z_dim, "w_dim": m.w_dim},
            "camera": None
            if m is None
            else {
                "radius": m.camera.radius,
                "pivot": list(m.camera.pivot),
                "fov_deg": m.camera.fov_deg,
            },
            "batching": {
                "max_batch_size": settings.max_batch_size,
                "max_wait_ms": settings.max_wait_ms,
                "queue_size": settings.queue_size,
            },
        }

    @app.get("/metrics", dependencies=[Depends(authorized)], tags=["metrics"])
    async def prometheus() -> Response:
        """Prometheus exposition."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return app


def _from_query(model: type[Any], request: Request) -> Any:
    """Validate query parameters with a request model; errors read like body errors."""
    try:
        return model.model_validate(parse_query(dict(request.query_params)))
    except ValidationError as exc:
        errors = []
        for error in exc.errors(include_url=False):
            error = dict(error)
            error["loc"] = ("query", *error["loc"])
            error.pop("ctx", None)
            errors.append(error)
        raise RequestValidationError(errors) from None
