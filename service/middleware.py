"""ASGI middleware of the service: request ids, logs and spans, the API key check, body size
limits, request metrics.

They are plain ASGI callables (not ``BaseHTTPMiddleware``) so they see a request before FastAPI
parses anything: an unauthenticated request is refused before its body is read, and a body over
its limit before it is buffered.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Collection

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import logs
from .errors import BodyTooLarge
from .metrics import UNMEASURED_PATHS, ServiceMetrics
from .tracing import Tracing

log = logging.getLogger(__name__)

# Open with an API key set: the probes (a kubelet or load balancer has no credentials), and the
# viewer's page and static files (no model work, no data: the page asks for the key and sends it
# with every API call it makes). The API docs and schema, /metrics and every model route need it.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/"})
OPEN_PREFIXES = ("/static/",)


class ApiKeyGuard:
    """401 for every request without ``Authorization: Bearer <key>``, except ``open_paths`` and
    paths under ``open_prefixes``.

    It runs before routing, so the API docs and schema are covered as well as the API, and a
    request's body is never read (or parsed) before its key is checked.
    """

    def __init__(
        self,
        app: ASGIApp,
        api_key: str | None,
        open_paths: Collection[str] = OPEN_PATHS,
        open_prefixes: tuple[str, ...] = OPEN_PREFIXES,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = open_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or self.api_key is None
            or self._is_open(scope.get("path", ""))
            or self._authorized(scope)
        ):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"detail": "missing or wrong API key: send 'Authorization: Bearer <key>'"},
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, _no_receive, send)

    def _is_open(self, path: str) -> bool:
        # A path with ".." segments never counts as open: the static mount resolves it.
        if ".." in path.split("/"):
            return False
        return path in self.open_paths or path.startswith(self.open_prefixes)

    def _authorized(self, scope: Scope) -> bool:
        assert self.api_key is not None
        header = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        expected = self.api_key.encode()
        return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), expected)


class BodyLimit:
    """413 for request bodies over the limit, declared or streamed, before anything parses.

    The limit is ``max_bytes``, or ``per_path[path]`` for routes that take uploads. Ordinary
    bodies are read here (they are small by construction) and replayed to the app, so a chunked
    body without Content-Length is held to the same limit. Upload routes are not read ahead: a
    declared length over the limit is refused at once, and a streamed body is counted as the
    route reads it (``BodyTooLarge`` when it passes the limit), so the route may refuse the
    request (busy, unauthorised) without receiving the upload at all.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, per_path: dict[str, tuple[int, str]] | None = None
    ) -> None:
        self.app = app
        self.default = (max_bytes, "DISTILL3D_MAX_BODY_BYTES")
        self.uploads = dict(per_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit, setting = self.uploads.get(path, self.default)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(limit, setting, scope, send)
            return
        if path in self.uploads:
            await self.app(scope, _counted(receive, limit, setting), send)
            return
        messages = await _read_ahead(receive, limit)
        if messages is None:
            await _too_large(limit, setting, scope, send)
            return

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)


async def _read_ahead(receive: Receive, limit: int) -> list[Message] | None:
    """The body's messages, or None as soon as they pass ``limit`` bytes."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        size += len(message.get("body", b""))
        if size > limit:
            return None
        if not message.get("more_body", False):
            return messages


def _counted(receive: Receive, limit: int, setting: str) -> Receive:
    """``receive`` that raises ``BodyTooLarge`` once the body read so far passes ``limit``."""
    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise BodyTooLarge(limit, setting)
        return message

    return counted


async def _too_large(limit: int, setting: str, scope: Scope, send: Send) -> None:
    response = JSONResponse({"detail": str(BodyTooLarge(limit, setting))}, 413)
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class RequestMetrics:
    """Count and time every request by route template, method, status and rendering backend;
    not /metrics and the probes (``UNMEASURED_PATHS``: their steady beat would swamp the API's
    rate and quantiles)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNMEASURED_PATHS:
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
            seconds = time.perf_counter() - start
            self.metrics.observe_request(endpoint, scope["method"], int(status), backend, seconds)


class RequestContext:
    """The outermost middleware: each request's id, its access-log line and its trace span.

    The id is the client's ``X-Request-ID`` when valid (``logs.request_id``), else a new one;
    it is bound for the request's log lines and sent back on every response, the API key
    guard's 401s and the error answers included, with a ``Server-Timing`` header (time in the
    app, queue wait, model, encoding). An exception nothing else handled is logged
    here, with the id, and answered 500 with the id (Starlette's own handler sits outside every
    middleware, so its 500 would carry neither).
    """

    def __init__(self, app: ASGIApp, tracing: Tracing | None = None) -> None:
        self.app = app
        self.tracing = tracing or Tracing()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        entry = logs.RequestLog(
            logs.request_id(headers.get(logs.REQUEST_ID_HEADER)),
            scope.get("method", ""),
            scope.get("path", ""),
        )
        token = logs.bind(entry)
        start = time.perf_counter()
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                entry.status = int(message["status"])
                ours = (b"x-request-id", b"server-timing")
                sent = [(k, v) for k, v in message.get("headers", []) if k not in ours]
                backend = dict(sent).get(b"x-backend")
                entry.backend = None if backend is None else backend.decode("latin-1")
                timing = entry.server_timing((time.perf_counter() - start) * 1000)
                message = {
                    **message,
                    "headers": [
                        *sent,
                        (b"x-request-id", entry.request_id.encode()),
                        (b"server-timing", timing.encode()),
                    ],
                }
            elif message["type"] == "http.response.body":
                entry.bytes += len(message.get("body", b""))
            await send(message)

        try:
            with self.tracing.request_span(scope) as span:
                try:
                    await self.app(scope, receive, send_with_id)
                except Exception:
                    log.exception("unhandled error in %s %s", entry.method, entry.path)
                    if started:
                        raise  # the response is cut short; the server closes the connection
                    body = {"detail": "internal server error", "request_id": entry.request_id}
                    await JSONResponse(body, 500)(scope, _no_receive, send_with_id)
                finally:
                    entry.route = getattr(scope.get("route"), "path", "unmatched")
                    _end_span(span, entry)
        finally:
            entry.duration_ms = (time.perf_counter() - start) * 1000
            logs.log_request(entry, quiet=entry.path in UNMEASURED_PATHS)
            logs.unbind(token)


def _end_span(span: object, entry: logs.RequestLog) -> None:
    """The request span's name and attributes, once the route and status are known."""
    if span is None:
        return
    span.update_name(f"{entry.method} {entry.route}")  # type: ignore[attr-defined]
    attributes = {
        "http.route": entry.route,
        "http.response.status_code": entry.status,
        "distill3d.request_id": entry.request_id,
        "distill3d.backend": entry.backend or "",
        "distill3d.images": entry.images,
    }
    span.set_attributes(attributes)  # type: ignore[attr-defined]
    if entry.status >= 500:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, f"HTTP {entry.status}"))  # type: ignore[attr-defined]
