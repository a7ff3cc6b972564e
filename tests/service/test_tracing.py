"""OpenTelemetry spans with the SDK's in-memory exporter: a 2-image batch's trace tree (request
-> queue wait, encode; one batch span linked to both requests) and W3C traceparent honoured."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from service_helpers import run

from distill3d.service.app import create_app

sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_batched_requests_trace_tree_and_traceparent(settings_for) -> None:
    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(settings_for(warmup=False, max_wait_ms=200), tracer_provider=provider)

    async def scenario() -> dict[str, str]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
                student = app.state.service.batchers["student"].backend
                original = student.render

                def slow(w, c):
                    time.sleep(0.4)
                    return original(w, c)

                student.render = slow
                # The first request occupies the worker; the two sent while it renders queue
                # together and are drawn in one batch of 2.
                first = asyncio.create_task(client.get("/render", params={"seed": 0}))
                await asyncio.sleep(0.15)
                parent = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
                a, b = await asyncio.gather(
                    client.get("/render", params={"seed": 1}, headers=parent),
                    client.get("/render", params={"seed": 2}),
                )
                await first
                assert a.headers["x-batch-size"] == b.headers["x-batch-size"] == "2"
                return {"a": a.headers["x-request-id"], "b": b.headers["x-request-id"]}

    ids = run(scenario())
    spans = exporter.get_finished_spans()
    requests = {
        s.attributes["distill3d.request_id"]: s
        for s in spans
        if "distill3d.request_id" in s.attributes
    }
    a, b = requests[ids["a"]], requests[ids["b"]]
    assert a.name == b.name == "GET /render"
    assert format(a.context.trace_id, "032x") == TRACE_ID  # the caller's trace continues
    assert a.parent is not None and format(a.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert b.context.trace_id != a.context.trace_id
    for request in (a, b):
        children = {
            s.name for s in spans if s.parent and s.parent.span_id == request.context.span_id
        }
        assert children == {"queue wait", "encode"}, children
    (batch,) = [
        s for s in spans if s.name == "model batch" and s.attributes["distill3d.batch_size"] == 2
    ]
    assert batch.parent is None  # its own root: it serves two traces
    linked = {(link.context.trace_id, link.context.span_id) for link in batch.links}
    assert linked == {(r.context.trace_id, r.context.span_id) for r in (a, b)}
