"""Request ids (accepted, validated, generated; on every response, 401s included) and the JSON
lines: one per request with its timings, and the id on every line written while it runs."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from service_helpers import run, serving

from distill3d.service.logs import JsonFormatter, RequestIdFilter, TextFormatter, logging_config


@contextmanager
def captured(formatter: logging.Formatter) -> Iterator[io.StringIO]:
    """Every record of the process, formatted as the service's handler formats them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_request_ids_and_one_json_line_per_request(settings_for) -> None:
    async def scenario() -> None:
        async with serving(settings_for(api_key="k", warmup=False)) as client:
            key = {"Authorization": "Bearer k"}
            refused = await client.get("/render", params={"seed": 1})
            assert refused.status_code == 401
            assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-request-id"])
            kept = await client.get("/healthz", headers={"X-Request-ID": "lb-7.a_b"})
            assert kept.headers["x-request-id"] == "lb-7.a_b"
            for bad in ("has space", "x" * 129, 'quote"d'):
                r = await client.get("/healthz", headers={"X-Request-ID": bad})
                assert r.headers["x-request-id"] != bad
            error = await client.get("/render", params={"seed": 1, "yaw": 500}, headers=key)
            assert error.status_code == 422 and error.headers["x-request-id"]

            student = client.app.state.service.batchers["student"].backend

            def broken(w, c):
                raise RuntimeError("student down")

            with captured(JsonFormatter()) as stream:
                headers = {**key, "X-Request-ID": "req-42"}
                ok = await client.get("/render", params={"seed": 3, "yaw": 5}, headers=headers)
                student.render = broken
                fell = await client.get(
                    "/render", params={"seed": 3}, headers={**key, "X-Request-ID": "req-43"}
                )
            assert ok.status_code == 200 and ok.headers["x-request-id"] == "req-42"
            assert fell.status_code == 200 and fell.headers["x-fallback"] == "student_error"
            lines = [json.loads(line) for line in stream.getvalue().splitlines()]
            access = [x for x in lines if x["logger"] == "distill3d.access"]
            (line,) = [x for x in access if x["request_id"] == "req-42"]
            assert line["method"] == "GET" and line["route"] == "/render"
            assert line["status"] == 200 and line["backend"] == "torch"
            assert line["batch_size"] == 1 and line["images"] == 1
            assert line["bytes"] == len(ok.content) and line["duration_ms"] > 0
            for timing in ("queue_ms", "model_ms", "encode_ms"):
                assert line[timing] is not None and line[timing] >= 0, timing
            # A line written inside the request (the fallback's warning) carries its id.
            warning = next(x for x in lines if "falling back" in x["message"])
            assert warning["request_id"] == "req-43" and warning["level"] == "WARNING"
            assert [x["request_id"] for x in access] == ["req-42", "req-43"]

    run(scenario())


def test_text_format_and_uvicorn_access_log_folded(settings_for) -> None:
    record = logging.LogRecord("distill3d.access", logging.INFO, "", 0, "GET /x 200", None, None)
    record.request_id, record.backend, record.bytes = "abc", "torch", 12
    line = TextFormatter().format(record)
    assert "[abc] GET /x 200" in line and "backend=torch bytes=12" in line
    config = logging_config("text", "info")
    assert config["loggers"]["uvicorn.access"]["propagate"] is False
    from distill3d.service.server import build_server

    server = build_server(settings_for(log_format="text"))
    assert server.config.access_log is False
    assert server.config.log_config["formatters"]["default"]["()"] is TextFormatter


def test_server_timing_names_the_app_queue_model_and_encode_times(settings_for) -> None:
    def durations(header: str) -> dict[str, float]:
        out = {}
        for metric in header.split(","):
            name, _, param = metric.strip().partition(";dur=")
            out[name] = float(param)
        return out

    async def scenario() -> None:
        async with serving(settings_for(render_cache_bytes=0)) as client:
            r = await client.get("/render", params={"seed": 4, "yaw": 10})
            timing = durations(r.headers["server-timing"])
            assert list(timing) == ["app", "queue", "model", "encode"]
            assert timing["app"] >= timing["model"] + timing["encode"] > 0
            assert abs(timing["model"] - float(r.headers["x-model-time-ms"])) < 0.06
            # Requests that run no model say only how long the app took.
            health = durations((await client.get("/healthz")).headers["server-timing"])
            assert list(health) == ["app"] and health["app"] >= 0

    run(scenario())
