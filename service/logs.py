"""Request ids and the service's log lines: one JSON object per line, or text for a terminal.

Each request gets an id (the client's ``X-Request-ID`` when it is a plausible one, else a new
one) and a :class:`RequestLog` kept in a context variable, so every log line written while the
request runs carries its id without being passed it, and the batching engine and the encoder can
add their timings to the request they serve. When the request ends one line sums it up
(``distill3d.access``): it replaces uvicorn's access log, which knows neither the route template
nor the backend, batch or timings.

The JSON formatter is a few lines over the standard library's ``json`` rather than a logging
library, so the service's base install needs nothing more.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Iterable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

LogFormat = Literal["json", "text"]
REQUEST_ID_HEADER = b"x-request-id"
ACCESS_LOGGER = "distill3d.access"
# Ids a client may choose: long enough for a UUID or a trace id, and nothing that could forge a
# log line or a header (no spaces, quotes, control characters).
_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

# The attributes every LogRecord has; whatever else a record carries came from ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def request_id(header: bytes | None) -> str:
    """The client's id when it is 1-128 characters of ``[A-Za-z0-9._-]``, else a new one (a
    malformed id is replaced, not refused: it is for correlation, not a contract)."""
    if header is not None:
        text = header.decode("latin-1")
        if _VALID_ID.fullmatch(text):
            return text
    return uuid.uuid4().hex


class _Result(Protocol):
    batch_id: int
    batch_size: int
    model_s: float
    queue_s: float
    backend: str


@dataclass
class RequestLog:
    """What one request did, filled in as it runs; ``fields()`` is its access-log line."""

    request_id: str
    method: str
    path: str
    route: str = "unmatched"
    status: int = 500
    backend: str | None = None
    images: int = 0
    batch_size: int | None = None
    queue_ms: float | None = None
    model_ms: float | None = None
    encode_ms: float | None = None
    bytes: int = 0
    duration_ms: float = 0.0
    _batches: set[tuple[str, int]] = field(default_factory=set, repr=False)

    def add_results(self, results: Iterable[_Result]) -> None:
        """Images rendered for this request: the largest batch any was in, the longest any
        waited, and the model time of each distinct batch once (an orbit spans several)."""
        for r in results:
            self.images += 1
            self.batch_size = max(self.batch_size or 0, r.batch_size)
            self.queue_ms = max(self.queue_ms or 0.0, r.queue_s * 1000)
            if (r.backend, r.batch_id) not in self._batches:
                self._batches.add((r.backend, r.batch_id))
                self.model_ms = (self.model_ms or 0.0) + r.model_s * 1000

    def add_encode(self, seconds: float) -> None:
        self.encode_ms = (self.encode_ms or 0.0) + seconds * 1000

    def server_timing(self, app_ms: float) -> str:
        """The W3C ``Server-Timing`` header: ``app`` (request received -> response started),
        then the queue wait, model and encoding times this request had (browsers' developer
        tools show them; the load test subtracts the model from ``app``)."""
        parts = [f"app;dur={app_ms:.2f}"]
        for name in ("queue", "model", "encode"):
            value = getattr(self, f"{name}_ms")
            if value is not None:
                parts.append(f"{name};dur={value:.2f}")
        return ", ".join(parts)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "path": self.path,
            "status": self.status,
            "backend": self.backend,
            "images": self.images,
            "batch_size": self.batch_size,
            "bytes": self.bytes,
            "duration_ms": round(self.duration_ms, 2),
        }
        for name in ("queue_ms", "model_ms", "encode_ms"):
            value = getattr(self, name)
            out[name] = None if value is None else round(value, 2)
        return out


_current: ContextVar[RequestLog | None] = ContextVar("distill3d_request", default=None)


def current() -> RequestLog | None:
    """The request being served in this context (None outside a request, e.g. in a worker)."""
    return _current.get()


def bind(entry: RequestLog) -> Token[RequestLog | None]:
    return _current.set(entry)


def unbind(token: Token[RequestLog | None]) -> None:
    _current.reset(token)


def log_request(entry: RequestLog, quiet: bool = False) -> None:
    """The request's one access line (DEBUG for probes and scrapes: they come every few seconds
    and say nothing about the traffic)."""
    level = logging.DEBUG if quiet else logging.INFO
    message = f"{entry.method} {entry.route} {entry.status} {entry.duration_ms:.1f} ms"
    logging.getLogger(ACCESS_LOGGER).log(level, message, extra=entry.fields())


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record written while a request runs (on the handler, so
    records of every logger, uvicorn's and the libraries' too, get it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            entry = _current.get()
            record.request_id = None if entry is None else entry.request_id
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, request_id,
    every ``extra=`` field, and the traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger [request id] message key=value ...`` for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):
            record.request_id = None
        extras = {
            k: v
            for k, v in _extras(record).items()
            if k != "request_id" and v is not None and k not in ("method", "route", "status")
        }
        line = super().format(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def logging_config(log_format: LogFormat = "json", level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the service under uvicorn (``uvicorn.Config``'s
    ``log_config``): one handler on stderr in ``log_format``, uvicorn's loggers sent through
    it, and uvicorn's access logger silenced (the access line is ``distill3d.access``)."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": {"()": formatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": sys.stderr,
                "formatter": "default",
                "filters": ["request_id"],
            }
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True, "level": level.upper()},
            "uvicorn.error": {"handlers": [], "propagate": True, "level": level.upper()},
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "CRITICAL"},
        },
    }
