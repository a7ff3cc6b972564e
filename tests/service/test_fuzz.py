"""Schemathesis over every operation in the service's own OpenAPI schema, against a real
`distill3d serve` (tiny models) on loopback: schema-valid data never gets a 5xx, and data the
schema calls invalid is rejected (4xx). At least 1,000 generated cases in all; a few minutes on
one core. DISTILL3D_FUZZ_CASES raises the total (CI can run more)."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from server_process import ServerProcess, serve_process

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import negative_data_rejection, not_a_server_error  # noqa: E402

# Spread over the operations with parameters or a body, half schema-valid and half invalid data
# (path-only operations, whose strings admit anything, have no invalid half: hence the margin);
# those without (health, metrics) have one request to make and get a handful. The budget is a
# total, so routes added to the app do not lengthen the run.
CASES = int(os.environ.get("DISTILL3D_FUZZ_CASES", "1300"))
MIN_CASES = 1000


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory) -> Iterator[ServerProcess]:
    """Both models (so backend=volumetric is fuzzed too), cheap limits: short orbits, one
    inversion step."""
    env = {
        "DISTILL3D_MAX_FRAMES": "6",
        "DISTILL3D_INVERT_STEPS": "1",
        "DISTILL3D_MAX_INVERT_STEPS": "2",
        "DISTILL3D_MAX_WAIT_MS": "0",
        "DISTILL3D_QUEUE_SIZE": "1000",
    }
    args = ["--teacher", str(checkpoints["teacher"]), "--student", str(checkpoints["student"])]
    log_path = tmp_path_factory.mktemp("fuzz") / "serve.log"
    with serve_process([*args, "--log-level", "warning"], log_path, env) as handle:
        yield handle


def _has_inputs(operation) -> bool:
    return bool(operation.body) or any(True for _ in operation.iter_parameters())


def _fuzz(operation, mode, examples: int, url: str, session, statuses: Counter) -> None:
    """``examples`` cases of one operation in one generation mode, each sent and checked."""

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case) -> None:
        response = case.call(base_url=url, session=session, timeout=60)
        statuses[(operation.label, mode.value, response.status_code)] += 1
        case.validate_response(response, checks=[not_a_server_error, negative_data_rejection])

    try:
        fuzz()
    except Unsatisfiable:
        # A schema that admits every value (a free-form path segment) has no negative data.
        if mode is not GenerationMode.NEGATIVE:
            raise
        statuses[(operation.label, "no negative data", 0)] += 0


def test_every_operation_survives_schema_driven_fuzzing(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    session = requests.Session()
    statuses: Counter[tuple[str, str, int]] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = [operation.label for operation in operations]
    with_inputs = [op for op in operations if _has_inputs(op)]
    per_mode = max(20, math.ceil(CASES / (2 * max(1, len(with_inputs)))))
    for operation in operations:
        if operation in with_inputs:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(operation, mode, per_mode, server.url, session, statuses)
        else:
            _fuzz(operation, GenerationMode.POSITIVE, 5, server.url, session, statuses)

    total = sum(statuses.values())
    summary = "\n".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    print(f"{total} cases over {len(labels)} operations:\n{summary}")
    assert {"POST /render", "POST /orbit", "GET /healthz", "GET /readyz"} <= set(labels)
    assert total >= MIN_CASES, summary
    assert not [k for k in statuses if k[2] >= 500], summary
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert "Traceback" not in server.log(), server.log()[-5000:]


def test_the_reported_orbit_is_a_422(server):
    """The case the first fuzz found: denormal radius and field of view were a 500
    (ZeroDivisionError computing the focal length)."""
    body = {
        "seed": 0,
        "conditioning_camera": [0.0] * 25,
        "radius": 5e-324,
        "fov_deg": 5e-324,
        "frames": 48,
        "format": "mp4",
    }
    response = httpx.post(f"{server.url}/orbit", json=body, timeout=60)
    assert response.status_code == 422
    fields = {tuple(e["loc"]) for e in response.json()["detail"]}
    assert ("body", "radius") in fields and ("body", "fov_deg") in fields
    valid = {**body, "radius": None, "fov_deg": None, "frames": 4, "format": "gif"}
    assert httpx.post(f"{server.url}/orbit", json=valid, timeout=60).status_code == 200
