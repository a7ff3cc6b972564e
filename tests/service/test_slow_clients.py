"""Slow and idle clients against a real `distill3d serve` on loopback: request heads and bodies
that trickle in are cut at their deadlines, and more idle connections than the cap leave the
service answering. Bounded: at most 100 connections, a few seconds each."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import httpx
import pytest
from server_process import ServerProcess, serve_process

from distill3d.service.server import AcceptErrorFilter, connection_cap

HEADER_S = 1.5
BODY_S = 2.0
MARGIN_S = 1.5
CAP = 16


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory) -> Iterator[ServerProcess]:
    env = {
        "DISTILL3D_HEADER_TIMEOUT_S": str(HEADER_S),
        "DISTILL3D_BODY_TIMEOUT_S": str(BODY_S),
        "DISTILL3D_KEEP_ALIVE_TIMEOUT_S": "30",  # longer than the head deadline: that one acts
        "DISTILL3D_MAX_CONNECTIONS": str(CAP),
    }
    args = ["--student", str(checkpoints["student"]), "--teacher", "none"]
    log_path = tmp_path_factory.mktemp("slow-clients") / "serve.log"
    with serve_process(args, log_path, env) as handle:
        yield handle


async def _closed_after(reader: asyncio.StreamReader, limit_s: float) -> tuple[float, bytes]:
    """Seconds until the server closes the connection (EOF or reset), and what it sent."""
    start = time.monotonic()
    received = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(4096), limit_s)
            if not chunk:
                break
            received += chunk
    except (ConnectionError, asyncio.TimeoutError):
        pass
    return time.monotonic() - start, received


async def _trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    try:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every_s)
    except ConnectionError:
        pass


def test_request_heads_that_never_complete_are_closed_at_the_deadline(server):
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n"

    async def nothing() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        seconds, _ = await _closed_after(reader, HEADER_S + 10)
        writer.close()
        return seconds

    async def half_a_head() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head[:30])
        await writer.drain()
        seconds, _ = await _closed_after(reader, HEADER_S + 10)
        writer.close()
        return seconds

    async def a_byte_at_a_time() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        sender = asyncio.create_task(_trickle(writer, head * 10, 0.1))
        seconds, received = await _closed_after(reader, HEADER_S + 10)
        sender.cancel()
        writer.close()
        assert received == b""
        return seconds

    async def after_a_response() -> float:
        """Keep-alive: one full request, then half of the next head."""
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head + b"\r\n")
        await writer.drain()
        response = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), 10)
        assert response.startswith(b"HTTP/1.1 200")
        writer.write(head[:20])
        await writer.drain()
        seconds, _ = await _closed_after(reader, HEADER_S + 10)
        writer.close()
        return seconds

    async def main() -> list[float]:
        return list(
            await asyncio.gather(nothing(), half_a_head(), a_byte_at_a_time(), after_a_response())
        )

    for seconds in asyncio.run(main()):
        assert HEADER_S - 0.3 <= seconds <= HEADER_S + MARGIN_S
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_a_body_slower_than_the_deadline_is_answered_408(server):
    body = b'{"seed": 3, "yaw": 10, "format": "jpeg"}'
    head = (
        b"POST /render HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )

    async def trickled() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head)
        await writer.drain()
        sender = asyncio.create_task(_trickle(writer, body, 0.25))  # 10 s for the whole body
        seconds, received = await _closed_after(reader, BODY_S + 10)
        sender.cancel()
        writer.close()
        return seconds, received

    async def slow_but_in_time() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head)
        for part in (body[:10], body[10:25], body[25:]):
            await asyncio.sleep(0.3)
            writer.write(part)
            await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 30)
        writer.close()
        return status

    async def main() -> tuple[tuple[float, bytes], bytes]:
        return await asyncio.gather(trickled(), slow_but_in_time())

    (seconds, received), in_time = asyncio.run(main())
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b"connection: close" in received.lower()
    assert BODY_S - 0.3 <= seconds <= BODY_S + MARGIN_S
    assert in_time.startswith(b"HTTP/1.1 200")


def test_more_idle_connections_than_the_cap_leave_the_service_answering(server):
    count = 50  # more than three times the cap

    async def main() -> tuple[list[float], int, float]:
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(count)]
        for i, (_, writer) in enumerate(idle):
            if i % 2:  # half of them start a head and stall
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        await asyncio.sleep(0.2)
        start = time.monotonic()
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            statuses = [(await client.get("/healthz")).status_code for _ in range(5)]
            status = statuses[-1] if set(statuses) == {200} else statuses
        answered_s = time.monotonic() - start
        closed = await asyncio.gather(*(_closed_after(r, HEADER_S + 10) for r, _ in idle))
        for _, writer in idle:
            writer.close()
        return [seconds for seconds, _ in closed], status, answered_s

    closed_after, status, answered_s = asyncio.run(main())
    assert status == 200 and answered_s < 3
    # Every idle one is gone by the head deadline: pushed out at the cap, or timed out.
    assert max(closed_after) <= HEADER_S + MARGIN_S
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_a_low_descriptor_limit_lowers_the_cap_instead_of_failing_accept(checkpoints, tmp_path):
    """ulimit -n 100 with the default max_connections (1000): the cap drops below the limit, so
    100 idle connections (more than there are descriptors) neither make accept() fail nor flood
    the log."""
    args = ["--student", str(checkpoints["student"]), "--teacher", "none"]
    env = {"DISTILL3D_HEADER_TIMEOUT_S": "5"}
    with serve_process(args, tmp_path / "serve.log", env, max_descriptors=100) as server:

        async def main() -> list[int]:
            idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(100)]
            async with httpx.AsyncClient(base_url=server.url, timeout=3) as client:
                statuses = [(await client.get("/healthz")).status_code for _ in range(5)]
            for _, writer in idle:
                writer.close()
            return statuses

        assert asyncio.run(main()) == [200] * 5
        log = server.log()
    assert "max_connections 1000 lowered to 36" in log
    assert "accept" not in log and len(log) < 20_000


def test_accept_errors_are_logged_once_per_interval():
    accept_filter = AcceptErrorFilter(interval_s=0.3)

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, None)

    passed = [
        accept_filter.filter(record("socket.accept() out of system resource")) for _ in range(500)
    ]
    assert passed.count(True) == 1 and accept_filter.suppressed == 499
    assert accept_filter.filter(record("something else")) is True  # other errors untouched
    time.sleep(0.35)
    later = record("socket.accept() out of system resource")
    assert accept_filter.filter(later) is True
    assert "499 more accept errors not logged" in later.getMessage()
    assert accept_filter.total == 501


def test_the_connection_cap_fits_the_descriptor_limit():
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(10) == 10
    if soft != resource.RLIM_INFINITY:
        assert connection_cap(10**6) <= soft - 64
