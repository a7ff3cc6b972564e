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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..models.camera import Camera
from ..models.editing import interpolate, style_mix
from ..models.images import read_image
from ..models.inversion import InversionConfig, invert
from ..models.latents import z_from_seed
from ..models.video import MEDIA_TYPES, encode_video
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
from .schemas import InvertRequest, LatentFields, OrbitRequest, RenderRequest, parse_query
from .settings import ServiceSettings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
IMAGE_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class RequestError(Exception):
    """A request that is well-formed but cannot be served as asked: 422 naming the field."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


def _detail(field: str, message: str, location: str = "body") -> list[dict[str, Any]]:
    return [{"loc": [location, *field.split(".")], "msg": message, "type": "value_error"}]


@dataclass
class Identity:
    """A resolved latent for the batcher: z (mapped there), w, or final per-layer ws."""

    psi: float
    z: np.ndarray | None = None
    w: np.ndarray | None = None
    ws: np.ndarray | None = None

    @property
    def per_layer(self) -> bool:
        return self.ws is not None


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
            identity = Identity(0.7, z=z_from_seed(0, self.models.z_dim)[0].numpy())
            item = self.item(self.models.camera.frontal(), None, identity)
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

    def item(self, camera: Camera, c_cond: Camera | None, identity: Identity) -> RenderItem:
        assert self.models is not None
        cond = c_cond if c_cond is not None else self.models.camera.frontal()
        return RenderItem(
            c=camera.to_label()[0].numpy().astype(np.float32),
            c_cond=cond.to_label()[0].numpy().astype(np.float32),
            psi=identity.psi,
            z=None if identity.z is None else np.asarray(identity.z, np.float32),
            w=None if identity.w is None else np.asarray(identity.w, np.float32),
            ws=None if identity.ws is None else np.asarray(identity.ws, np.float32),
        )

    def latent(self, req: LatentFields) -> Identity:
        """The identity to render. Plain seed/z/w go to the batcher as they are (mapped and
        truncated with the batch); ws, mix and interpolate are resolved here, in W, to final
        rows (truncated first, then interpolated, then mixed)."""
        assert self.models is not None
        psi = req.psi()
        if req.ws is None and req.mix is None and req.interpolate is None:
            z, w = self._vector(req, "")
            return Identity(psi, z=z, w=w)
        if (req.ws is not None or req.mix is not None) and self.models.num_ws is None:
            field = "ws" if req.ws is not None else "mix"
            raise RequestError(
                field,
                "per-layer latents (ws, mix) need a PyTorch teacher or student loaded: this "
                "service runs only an exported graph, which takes one w",
            )
        cond = self.conditioning(req)
        rows = self._rows(req, psi, cond, "")
        if req.interpolate is not None:
            other = self._rows(req.interpolate, psi, cond, "interpolate.")
            rows = interpolate(torch.from_numpy(rows), torch.from_numpy(other), req.interpolate.t)
            rows = rows.numpy()
        if req.mix is not None:
            num_ws = len(rows)
            if req.mix.cutoff > num_ws:
                raise RequestError("mix.cutoff", f"mix.cutoff must be at most num_ws = {num_ws}")
            other = self._rows(req.mix, psi, cond, "mix.")
            mixed = style_mix(
                torch.from_numpy(rows), torch.from_numpy(other), req.mix.cutoff, num_ws
            )
            rows = mixed.numpy()
        if bool((rows == rows[:1]).all()):
            return Identity(1.0, w=rows[0])  # one w after all: every backend takes it
        return Identity(1.0, ws=rows)

    def _vector(self, req: Any, prefix: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(z, w) of a seed, z or w, with lengths checked."""
        assert self.models is not None
        m = self.models
        if req.seed is not None:
            return z_from_seed(req.seed, m.z_dim)[0].numpy(), None
        if req.z is not None:
            if len(req.z) != m.z_dim:
                raise RequestError(f"{prefix}z", f"z needs {m.z_dim} numbers, got {len(req.z)}")
            return np.asarray(req.z, np.float32), None
        assert req.w is not None
        if len(req.w) != m.w_dim:
            raise RequestError(f"{prefix}w", f"w needs {m.w_dim} numbers, got {len(req.w)}")
        return None, np.asarray(req.w, np.float32)

    def _rows(self, req: Any, psi: float, cond: Camera | None, prefix: str) -> np.ndarray:
        """A latent as truncated per-layer rows [num_ws, w_dim] (one row without PyTorch)."""
        assert self.models is not None
        m = self.models
        num_ws = m.num_ws or 1
        if req.ws is not None:
            shape = (len(req.ws), len(req.ws[0]) if req.ws else 0)
            if shape != (num_ws, m.w_dim) or any(len(row) != m.w_dim for row in req.ws):
                raise RequestError(
                    f"{prefix}ws",
                    f"ws needs {num_ws} rows of {m.w_dim} numbers (num_ws x w_dim); it was "
                    "fitted to another model or is malformed",
                )
            rows = np.asarray(req.ws, np.float32)
        else:
            z, w = self._vector(req, prefix)
            if z is not None:
                camera = cond if cond is not None else m.camera.frontal()
                c_cond = camera.to_label().numpy().astype(np.float32)
                w = m.mapper.map(z[None], c_cond)[0]
            assert w is not None
            rows = np.repeat(w[None], num_ws, axis=0)
        return m.mapper.truncate(rows, np.full(len(rows), psi, np.float32))

    def conditioning(self, req: LatentFields) -> Camera | None:
        assert self.models is not None
        if req.conditioning_camera is None:
            return None
        if req.w is not None or req.ws is not None:
            raise RequestError(
                "conditioning_camera", "conditioning_camera applies to seed or z, not to w or ws"
            )
        if not self.models.mapper.supports_conditioning:
            raise RequestError(
                "conditioning_camera",
                "this service maps latents with mapping.onnx (frontal camera only); load a "
                "PyTorch teacher or student to use conditioning_camera",
            )
        return Camera.from_label(req.conditioning_camera)

    def choose(
        self, requested: str, cameras: list[Camera], per_layer: bool = False
    ) -> tuple[str, str | None]:
        """The role to render with, and why it is not the student when it could have been.

        ``auto`` prefers the student; a pose outside the student's declared range, or per-layer
        latents that its exported graph cannot take, go to the teacher when it is loaded. An
        explicit backend must cover the request itself.
        """
        if requested != "auto" and requested not in self.batchers:
            loaded = ", ".join(sorted(self.batchers))
            raise RequestError("backend", f"backend {requested} is not loaded (loaded: {loaded})")
        order = [requested] if requested != "auto" else ["student", "volumetric"]
        problems: list[tuple[str, str]] = []
        for role in (r for r in order if r in self.batchers):
            backend = self.batchers[role].backend
            if per_layer and not backend.supports_ws:
                problems.append(
                    (
                        "ws",
                        f"the {role} backend ({backend.name}) takes one w, not per-layer ws; "
                        "load a PyTorch student checkpoint or render with the volumetric backend",
                    )
                )
                continue
            found = [v for cam in cameras for v in self.infos[role].pose_range.violations(cam)]
            if not found:
                tried_student = requested == "auto" and role == "volumetric" and problems
                return role, "pose_out_of_student_range" if tried_student else None
            problems.extend((field, f"{msg} (the {role} model's range)") for field, msg in found)
        messages = "; ".join(dict.fromkeys(msg for _, msg in problems))
        raise RequestError(problems[0][0], messages)

    def inversion_model(self, requested: str) -> tuple[str, Any]:
        """(role, PyTorch model) to fit through: the student unless the teacher is asked for.
        Inversion needs gradients, so an exported graph cannot do it."""
        assert self.models is not None
        m = self.models
        if requested in ("auto", "student") and m.student_model is not None:
            return "student", m.student_model
        if requested in ("auto", "volumetric") and m.teacher_model is not None:
            return "volumetric", m.teacher_model
        raise RequestError(
            "backend",
            f"inversion through {'a model' if requested == 'auto' else requested} needs its "
            "PyTorch checkpoint loaded (DISTILL3D_STUDENT or DISTILL3D_TEACHER); exported "
            "graphs have no gradients",
        )

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
    """413 for request bodies over the limit, declared or streamed, before anything parses.

    The limit is ``max_bytes``, or ``per_path[path]`` for routes that take uploads. The body is
    read here (it is small by construction) and replayed to the app, so a chunked upload
    without Content-Length is held to the same limit.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, per_path: dict[str, tuple[int, str]] | None = None
    ) -> None:
        self.app = app
        self.limits = {"": (max_bytes, "DISTILL3D_MAX_BODY_BYTES"), **(per_path or {})}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.limits.get(scope.get("path", ""), self.limits[""])
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(limit, setting, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                await _too_large(limit, setting, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(limit: int, setting: str, send: Send) -> None:
    response = JSONResponse({"detail": f"request body larger than {limit} bytes ({setting})"}, 413)
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
    uploads = {"/invert": (settings.max_upload_bytes, "DISTILL3D_MAX_UPLOAD_BYTES")}
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, per_path=uploads)
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
    async def orbit_get(request: Request) -> Response:
        """A turntable video of one identity: yaw = A sin(2 pi t), pitch = B cos(2 pi t)."""
        return await do_orbit(_from_query(OrbitRequest, request), request)

    @app.post("/orbit", dependencies=guarded, response_class=Response, tags=["render"])
    async def orbit_post(req: OrbitRequest, request: Request) -> Response:
        """The same as GET /orbit with a JSON body, for latents too long for a URL (ws)."""
        return await do_orbit(req, request)

    async def do_orbit(req: OrbitRequest, request: Request) -> Response:
        assert service.models is not None
        if req.frames > settings.max_frames:
            raise RequestError("frames", f"frames must be at most {settings.max_frames}")
        if req.fps > settings.max_fps:
            raise RequestError("fps", f"fps must be at most {settings.max_fps}")
        identity = service.latent(req)
        cond = service.conditioning(req)
        t = np.arange(req.frames) / req.frames
        yaws = req.yaw_amplitude * np.sin(2 * np.pi * t)
        pitches = req.pitch_amplitude * np.cos(2 * np.pi * t)
        cameras = [
            service.models.camera.orbit(float(y), float(p), req.radius, req.fov_deg)
            for y, p in zip(yaws, pitches, strict=True)
        ]
        role, reason = service.choose(req.backend, cameras, identity.per_layer)
        if reason:
            service.metrics.fallbacks.labels(reason).inc()
        items = [service.item(cam, cond, identity) for cam in cameras]
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

    # -- inversion -------------------------------------------------------------------------

    inversions = asyncio.Semaphore(settings.invert_concurrency)

    @app.post("/invert", dependencies=guarded, tags=["edit"])
    async def invert_upload(request: Request) -> JSONResponse:
        """Fit a latent to an uploaded image: the body is the image (Content-Type image/png,
        image/jpeg or image/webp) or a multipart form with an ``image`` file; parameters
        (yaw and pitch to fix the camera, steps, space, backend) as query or form fields.
        Returns a latent file (``w`` or ``ws``, the fitted yaw/pitch and the fit's PSNR and
        time) that /render and /orbit take as they are."""
        data, fields = await _upload(request)
        params = _validate(InvertRequest, {**dict(request.query_params), **fields}, "query")
        steps = params.steps or settings.invert_steps
        if steps > settings.max_invert_steps:
            raise RequestError("steps", f"steps must be at most {settings.max_invert_steps}")
        role, model = service.inversion_model(params.backend)
        loop = asyncio.get_running_loop()
        try:  # decoding a large image is CPU work: not on the event loop
            target = await loop.run_in_executor(None, read_image, data, settings.max_upload_pixels)
        except ValueError as exc:
            service.metrics.inversions.labels(role, "bad_input").inc()
            status = 413 if "more than the limit" in str(exc) else 422
            raise RequestError("image", str(exc), status) from None
        if inversions.locked():
            service.metrics.inversions.labels(role, "busy").inc()
            return JSONResponse(
                {"detail": "an inversion is already running; retry shortly"},
                429,
                headers={"Retry-After": "5"},
            )
        async with inversions:
            config = InversionConfig(
                steps=params.steps or settings.invert_steps, space=params.space
            )
            camera = None if params.yaw is None else (params.yaw, params.pitch or 0.0)
            start = time.perf_counter()
            try:
                result = await loop.run_in_executor(None, invert, model, target, config, camera)
            except Exception as exc:
                service.metrics.inversions.labels(role, "failed").inc()
                log.exception("inversion failed")
                return JSONResponse({"detail": f"inversion failed: {exc}"}, 500)
            seconds = time.perf_counter() - start
        service.metrics.inversions.labels(role, "ok").inc()
        service.metrics.inversion_time.labels(role).observe(seconds)
        info = service.infos.get(role)
        body = result.latent({"role": role, "source": info.source if info else ""}).to_json()
        return JSONResponse(
            body, headers={"X-Backend": role, "X-Invert-Time-Ms": f"{seconds * 1000:.1f}"}
        )

    # -- viewer ----------------------------------------------------------------------------

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def viewer() -> FileResponse:
        """The browser viewer: identities, poses, truncation, orbits, uploads, interpolation."""
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

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
            "latent": None
            if m is None
            else {"z_dim": m.z_dim, "w_dim": m.w_dim, "num_ws": m.num_ws},
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
    return _validate(model, parse_query(dict(request.query_params)), "query")


def _validate(model: type[Any], values: dict[str, Any], location: str) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        errors = []
        for error in exc.errors(include_url=False):
            error = dict(error)
            error["loc"] = (location, *error["loc"])
            error.pop("ctx", None)
            errors.append(error)
        raise RequestValidationError(errors) from None


UPLOAD_TYPES = {"image/png", "image/jpeg", "image/webp", "application/octet-stream"}


async def _upload(request: Request) -> tuple[bytes, dict[str, str]]:
    """The uploaded image's bytes and any other form fields; 4xx for anything else."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as exc:  # python-multipart's parse errors, too many parts
            raise RequestError("image", f"malformed multipart form: {exc}", 400) from None
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise RequestError("image", "the form needs a file field named 'image'")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return await upload.read(), fields
    if content_type in UPLOAD_TYPES:
        return await request.body(), {}
    raise RequestError(
        "image",
        f"unsupported Content-Type {content_type or '(none)'}: send the image as image/png, "
        "image/jpeg or image/webp, or as multipart/form-data with an 'image' file",
        415,
    )
