"""Running the service under uvicorn with the limits a public port needs.

uvicorn on its own never times out a request head or body that trickles in (a slowloris client
holds its connection, and its file descriptor, for ever), has no cap on open connections (once
the descriptors run out every accept() fails and is logged), and on SIGTERM cancels whatever runs
past its grace period, which answers 500 with a CancelledError traceback. This module adds, around
``create_app(settings)``:

* a connection cap, a keep-alive timeout and a deadline for each request head (``_protocol``),
* a deadline for each request body, answered 408 (``ServerGuard``),
* a drain on SIGTERM: /readyz says 503 at once, new work is 503 with Retry-After, requests in
  flight get ``drain_timeout_s`` to finish and are answered 503 after that, then the process
  exits 0 (``DrainingServer``),
* rate-limited logging of accept() errors (``AcceptErrorFilter``),
* the service's log format (``logs.logging_config``: JSON lines or text, one line per request
  from the app, uvicorn's own access log off since that line replaces it).

``run(settings)`` is what ``distill3d serve`` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import signal
import time
from collections.abc import Iterable
from types import FrameType
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .logs import logging_config
from .settings import ServiceSettings

log = logging.getLogger(__name__)

# Routes that start rendering or fitting: refused while draining so the work already running
# can finish within the drain timeout.
WORK_PATHS = frozenset({"/render", "/orbit", "/invert", "/mesh", "/depth"})
READY_PATHS = frozenset({"/readyz", "/v2/health/ready"})  # ours and the Open Inference Protocol's
DRAIN_RETRY_AFTER_S = 5
# Descriptors kept free for the models, the log, the listening socket and the like when the
# connection cap is derived from the process's descriptor limit.
RESERVED_DESCRIPTORS = 64
# How long aborted requests get to send their 503 before uvicorn's own shutdown takes over.
ABORT_GRACE_S = 5.0


# -- accept() errors ----------------------------------------------------------------------------


class AcceptErrorFilter(logging.Filter):
    """Lets one accept() error through per ``interval_s`` and counts the others.

    When descriptors run out, asyncio reports every failed accept() with a traceback; under a
    connection flood that wrote over 100 MB of log in seconds. The first record of each interval
    passes and says how many were held back since the last one.
    """

    def __init__(self, interval_s: float) -> None:
        super().__init__("accept-errors")
        self.interval_s = interval_s
        self.suppressed = 0
        self.total = 0
        self._last = -float("inf")

    def filter(self, record: logging.LogRecord) -> bool:
        if "accept" not in record.getMessage():
            return True
        self.total += 1
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self.suppressed += 1
            return False
        self._last = now
        if self.suppressed:
            record.msg = f"{record.msg} ({self.suppressed} more accept errors not logged)"
            self.suppressed = 0
        return True


ACCEPT_LOGGERS = ("asyncio", "uvicorn.error")


def install_accept_filter(interval_s: float) -> AcceptErrorFilter:
    """One filter on the loggers that report accept() failures (replacing an earlier one)."""
    accept_filter = AcceptErrorFilter(interval_s)
    for name in ACCEPT_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, AcceptErrorFilter)]:
            logger.removeFilter(old)
        logger.addFilter(accept_filter)
    return accept_filter


# -- connections: cap and request-head deadline ------------------------------------------------


def connection_cap(requested: int) -> int:
    """``requested``, lowered to fit the descriptor limit: a cap above it would let accept()
    fail (and every client hang) before the cap ever applies."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    room = max(8, soft - RESERVED_DESCRIPTORS)
    if requested > room:
        log.warning(
            "max_connections %d lowered to %d: the descriptor limit is %d (ulimit -n)",
            requested,
            room,
            soft,
        )
        return room
    return requested


