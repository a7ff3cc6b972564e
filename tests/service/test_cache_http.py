"""The render cache through HTTP: hits are byte-identical and run no model, ETags turn repeats
into 304s without a model call, the byte budget holds under a flood of distinct requests, a
fallback after a student error is never stored, and render_cache_bytes=0 turns it off."""

from __future__ import annotations

import time

import numpy as np
from service_helpers import metric, run, serving


def _model_calls(text: str) -> float:
    """Batched model calls so far, every backend together."""
    return sum(
        metric(text, "distill3d_batch_size_count", backend=b) for b in ("torch", "volumetric")
    )


async def _scrape(client) -> str:
    return (await client.get("/metrics")).text


def test_hit_is_byte_identical_and_runs_no_model(settings_for):
    async def scenario():
        async with serving(settings_for()) as client:
            params = {"seed": 3, "yaw": 20, "pitch": 5}
            first = await client.get("/render", params=params)
            assert first.status_code == 200, first.text
            assert first.headers["x-cache"] == "miss"
            etag = first.headers["etag"]
            assert etag.startswith('"') and len(etag) == 66  # strong: no W/ prefix
            assert first.headers["cache-control"] == "public, max-age=3600"
            before = await _scrape(client)
            second = await client.get("/render", params=params)
            assert second.headers["x-cache"] == "hit"
            assert second.content == first.content
            assert second.headers["etag"] == etag
            assert second.headers["x-backend"] == "torch"
            assert "x-model-time-ms" not in second.headers  # no render, no render timing
            # The same request as POST finds the same entry (no validators on POST answers).
            posted = await client.post("/render", json=params)
            assert posted.headers["x-cache"] == "hit" and posted.content == first.content
            assert "etag" not in posted.headers
            # Another format, pose or quality is another key.
            other = await client.get("/render", params={**params, "format": "jpeg"})
            assert other.headers["x-cache"] == "miss" and other.headers["etag"] != etag
            after = await _scrape(client)
            assert _model_calls(after) == _model_calls(before) + 1  # the jpeg only
            assert metric(after, "distill3d_render_cache_events_total", event="hit") == 2
            assert metric(after, "distill3d_render_cache_events_total", event="evicted") == 0
            assert metric(after, "distill3d_render_cache_entries") == 2
            assert metric(after, "distill3d_render_cache_bytes") > len(first.content)

    run(scenario())


def test_if_none_match_is_304_without_a_model_call(settings_for):
    async def scenario():
        async with serving(settings_for(render_cache_bytes=0)) as client:
            params = {"seed": 4, "yaw": -10}
            first = await client.get("/render", params=params)
            assert "x-cache" not in first.headers  # off: no look-up
            etag = first.headers["etag"]
            before = await _scrape(client)
            for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
                r = await client.get("/render", params=params, headers={"If-None-Match": header})
                assert r.status_code == 304, header
                assert r.content == b"" and r.headers["etag"] == etag
                assert "max-age" in r.headers["cache-control"]
            stale = await client.get("/render", params=params, headers={"If-None-Match": '"x"'})
            assert stale.status_code == 200 and stale.content == first.content
            after = await _scrape(client)
            assert _model_calls(after) == _model_calls(before) + 1  # only the stale one
            # The orbit video has validators too.
            video = await client.get("/orbit", params={"seed": 4, "frames": 2, "format": "gif"})
            again = await client.get(
                "/orbit",
                params={"seed": 4, "frames": 2, "format": "gif"},
                headers={"If-None-Match": video.headers["etag"]},
            )
            assert again.status_code == 304

    run(scenario())


def test_budget_holds_under_a_flood_and_off_switch(settings_for):
    budget = 40_000  # a handful of 64 x 64 PNGs

    async def scenario():
        async with serving(settings_for(render_cache_bytes=budget)) as client:
            cache = client.app.state.service.cache
            sizes = []
            for seed in range(30):
                r = await client.get("/render", params={"seed": seed})
                assert r.status_code == 200
                sizes.append(len(r.content))
                assert cache.stats().bytes <= budget
            text = await _scrape(client)
            assert metric(text, "distill3d_render_cache_bytes") <= budget
            assert metric(text, "distill3d_render_cache_events_total", event="evicted") > 0
            assert metric(text, "distill3d_render_cache_events_total", event="store") == 30
            entries = metric(text, "distill3d_render_cache_entries")
            assert 1 <= entries < 30
            # The most recent seed is still there, the first long gone.
            assert (await client.get("/render", params={"seed": 29})).headers["x-cache"] == "hit"
            assert (await client.get("/render", params={"seed": 0})).headers["x-cache"] == "miss"
        async with serving(settings_for(render_cache_bytes=0)) as client:
            before = await _scrape(client)
            for _ in range(2):
                r = await client.get("/render", params={"seed": 1})
                assert "x-cache" not in r.headers
            after = await _scrape(client)
            assert _model_calls(after) == _model_calls(before) + 2
            assert metric(after, "distill3d_render_cache_events_total", event="miss") == 0

    run(scenario())


def test_fallback_after_student_error_is_not_cached(settings_for):
    async def scenario():
        async with serving(settings_for()) as client:
            service = client.app.state.service
            student = service.batchers["student"].backend

            def broken(w, c):
                raise RuntimeError("student down")

            student.render = broken
            r = await client.get("/render", params={"seed": 2})
            assert r.status_code == 200 and r.headers["x-fallback"] == "student_error"
            assert r.headers["cache-control"] == "no-store" and "etag" not in r.headers
            assert len(service.cache) == 0

    run(scenario())


def test_hit_latency_against_miss(settings_for, capsys):
    """p50 of 50 hits vs 50 misses (distinct seeds), in process; printed for the record."""

    async def scenario():
        async with serving(settings_for()) as client:
            misses, hits = [], []
            for seed in range(50):
                start = time.perf_counter()
                await client.get("/render", params={"seed": 1000 + seed})
                misses.append(time.perf_counter() - start)
            for _ in range(50):
                start = time.perf_counter()
                r = await client.get("/render", params={"seed": 1000})
                hits.append(time.perf_counter() - start)
                assert r.headers["x-cache"] == "hit"
            return float(np.median(misses)), float(np.median(hits))

    miss, hit = run(scenario())
    with capsys.disabled():
        print(f"\nrender cache p50: miss {miss * 1e3:.2f} ms, hit {hit * 1e3:.2f} ms")
    assert hit < miss
