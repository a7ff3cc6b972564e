"""Batching, overload, deadlines, disconnects, fallback, auth and backend choice."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
from PIL import Image
from service_helpers import metric, run, serving

from distill3d.service.engine import Batcher, ClientDisconnected, QueueFull, RenderItem
from distill3d.service.metrics import ServiceMetrics


def _slow(backend, seconds):
    original = backend.render

    def render(w, c):
        time.sleep(seconds)
        return original(w, c)

    backend.render = render


def test_concurrent_requests_are_batched_together(settings_for):
    async def scenario():
        async with serving(settings_for(max_wait_ms=300, max_batch_size=8)) as client:
            responses = await asyncio.gather(
                *(client.get("/render", params={"seed": i, "yaw": 10}) for i in range(6))
            )
            assert all(r.status_code == 200 for r in responses)
            assert max(int(r.headers["x-batch-size"]) for r in responses) > 1
            text = (await client.get("/metrics")).text
            calls = metric(text, "distill3d_batch_size_count", backend="torch")
            images = metric(text, "distill3d_batch_size_sum", backend="torch")
            assert images == 6 and calls < 6  # batch-size histogram: mean > 1
            assert metric(text, "distill3d_batch_size_bucket", backend="torch", le="1.0") < calls
            # An image rendered alone matches it rendered in a batch (up to float rounding:
            # batched convolutions take other kernels).
            alone = await client.get("/render", params={"seed": 0, "yaw": 10})
            a, b = (
                np.asarray(Image.open(io.BytesIO(r.content)), int) for r in (alone, responses[0])
            )
            assert np.abs(a - b).max() <= 1

    run(scenario())


def test_overload_answers_429_with_retry_after_and_recovers(settings_for):
    async def scenario():
        settings = settings_for(queue_size=2, max_batch_size=1, max_wait_ms=0)
        async with serving(settings) as client:
            _slow(client.app.state.service.batchers["student"].backend, 0.3)
            responses = await asyncio.gather(
                *(client.get("/render", params={"seed": i}) for i in range(8))
            )
            codes = sorted(r.status_code for r in responses)
            assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
            refused = next(r for r in responses if r.status_code == 429)
            assert int(refused.headers["retry-after"]) >= 1
            assert "queue is full" in refused.json()["detail"]
            text = (await client.get("/metrics")).text
            assert metric(text, "distill3d_rejected_total", reason="queue_full") >= 1
            assert metric(text, "distill3d_queue_depth", backend="torch") == 0
            after = await client.get("/render", params={"seed": 1})  # recovered
            assert after.status_code == 200

    run(scenario())


def test_requests_past_their_deadline_get_504(settings_for):
    async def scenario():
        settings = settings_for(request_timeout_s=0.2, max_batch_size=1, max_wait_ms=0)
        async with serving(settings) as client:
            _slow(client.app.state.service.batchers["student"].backend, 0.5)
            responses = await asyncio.gather(
                *(client.get("/render", params={"seed": i}) for i in range(3))
            )
            assert {r.status_code for r in responses} == {504}
            assert "timed out" in responses[0].json()["detail"]
            await asyncio.sleep(1.6)  # let the slow batches drain
            text = (await client.get("/metrics")).text
            assert metric(text, "distill3d_rejected_total", reason="deadline") == 3
            assert metric(text, "distill3d_queue_depth", backend="torch") == 0

    run(scenario())


def test_a_client_that_goes_away_frees_its_queue_slots():
    class Backend:
        name, role, device, precision, max_batch = "fake", "student", "cpu", "fp32", 4

        def render(self, w, c):
            time.sleep(0.2)
            return np.zeros((len(w), 8, 8, 3), np.uint8)

    class Mapper:
        z_dim = w_dim = 4
        supports_conditioning = True

        def map(self, z, c):
            return z

        def truncate(self, w, psi):
            return w

    async def scenario():
        batcher = Batcher(Backend(), Mapper(), 4, 0.0, capacity=4, metrics=ServiceMetrics())
        item = RenderItem(c=np.zeros(25), c_cond=np.zeros(25), psi=1.0, w=np.zeros(4))

        async def gone() -> bool:
            return True

        # Not started: nothing takes items, so only the disconnect can free them.
        with pytest.raises(ClientDisconnected):
            await batcher.submit([item] * 4, timeout_s=5, is_disconnected=gone)
        assert batcher.depth == 0
        batcher.start()
        results = await batcher.submit([item] * 4, timeout_s=5)  # room again
        assert [r.batch_size for r in results] == [4] * 4
        with pytest.raises(QueueFull):
            await batcher.submit([item] * 5, timeout_s=5)
        await batcher.stop()

    run(scenario())


def test_failing_student_falls_back_to_the_teacher(settings_for):
    def broken(w, c):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    async def scenario():
        async with serving(settings_for()) as client:
            client.app.state.service.batchers["student"].backend.render = broken
            r = await client.get("/render", params={"seed": 4, "yaw": 10})
            assert r.status_code == 200
            assert r.headers["x-backend"] == "volumetric"
            assert r.headers["x-fallback"] == "student_error"
            orbit = await client.get("/orbit", params={"seed": 4, "frames": 4, "format": "gif"})
            assert orbit.status_code == 200 and orbit.headers["x-backend"] == "volumetric"
            text = (await client.get("/metrics")).text
            assert metric(text, "distill3d_fallbacks_total", reason="student_error") >= 2
            # Without the fallback the failure is a clear 503, not a 500.
            client.app.state.service.settings.fallback = False
            r = await client.get("/render", params={"seed": 4})
            assert r.status_code == 503 and "illegal memory access" in r.json()["detail"]

    run(scenario())


def test_poses_outside_the_students_range_go_to_the_teacher_or_422(settings_for):
    async def scenario():
        async with serving(settings_for()) as client:
            r = await client.get("/render", params={"seed": 1, "yaw": 60})  # student: 45
            assert r.headers["x-backend"] == "volumetric"
            assert r.headers["x-fallback"] == "pose_out_of_student_range"
            r = await client.get("/render", params={"seed": 1, "yaw": 60, "backend": "student"})
            assert r.status_code == 422
            assert "yaw 60.0 is outside [-45, 45] (the student model's range)" in r.text
            r = await client.get("/render", params={"seed": 1, "yaw": 120})
            assert r.status_code == 422 and "[-90, 90]" in r.text and "[-45, 45]" in r.text
            r = await client.get("/render", params={"seed": 1, "radius": 10})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "radius"]
            text = (await client.get("/metrics")).text
            assert (
                metric(text, "distill3d_fallbacks_total", reason="pose_out_of_student_range") == 1
            )

    run(scenario())


def test_api_key_guards_everything_but_health(settings_for):
    async def scenario():
        async with serving(settings_for(api_key="s3cret")) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            for path in ("/render?seed=1", "/orbit?seed=1", "/v1/models", "/metrics"):
                r = await client.get(path)
                assert r.status_code == 401, path
                assert r.headers["www-authenticate"] == "Bearer"
            wrong = await client.get("/v1/models", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = await client.get("/render?seed=1", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200

    run(scenario())


def test_auto_keeps_the_fastest_student_backend(settings_for, checkpoints):
    pytest.importorskip("onnxruntime")

    async def scenario():
        settings = settings_for(onnx_dir=checkpoints["export"])
        async with serving(settings) as client:
            models = (await client.get("/v1/models")).json()["models"]
            student = next(m for m in models if m["role"] == "student")
            assert set(student["candidates"]) == {"torch", "onnxruntime"}
            assert all("ms per image" in v for v in student["candidates"].values())
            chosen = student["backend"]
            times = {k: float(v.split()[0]) for k, v in student["candidates"].items()}
            assert chosen == min(times, key=times.get)
        # Each backend on its own renders the same picture.
        images = {}
        for name in ("torch", "onnxruntime"):
            async with serving(
                settings_for(onnx_dir=checkpoints["export"], student_backend=name)
            ) as c:
                r = await c.get("/render", params={"seed": 5, "yaw": 15})
                assert r.headers["x-backend"] == name
                images[name] = np.asarray(bytearray(r.content))
        import io

        from PIL import Image

        a, b = (np.asarray(Image.open(io.BytesIO(bytes(v))), dtype=int) for v in images.values())
        assert np.abs(a - b).max() <= 2

    run(scenario())


class _TimedBackend:
    """A fake student whose batches take ``seconds`` and which records every batch size."""

    name, role, device, precision, max_batch = "fake", "student", "cpu", "fp32", 8

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sizes: list[int] = []

    def render(self, w, c):
        self.sizes.append(len(w))
        time.sleep(self.seconds)
        return np.zeros((len(w), 8, 8, 3), np.uint8)


class _IdentityMapper:
    z_dim = w_dim = 4
    supports_conditioning = True

    def map(self, z, c):
        return z

    def truncate(self, w, psi):
        return w


_ITEM = RenderItem(c=np.zeros(25), c_cond=np.zeros(25), psi=1.0, w=np.zeros(4))


def test_a_lone_request_does_not_wait_for_a_batch_to_fill():
    """With a long max_wait (0.5 s), one client at a time is served at once, every time: it
    found the worker idle or was the only client of the batch before it."""

    async def scenario():
        backend = _TimedBackend(0.01)
        batcher = Batcher(backend, _IdentityMapper(), 8, 0.5, capacity=8, metrics=ServiceMetrics())
        batcher.start()
        waits = []
        for _ in range(5):
            (result,) = await batcher.submit([_ITEM], timeout_s=5)
            waits.append(result.queue_s)
        await batcher.stop()
        assert max(waits) < 0.1, waits  # the old policy waited the whole 0.5 s each time
        assert backend.sizes == [1] * 5

    run(scenario())


def test_busy_clients_keep_their_batches_whole():
    """Eight closed-loop clients: after the first round (one image found the worker idle, the
    other seven gathered while it ran), every batch holds all eight."""

    async def scenario():
        backend = _TimedBackend(0.05)
        batcher = Batcher(backend, _IdentityMapper(), 8, 0.2, capacity=16, metrics=ServiceMetrics())
        batcher.start()

        async def client(rounds: int) -> None:
            for _ in range(rounds):
                await batcher.submit([_ITEM], timeout_s=10)
                await asyncio.sleep(0.002)  # the client's own work between requests

        await asyncio.gather(*(client(6) for _ in range(8)))
        await batcher.stop()
        assert sum(backend.sizes) == 48
        assert backend.sizes[2:] == [8] * (len(backend.sizes) - 2), backend.sizes

    run(scenario())