def _protocol(max_connections: int, header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a connection cap and a deadline for each request head.

    The head deadline runs from the moment a connection is made, and again from the end of each
    response (uvicorn's keep-alive timer stops at the first byte, so a head sent a byte at a time
    would otherwise be waited for without end). At the cap, a new connection takes the place of
    the one that has waited longest without sending a complete head; if every connection is busy
    with a request, the new one is closed at once: refused fast rather than left to hang.
    """

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._head_timer: asyncio.TimerHandle | None = None
            self._waiting_since = time.monotonic()
            if len(self.connections) >= max_connections and not self._evict_one():
                transport.abort()
                return
            super().connection_made(transport)
            self._arm_head_timer()

        def waiting_for_head(self) -> bool:
            """No request of this connection is being read or answered."""
            idle = self.cycle is None or self.cycle.response_complete
            return idle and self.conn.their_state is h11.IDLE

        def _evict_one(self) -> bool:
            waiting = [
                c
                for c in self.connections
                if isinstance(c, GuardedH11Protocol) and c.waiting_for_head()
            ]
            if not waiting:
                return False
            oldest = min(waiting, key=lambda c: c._waiting_since)
            oldest.close_idle()
            self.connections.discard(oldest)
            return True

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._waiting_since = time.monotonic()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_deadline)

        def _head_deadline(self) -> None:
            self._head_timer = None
            if self.waiting_for_head():
                self.close_idle()

        def close_idle(self) -> None:
            """Close a connection that is not in a request (no response owed)."""
            if self.transport is None or self.transport.is_closing():
                return
            with contextlib.suppress(h11.LocalProtocolError):
                self.conn.send(h11.ConnectionClosed())
            self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if self.transport is None:  # refused in connection_made
                return
            super().connection_lost(exc)

    return GuardedH11Protocol


# -- requests: body deadline and drain ----------------------------------------------------------


def _json_response(status: int, body: dict[str, Any], extra: Iterable[tuple[bytes, bytes]] = ()):
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"connection", b"close"),
        *extra,
    ]
    start: Message = {"type": "http.response.start", "status": status, "headers": headers}
    return start, {"type": "http.response.body", "body": data, "more_body": False}


class _InFlight:
    """One request passing through the guard: whether its response has begun, and the future
    that ends it early (with the status to answer) when its body is late or the drain is over."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.stop: asyncio.Future[int] = loop.create_future()
        self.response_started = False
        self.body_done = False

    def end(self, status: int) -> None:
        if not self.stop.done():
            self.stop.set_result(status)


class ServerGuard:
    """ASGI middleware around the whole app: body deadline (408) and the drain (503).

    Each request runs in a child task so that it can be ended from outside without the
    cancellation reaching uvicorn (which would log a traceback and answer 500). It sits outside
    the app's own middleware, so a trickled body is timed even while the app's body-size limit
    is still reading it.
    """

    def __init__(self, app: ASGIApp, body_timeout_s: float) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.draining = False
        self.requests: set[_InFlight] = set()

    @property
    def in_flight(self) -> int:
        return len(self.requests)

    def start_drain(self) -> None:
        self.draining = True

    def abort_all(self, status: int = 503) -> int:
        """End every request still running (the drain timeout has passed)."""
        for request in self.requests:
            request.end(status)
        return len(self.requests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self.draining and path in READY_PATHS:
            await self._send_all(send, _json_response(503, {"status": "draining"}))
            return
        if self.draining and _is_work(path):
            retry = [(b"retry-after", str(DRAIN_RETRY_AFTER_S).encode())]
            body = {"detail": "the service is shutting down; retry (another instance)"}
            await self._send_all(send, _json_response(503, body, retry))
            return
        await self._guarded(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        request = _InFlight(loop)
        headers = dict(scope.get("headers", []))
        has_body = headers.get(b"content-length", b"0") not in (b"0", b"") or (
            b"transfer-encoding" in headers
        )
        request.body_done = not has_body

        async def timed_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                request.body_done = True
            return message

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                request.response_started = True
                if self.draining:  # let the client reconnect elsewhere
                    message = dict(message)
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        def body_deadline() -> None:
            if not request.body_done:
                request.end(408)

        timer = loop.call_later(self.body_timeout_s, body_deadline) if has_body else None
        self.requests.add(request)
        child = asyncio.ensure_future(self.app(scope, timed_receive, watched_send))
        try:
            await asyncio.wait({child, request.stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            child.cancel()
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self.requests.discard(request)
        if child.done():
            child.result()  # the app's own exceptions go to uvicorn as before
            return
        status = request.stop.result()
        child.cancel()
        try:
            await child
        except asyncio.CancelledError:
            pass  # the end asked for
        except Exception:
            log.exception("request failed while being ended with %d", status)
        if request.response_started:
            return  # uvicorn closes a connection whose response was cut short
        if status == 408:
            body = {"detail": f"request body not received within {self.body_timeout_s:g} s"}
            log.info("408: %s %s body too slow", scope.get("method"), scope.get("path"))
            await self._send_all(send, _json_response(408, body))
        else:
            retry = [(b"retry-after", str(DRAIN_RETRY_AFTER_S).encode())]
            body = {"detail": "the service shut down before this request finished; retry"}
            await self._send_all(send, _json_response(status, body, retry))

    @staticmethod
    async def _send_all(send: Send, messages: tuple[Message, Message]) -> None:
        for message in messages:
            await send(message)


# -- the server: drain on SIGTERM ---------------------------------------------------------------


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain between the first SIGTERM/SIGINT and the shutdown.

    A second signal skips the rest of the drain (uvicorn's own graceful shutdown follows); a
    third SIGINT forces the exit. A drained shutdown exits 0: uvicorn's habit of re-raising the
    signal after shutdown (so the process dies of it, exit 143) is not kept.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        guard: ServerGuard,
        drain_timeout_s: float,
        shutdown_delay_s: float = 0.0,
    ) -> None:
        super().__init__(config)
        self.guard = guard
        self.drain_timeout_s = drain_timeout_s
        self.shutdown_delay_s = shutdown_delay_s
        self.drain_started: float | None = None
        self.aborted_at: float | None = None
        self.announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            self.guard.start_drain()  # readiness flips now, not at the next tick
            return
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit:
            self._drain_step(time.monotonic())
        return await super().on_tick(counter)

    def _drain_step(self, now: float) -> None:
        elapsed = now - (self.drain_started or now)
        if not self.announced:  # here, not in the signal handler: logging takes locks
            self.announced = True
            log.warning(
                "draining: /readyz is 503, new work 503; %d request(s) in flight get up to "
                "%g s (drain_timeout_s)",
                self.guard.in_flight,
                self.drain_timeout_s,
            )
        if self.guard.in_flight == 0 and elapsed >= self.shutdown_delay_s:
            log.info("drained after %.1f s; shutting down", elapsed)
            self.should_exit = True
        elif self.aborted_at is None and elapsed >= self.drain_timeout_s:
            count = self.guard.abort_all(503)
            log.warning("drain timeout: %d request(s) still running answered 503", count)
            self.aborted_at = now
        elif self.aborted_at is not None and now - self.aborted_at >= ABORT_GRACE_S:
            self.should_exit = True


def build_server(
    settings: ServiceSettings, log_level: str = "info", graph_exporter: Any = None
) -> DrainingServer:
    """The app in its guard, uvicorn configured from ``settings``, not yet started
    (``graph_exporter``: see ``create_app``)."""
    from .app import create_app

    app = create_app(settings, graph_exporter=graph_exporter)
    guard = ServerGuard(app, body_timeout_s=settings.body_timeout_s)
    protocol = _protocol(connection_cap(settings.max_connections), settings.header_timeout_s)
    config = uvicorn.Config(
        guard,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        log_config=logging_config(settings.log_format, log_level),
        access_log=False,  # the app logs each request itself, with its id and timings
        http=protocol,
        backlog=settings.backlog,
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=int(ABORT_GRACE_S),
        lifespan="on",
    )
    install_accept_filter(settings.accept_error_log_interval_s)
    return DrainingServer(config, guard, settings.drain_timeout_s, settings.shutdown_delay_s)


def run(settings: ServiceSettings, log_level: str = "info", graph_exporter: Any = None) -> None:
    """Serve until SIGTERM/SIGINT, drain, and return (one worker: it owns the models and the
    batching queue; several processes would split the queue)."""
    build_server(settings, log_level, graph_exporter).run()


def _is_work(path: str) -> bool:
    """Whether a request to ``path`` runs a model (refused once the drain has begun)."""
    return path in WORK_PATHS or (path.startswith("/v2/models/") and path.endswith("/infer"))
