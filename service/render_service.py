"""The render service: the loaded models and their batchers, and requests -> images.

Routes turn HTTP into calls on one :class:`RenderService` (kept on ``app.state``); everything
that depends on what is loaded (vector lengths, pose ranges, which backend serves, per-layer
latents, fallbacks) is decided here and refused with typed errors (``errors.RequestError``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..models.camera import Camera
from ..models.editing import interpolate, style_mix
from ..models.latents import z_from_seed
from ..models.orbit import OrbitPath, orbit_angles
from ..models.rng import generator_for
from . import logs, tracing
from .cache import RenderCache
from .engine import BackendFailed, Batcher, RenderItem, RenderResult
from .errors import Busy, RequestError
from .metrics import ServiceMetrics
from .models import LoadedModels, ModelInfo, load_models
from .schemas import LatentFields, OrbitRequest, RenderRequest
from .settings import ServiceSettings
from .student_export import GraphExporter

log = logging.getLogger(__name__)


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


class Slots:
    """A fixed number of concurrent runs of one kind of work, taken without waiting.

    Taking a slot never waits: when none is free the caller is told at once (``Busy``), before
    it has spent anything on the request. Only the event loop's thread takes and frees slots.
    """

    def __init__(self, count: int) -> None:
        self.free = count

    @contextmanager
    def take(self, busy_message: str) -> Iterator[None]:
        if self.free <= 0:
            raise Busy(busy_message)
        self.free -= 1
        try:
            yield
        finally:
            self.free += 1


def label(camera: Camera) -> np.ndarray:
    """A camera's 25-number labels as float32 numpy [N, 25]."""
    return camera.to_label().numpy().astype(np.float32)


