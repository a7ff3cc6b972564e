"""The exposition before and after traffic: label sets at 0 from the start, rejected images
counted per image, probes and scrapes left out of the request metrics, no _created series, the
standard process collectors, and promtool's lint."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from service_helpers import metric, run, serving


def test_series_exist_at_zero_and_rejections_count_images(settings_for) -> None:
    async def scenario() -> None:
        async with serving(settings_for(queue_size=4, warmup=False)) as client:
            before = (await client.get("/metrics")).text
            # Known label sets exist before the first event, so rate() sees its first step.
            for name, labels in (
                ("distill3d_rejected_total", {"backend": "torch", "reason": "queue_full"}),
                ("distill3d_rejected_requests_total", {"backend": "torch", "reason": "deadline"}),
                ("distill3d_fallbacks_total", {"reason": "pose_out_of_student_range"}),
                ("distill3d_fallbacks_total", {"reason": "student_error"}),
                ("distill3d_http_responses_total", {"endpoint": "/render", "status_class": "5xx"}),
                ("distill3d_inversions_total", {"role": "student", "outcome": "failed"}),
                ("distill3d_encode_seconds_count", {"format": "webm"}),
                ("distill3d_batch_size_count", {"backend": "volumetric"}),
            ):
                assert f"{name}{{" in before and metric(before, name, **labels) == 0, name
            assert "_created" not in before
            for standard in ("process_resident_memory_bytes", "python_info", "python_gc_"):
                assert standard in before
            # An image-level rejection of an N-frame orbit counts N images and one call.
            r = await client.get("/orbit", params={"seed": 1, "frames": 6, "format": "gif"})
            assert r.status_code == 429
            await client.get("/healthz")
            await client.get("/readyz")
            text = (await client.get("/metrics")).text
            queue_full = {"backend": "torch", "reason": "queue_full"}
            assert metric(text, "distill3d_rejected_total", **queue_full) == 6
            assert metric(text, "distill3d_rejected_requests_total", **queue_full) == 1
            orbit_4xx = {"endpoint": "/orbit", "method": "GET", "status_class": "4xx"}
            assert metric(text, "distill3d_http_responses_total", **orbit_4xx) == 1
            for probe in ("/healthz", "/readyz", "/metrics"):
                assert f'endpoint="{probe}"' not in text
            if shutil.which("promtool"):
                lint = subprocess.run(
                    ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
                )
                assert lint.returncode == 0, lint.stdout + lint.stderr

    run(scenario())


def test_promtool_lints_the_exposition() -> None:
    """The exposition at start, linted by Prometheus's own tool (naming, units, help)."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    from distill3d.service.app import create_app
    from distill3d.service.settings import ServiceSettings

    metrics = create_app(ServiceSettings(device="cpu")).state.metrics
    metrics.precreate_backend("torch")
    lint = subprocess.run(
        ["promtool", "check", "metrics"],
        input=metrics.exposition(),
        capture_output=True,
    )
    assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()
