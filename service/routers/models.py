"""GET /v1/models: what the service has loaded and how it batches."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..dependencies import Service

router = APIRouter(tags=["models"])


@router.get("/v1/models")
async def list_models(service: Service) -> dict[str, Any]:
    """What is loaded: role, backend, device, precision, resolution, source and hash, the
    declared pose range, batch limits, warm-up time."""
    m = service.models
    s = service.settings
    return {
        "ready": service.ready,
        "models": [info.to_json() for info in service.infos.values()],
        "latent": None if m is None else {"z_dim": m.z_dim, "w_dim": m.w_dim, "num_ws": m.num_ws},
        "camera": None
        if m is None
        else {
            "radius": m.camera.radius,
            "pivot": list(m.camera.pivot),
            "fov_deg": m.camera.fov_deg,
        },
        "batching": {
            "max_batch_size": s.max_batch_size,
            "max_wait_ms": s.max_wait_ms,
            "queue_size": s.queue_size,
        },
    }