class RenderService:
    """The loaded models and their batchers, plus the request -> images logic."""

    def __init__(
        self,
        settings: ServiceSettings,
        metrics: ServiceMetrics,
        exporter: GraphExporter | None = None,
    ) -> None:
        self.settings = settings
        self.exporter = exporter  # exports the PyTorch student for ONNX Runtime and /graphs
        self.metrics = metrics
        self.device = settings.resolved_device()
        self.models: LoadedModels | None = None
        self.batchers: dict[str, Batcher] = {}
        self.infos: dict[str, ModelInfo] = {}
        self.ready = False
        self._frontal: np.ndarray | None = None
        self.encoder = ThreadPoolExecutor(2, thread_name_prefix="encode")
        self.inversions = Slots(settings.invert_concurrency)
        self.meshes = Slots(settings.mesh_concurrency)
        # Encoded responses by everything that decides their bytes (service/cache.py); the
        # routes decide what is cacheable, this object only holds the bytes within the budget.
        self.cache = RenderCache(
            settings.render_cache_bytes,
            on_event=lambda event, n: metrics.render_cache_events.labels(event).inc(n),
        )
        metrics.track_render_cache(self.cache)

    async def start(self) -> None:
        """Load the models off the event loop, warm them up, start one worker per backend."""
        loop = asyncio.get_running_loop()
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        self.models = await loop.run_in_executor(
            None, load_models, self.settings, self.device, self.exporter
        )
        for role in ("student", "volumetric"):
            pair = getattr(self.models, role)
            if pair is not None:
                self._add_batcher(role, *pair)
        if self.settings.warmup:
            await loop.run_in_executor(None, self._warm_up)
        for batcher in self.batchers.values():
            batcher.start()
        self.ready = True
        log.info("ready: %s", {k: v.backend for k, v in self.infos.items()})

    def _add_batcher(self, role: str, backend: Any, info: ModelInfo) -> None:
        assert self.models is not None
        s = self.settings
        max_batch = s.max_batch_size if role == "student" else s.teacher_max_batch_size
        self.batchers[role] = Batcher(
            backend, self.models.mapper, max_batch, s.max_wait_ms / 1000, s.queue_size, self.metrics
        )
        self.infos[role] = info
        self.metrics.queue_depth.labels(backend.name).set(0)

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
        return RenderItem(
            c=label(camera)[0],
            c_cond=self._frontal_label() if c_cond is None else label(c_cond)[0],
            psi=identity.psi,
            z=None if identity.z is None else np.asarray(identity.z, np.float32),
            w=None if identity.w is None else np.asarray(identity.w, np.float32),
            ws=None if identity.ws is None else np.asarray(identity.ws, np.float32),
        )

    def _frontal_label(self) -> np.ndarray:
        """The default conditioning camera's label, built once (read-only: items share it);
        building a camera costs more than the rest of a request's bookkeeping."""
        if self._frontal is None:
            assert self.models is not None
            self._frontal = label(self.models.camera.frontal())[0]
            self._frontal.flags.writeable = False
        return self._frontal

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
            raise RequestError(
                "ws" if req.ws is not None else "mix",
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
            rows = self._mixed(rows, req, psi, cond)
        if bool((rows == rows[:1]).all()):
            return Identity(1.0, w=rows[0])  # one w after all: every backend takes it
        return Identity(1.0, ws=rows)

    def _mixed(
        self, rows: np.ndarray, req: LatentFields, psi: float, cond: Camera | None
    ) -> np.ndarray:
        """``rows`` with the layers from ``mix.cutoff`` on taken from the mix latent."""
        assert req.mix is not None
        num_ws = len(rows)
        if req.mix.cutoff > num_ws:
            raise RequestError("mix.cutoff", f"mix.cutoff must be at most num_ws = {num_ws}")
        other = self._rows(req.mix, psi, cond, "mix.")
        mixed = style_mix(torch.from_numpy(rows), torch.from_numpy(other), req.mix.cutoff, num_ws)
        return mixed.numpy()

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
            rows = self._checked_ws(req.ws, num_ws, prefix)
        else:
            z, w = self._vector(req, prefix)
            if z is not None:
                camera = cond if cond is not None else m.camera.frontal()
                w = m.mapper.map(z[None], label(camera))[0]
            assert w is not None
            rows = np.repeat(w[None], num_ws, axis=0)
        return m.mapper.truncate(rows, np.full(len(rows), psi, np.float32))

    def _checked_ws(self, ws: list[list[float]], num_ws: int, prefix: str) -> np.ndarray:
        assert self.models is not None
        w_dim = self.models.w_dim
        shape = (len(ws), len(ws[0]) if ws else 0)
        if shape != (num_ws, w_dim) or any(len(row) != w_dim for row in ws):
            raise RequestError(
                f"{prefix}ws",
                f"ws needs {num_ws} rows of {w_dim} numbers (num_ws x w_dim); it was "
                "fitted to another model or is malformed",
            )
        return np.asarray(ws, np.float32)

    def conditioning(self, req: LatentFields) -> Camera | None:
        """The camera that conditions the mapping, when the request gives one."""
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

    def orbit_cameras(self, req: OrbitRequest) -> list[Camera]:
        """One camera per frame of the request's turntable (models.orbit's path)."""
        assert self.models is not None
        if req.frames > self.settings.max_frames:
            raise RequestError("frames", f"frames must be at most {self.settings.max_frames}")
        if req.fps > self.settings.max_fps:
            raise RequestError("fps", f"fps must be at most {self.settings.max_fps}")
        path = OrbitPath(req.frames, req.yaw_amplitude, req.pitch_amplitude, req.pitch_center)
        yaws, pitches = orbit_angles(path)
        rig = self.models.camera
        return [
            rig.orbit(y, p, req.radius, req.fov_deg) for y, p in zip(yaws, pitches, strict=True)
        ]

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
        """Run an encoder in the encoding pool (off the event loop), timed by format (in the
        metrics, the request's log line and an ``encode`` span)."""
        start = time.perf_counter()
        with tracing.span("encode", **{"distill3d.format": fmt}):
            data = await asyncio.get_running_loop().run_in_executor(self.encoder, fn)
        seconds = time.perf_counter() - start
        self.metrics.encode_time.labels(fmt).observe(seconds)
        entry = logs.current()
        if entry is not None:
            entry.add_encode(seconds)
        return data

    # -- the teacher's geometry (depth, mesh) and the cache's model identity -------------------

    def model_id(self, role: str) -> str:
        """``role:backend:weights sha256``: what a cache key needs to tell two models apart."""
        info = self.infos[role]
        return f"{role}:{info.backend}:{info.sha256}"

    def mapping_id(self) -> str:
        """Whose z -> w mapping (and frontal camera) every backend uses: the teacher's when it
        is loaded, else the student's (``service/models.py``). A seed's image depends on it
        even when the student draws, so a cache key names it too."""
        role = "volumetric" if "volumetric" in self.infos else "student"
        return self.model_id(role)

    def camera(self, req: RenderRequest) -> Camera:
        """The request's camera: its raw label, or yaw/pitch on the model's orbit."""
        assert self.models is not None
        if req.camera is not None:
            return Camera.from_label(req.camera)
        return self.models.camera.orbit(req.yaw, req.pitch, req.radius, req.fov_deg)

    def teacher(self, requested: str) -> str | None:
        """Check the teacher can serve geometry; the note to send when the student was asked for.

        Depth and meshes come from the density field only the volumetric teacher holds, so a
        request naming the student is answered by the teacher and told so, not refused: the
        identity (the latent) is the same in both, since z -> w is the teacher's mapping.
        """
        assert self.models is not None
        if "volumetric" not in self.batchers or self.models.teacher_model is None:
            raise RequestError(
                "backend",
                "depth maps and meshes need the volumetric teacher's PyTorch checkpoint loaded "
                "(DISTILL3D_TEACHER); a student has no geometry",
            )
        if requested == "student":
            return "the student has no geometry: the volumetric teacher answered"
        return None

    def final_ws(self, req: LatentFields) -> np.ndarray:
        """The request's latent as final per-layer rows [num_ws, w_dim] (mapped, truncated,
        interpolated, mixed): what the teacher's batcher would render, for the calls that go
        around the batcher (depth, mesh)."""
        assert self.models is not None and self.models.num_ws is not None
        m = self.models
        identity = self.latent(req)
        if identity.ws is not None:
            return np.asarray(identity.ws, np.float32)
        w = identity.w
        if identity.z is not None:
            cond = self.conditioning(req)
            camera = cond if cond is not None else m.camera.frontal()
            w = m.mapper.map(np.asarray(identity.z, np.float32)[None], label(camera))[0]
        assert w is not None
        w = m.mapper.truncate(np.asarray(w, np.float32)[None], np.array([identity.psi], np.float32))
        return np.repeat(w, m.num_ws, axis=0).astype(np.float32)

    async def on_teacher_thread(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """Run ``fn`` in the teacher batcher's own worker thread, queued with its batches.

        Sharing that single thread means the teacher never runs two things at once: a mesh
        or depth call cannot double the model's working memory (a GPU's, above all) or race a
        batch for the CPU cores; the price is that teacher renders wait behind it, which is
        why /mesh has its own concurrency slots and a bounded resolution. Returns the result
        and the seconds it took, queueing included.
        """
        executor = self.batchers["volumetric"]._executor
        start = time.perf_counter()
        result = await asyncio.get_running_loop().run_in_executor(executor, fn)
        return result, time.perf_counter() - start

    def depth_map(self, ws: np.ndarray, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
        """Runs in the teacher's thread: ray distances and opacity [H, W] of final rows ``ws``,
        with the per-image generator the teacher's batcher uses (so the depth is that of the
        image ``/render?backend=volumetric`` returns for the same request)."""
        from ..models.depth import render_depth
        from ..models.render import RenderOptions

        assert self.models is not None and self.models.teacher_model is not None
        backend = self.batchers["volumetric"].backend
        device = backend.device  # type: ignore[attr-defined]
        rng = [generator_for(backend.render_seed, device)]  # type: ignore[attr-defined]
        depth, alpha = render_depth(
            self.models.teacher_model,
            torch.from_numpy(ws)[None],
            camera,
            RenderOptions(noise_mode="const"),
            rng,
        )
        return depth.numpy(), alpha.numpy()
