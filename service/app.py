"""The HTTP API's app factory.

``create_app(settings)`` builds an app whose lifespan loads the models (off the event loop),
warms them up, starts one batching worker per backend, and only then reports ready. Routes live
in ``routers/``, their dependencies in ``dependencies.py``, the render logic in
``render_service.py``, middleware in ``middleware.py`` and the error -> status mapping in
``errors.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from .. import __version__
from .errors import install_error_handlers
from .metrics import ServiceMetrics
from .middleware import ApiKeyGuard, BodyLimit, RequestContext, RequestMetrics
from .render_service import RenderService
from .routers import graphs, health, inference_v2, invert, mesh, models, orbit, render, viewer
from .settings import ServiceSettings
from .student_export import GraphExporter
from .tracing import Tracing


def create_app(
    settings: ServiceSettings | None = None,
    tracer_provider: Any = None,
    graph_exporter: GraphExporter | None = None,
) -> FastAPI:
    """The service's app for ``settings`` (from the environment when None); spans go to
    ``tracer_provider`` when given (tests), else to ``settings.otlp_endpoint`` when set.
    ``graph_exporter`` writes the student's browser graphs on first request (``distill3d serve``
    passes the export package's; without one, /graphs serves only an --onnx-dir export)."""
    settings = settings or ServiceSettings()
    metrics = ServiceMetrics(settings.resolved_device())
    tracing = Tracing.configure(settings.otlp_endpoint, tracer_provider)
    service = RenderService(settings, metrics, graph_exporter)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()
            tracing.shutdown()

    app = FastAPI(
        title="distill3d",
        version=__version__,
        description="3D-aware image generation: a distilled convolutional student of EG3D, "
        "with the volumetric teacher as fallback.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.graph_exporter = graph_exporter
    app.state.metrics = metrics
    # Added innermost first: metrics see every answer, the key is checked before any body is
    # read, and size limits apply to authorised requests.
    uploads = {"/invert": (settings.max_upload_bytes, "DISTILL3D_MAX_UPLOAD_BYTES")}
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, per_path=uploads)
    api_key = None if settings.api_key is None else settings.api_key.get_secret_value()
    app.add_middleware(ApiKeyGuard, api_key=api_key)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(graphs.CrossOriginIsolation)  # COOP/COEP on / and /static (WASM threads)
    app.add_middleware(RequestContext, tracing=tracing)  # outermost: every answer gets its id
    install_error_handlers(app)
    for module in (render, orbit, mesh, invert, viewer, health, models, graphs, inference_v2):
        app.include_router(module.router)
    viewer.mount_static(app)
    metrics.precreate_routes(app.routes)
    return app
