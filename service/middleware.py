"""ASGI middleware of the service: the API key check, body size limits, request metrics.

They are plain ASGI callables (not ``BaseHTTPMiddleware``) so they see a request before FastAPI
parses anything: an unauthenticated request is refused before its body is read, and a body over
its limit before it is buffered.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import BodyTooLarge
from .metrics import ServiceMetrics

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
