"""Probes and monitoring: /healthz, /readyz (open even with an API key), /metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ..dependencies import Metrics, Service
from ..metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """Alive (the process answers)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
async def readyz(service: Service) -> JSONResponse:
    """Ready: models loaded and warmed up, workers running."""
    if not service.ready:
        return JSONResponse({"status": "loading"}, 503)
    return JSONResponse(
        {"status": "ready", "backends": {k: v.backend for k, v in service.infos.items()}}
    )


@router.get("/metrics", tags=["metrics"])
async def prometheus(metrics: Metrics) -> Response:
    """Prometheus exposition."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)
