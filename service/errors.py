"""Typed errors of the HTTP API and the handlers that map each to its status code.

Routes and the render service raise exceptions that say what went wrong (a field that cannot be
served, a body too large, an upload in a format we do not decode, a busy inversion slot); this
module alone decides how each is answered, so a status code never depends on the wording of a
message.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from .engine import BackendFailed, ClientDisconnected, DeadlineExceeded, QueueFull


class RequestError(Exception):
    """A request that is well-formed but cannot be served as asked: 422 naming the field."""

    status = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class MalformedUpload(RequestError):
    """An upload body that cannot be parsed (a broken multipart form): 400."""

    status = 400


class PayloadTooLarge(RequestError):
    """A body over its byte limit, or an image over its pixel limit: 413."""

    status = 413


class UnsupportedMediaType(RequestError):
    """A Content-Type, or an image format, that the route does not take: 415."""

    status = 415


class BodyTooLarge(Exception):
    """A request body over its limit, found while the route reads it: 413 naming the setting."""

    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(f"request body larger than {limit} bytes ({setting})")


class Busy(Exception):
    """All slots of a one-at-a-time operation are taken: 429 with Retry-After."""

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(Exception):
    """The models are still loading: 503 with Retry-After."""


class InternalFailure(Exception):
    """The work itself failed (an exception inside an inversion): 500 with its message."""


def field_detail(field: str, message: str, location: str = "body") -> list[dict[str, Any]]:
    """FastAPI's validation-error shape for one field."""
    return [{"loc": [location, *field.split(".")], "msg": message, "type": "value_error"}]


async def _request_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    where = "query" if request.method == "GET" else "body"
    return JSONResponse({"detail": field_detail(exc.field, str(exc), where)}, exc.status)


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    """422 without echoing the input: it may be huge, or NaN (which JSON cannot carry)."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, 422)


async def _busy(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Busy | QueueFull)
    return JSONResponse({"detail": str(exc)}, 429, headers={"Retry-After": str(exc.retry_after_s)})


async def _too_large(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, 413)


async def _deadline(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"render timed out ({exc}); the service is overloaded, retry later"}, 504
    )


async def _gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)


async def _backend_failed(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"rendering failed: {exc}"}, 503)


async def _not_ready(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": "models are still loading"}, 503, headers={"Retry-After": "5"})


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, 500)


def install_error_handlers(app: FastAPI) -> None:
    """Register every typed error's answer on ``app``."""
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(BodyTooLarge, _too_large)
    app.add_exception_handler(Busy, _busy)
    app.add_exception_handler(QueueFull, _busy)
    app.add_exception_handler(DeadlineExceeded, _deadline)
    app.add_exception_handler(ClientDisconnected, _gone)
    app.add_exception_handler(BackendFailed, _backend_failed)
    app.add_exception_handler(NotReady, _not_ready)
    app.add_exception_handler(InternalFailure, _internal)
