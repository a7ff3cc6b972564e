"""Helpers for the service tests: an in-process client with the app's lifespan, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import httpx

from distill3d.export.onnx import export_browser_graphs
from distill3d.service.app import create_app
from distill3d.service.settings import ServiceSettings


@asynccontextmanager
async def serving(settings: ServiceSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan, and an httpx client talking to it in-process."""
    app = create_app(settings, graph_exporter=export_browser_graphs)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://service", timeout=60
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0
