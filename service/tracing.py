"""OpenTelemetry tracing, optional (``pip install 'distill3d[otel]'``).

Off unless ``otlp_endpoint`` is set (or a test hands in its own provider): then each request is a
server span, a child of the caller's W3C ``traceparent`` when it sends one, with a ``queue wait``
child per render call and an ``encode`` child per encoding. A batched model call serves several
requests at once, so it cannot be the child of one of them: it is a span of its own (a root),
``model batch``, linked to the span of every request whose images it rendered.

The app's tracer is never installed as the global provider (two apps in one process, as in tests,
keep theirs apart); it travels with each request in a context variable, and with each queued image
to the batch worker. Without a tracer every helper here does nothing, and nothing imports
OpenTelemetry, so a service without the package and without an endpoint is unchanged.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from starlette.types import Scope

_tracer: ContextVar[Any] = ContextVar("distill3d_tracer", default=None)

SERVICE_NAME = "distill3d"


@dataclass(frozen=True)
class JobTrace:
    """What a queued image carries to the batch worker: the tracer and the span to link to."""

    tracer: Any
    span_context: Any


class Tracing:
    """The app's tracer (None: tracing off) and the provider to flush at shutdown."""

    def __init__(self, tracer: Any = None, provider: Any = None) -> None:
        self.tracer = tracer
        self.provider = provider

    @classmethod
    def configure(cls, otlp_endpoint: str | None, provider: Any = None) -> Tracing:
        """Tracing for ``provider`` (tests: an SDK provider with an in-memory exporter), or an
        OTLP/HTTP exporter to ``otlp_endpoint`` (e.g. ``http://collector:4318/v1/traces``), or
        off when neither is given."""
        if provider is None and not otlp_endpoint:
            return cls()
        if provider is None:
            provider = _otlp_provider(str(otlp_endpoint))
            return cls(provider.get_tracer("distill3d.service"), provider)
        return cls(provider.get_tracer("distill3d.service"))

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def shutdown(self) -> None:
        """Flush and stop the exporter this object made (not a provider handed in)."""
        if self.provider is not None:
            self.provider.shutdown()

    @contextlib.contextmanager
    def request_span(self, scope: Scope) -> Iterator[Any]:
        """The server span of one request, current while the app runs (None when off)."""
        if self.tracer is None:
            yield None
            return
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        parent = TraceContextTextMapPropagator().extract(carrier)
        token = _tracer.set(self.tracer)
        try:
            with self.tracer.start_as_current_span(
                f"{scope.get('method', 'HTTP')} {scope.get('path', '')}",
                context=parent,
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": scope.get("method", ""),
                    "url.path": scope.get("path", ""),
                },
            ) as span:
                yield span
        finally:
            _tracer.reset(token)


def _otlp_provider(endpoint: str) -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            "otlp_endpoint is set but OpenTelemetry is not installed: "
            "pip install 'distill3d[otel]' (or unset DISTILL3D_OTLP_ENDPOINT)"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def job_trace() -> JobTrace | None:
    """The current request's tracer and span, for an image put on a queue (None when off)."""
    tracer = _tracer.get()
    if tracer is None:
        return None
    from opentelemetry import trace

    return JobTrace(tracer, trace.get_current_span().get_span_context())


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A child of the current span, for the duration of the block (nothing when off)."""
    tracer = _tracer.get()
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def closed_span(
    name: str, start_ns: int, end_ns: int, error: str | None = None, **attributes: Any
) -> None:
    """A child of the current span that already happened (the queue wait, measured by the
    engine), with an error status when ``error`` says why it ended badly."""
    tracer = _tracer.get()
    if tracer is None:
        return
    from opentelemetry.trace import Status, StatusCode

    done = tracer.start_span(name, start_time=start_ns, attributes=attributes)
    if error is not None:
        done.set_status(Status(StatusCode.ERROR, error))
    done.end(end_time=max(start_ns, end_ns))


@contextlib.contextmanager
def batch_span(traces: Sequence[JobTrace | None], **attributes: Any) -> Iterator[Any]:
    """The span of one batched model call: a root, linked once to each request it serves."""
    known = [t for t in traces if t is not None]
    if not known:
        yield None
        return
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, Status, StatusCode

    links, seen = [], set()
    for t in known:
        key = (t.span_context.trace_id, t.span_context.span_id)
        if t.span_context.is_valid and key not in seen:
            seen.add(key)
            links.append(Link(t.span_context))
    current = known[0].tracer.start_span(
        "model batch", context=Context(), links=links, attributes=attributes
    )
    try:
        yield current
    except BaseException as exc:
        current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        current.end()


def now_ns() -> int:
    """Wall-clock time in the unit span timestamps take."""
    return time.time_ns()


def set_error(current: Any, message: str) -> None:
    """Mark ``current`` (a span, or None when off) as failed."""
    if current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    current.set_status(Status(StatusCode.ERROR, message))
