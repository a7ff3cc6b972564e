"""Dynamic batching: one bounded queue and one worker per backend.

Requests put images (``RenderItem``) on the queue and one worker runs them in batches of up to
``max_batch`` in a dedicated thread, so the event loop keeps serving while a model runs.

When to start a batch: an image that finds the worker idle starts at once (a lone client never
waits for company that is not coming); whatever arrives while a batch runs is gathered for the
next one. When a batch ends, its clients are likely to come back with their next request within
moments (closed-loop clients: a viewer, a load test, a pipeline), so for up to ``max_wait_s`` the
worker waits until as many images are queued as the batch just served plus those already
waiting; that keeps the batches of N busy clients whole instead of splitting them into 1 and N-1. A full queue refuses new work
(``QueueFull``, answered 429 with Retry-After) instead of growing memory; an image still queued
past its deadline is dropped (``DeadlineExceeded``, 504); a client that goes away has its images
removed from the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import logs, tracing
from .backends import Backend, Mapper
from .metrics import ServiceMetrics

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.1


class QueueFull(Exception):
    def __init__(self, backend: str, retry_after_s: int) -> None:
        super().__init__(f"the {backend} queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    pass


class ClientDisconnected(Exception):
    pass


class BackendFailed(Exception):
    """The backend raised while rendering a batch; every image of the batch gets this."""


@dataclass
class RenderItem:
    """One image to render: a latent (z to map, w, or per-layer ws), truncation, two cameras."""

    c: np.ndarray  # target camera [25]
    c_cond: np.ndarray  # conditioning camera of the mapping [25]
    psi: float
    z: np.ndarray | None = None
    w: np.ndarray | None = None
    ws: np.ndarray | None = None  # [num_ws, w_dim], final: truncation already applied


@dataclass
class RenderResult:
    image: np.ndarray  # uint8 [H, W, 3]
    backend: str
    batch_size: int
    model_s: float  # the batch's model time
    queue_s: float  # this image's wait before its batch started
    batch_id: int = 0  # which of its backend's batches drew it (a request's log sums each once)


@dataclass
class _Job:
    item: RenderItem
    future: asyncio.Future[RenderResult]
    enqueued: float
    deadline: float
    started: float = field(default=0.0)
    trace: tracing.JobTrace | None = None  # the request span its batch's span links to


class Batcher:
    def __init__(
        self,
        backend: Backend,
        mapper: Mapper,
        max_batch: int,
        max_wait_s: float,
        capacity: int,
        metrics: ServiceMetrics,
    ) -> None:
        self.backend = backend
        self.mapper = mapper
        self.max_batch = max(1, min(max_batch, backend.max_batch))
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        self.metrics = metrics
        self._pending: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"render-{backend.name}")
        self._task: asyncio.Task[None] | None = None
        self._last_batch_s = 1.0
        # After a batch: how many images to gather for the next one, and until when (loop time).
        self._expected = 1
        self._linger_until = 0.0
        self._batches = 0
        metrics.precreate_backend(backend.name)

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.backend.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(DeadlineExceeded("the service is shutting down"))
        self._pending.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def render_now(self, items: list[RenderItem]) -> np.ndarray:
        """Render synchronously in the calling thread (warm-up and timing, before serving)."""
        return self._render(items)

    def _retry_after(self) -> int:
        batches = math.ceil((self.depth + 1) / self.max_batch)
        return max(1, math.ceil(batches * self._last_batch_s))

    def _set_depth(self) -> None:
        self.metrics.queue_depth.labels(self.backend.name).set(len(self._pending))

    async def submit(
        self,
        items: list[RenderItem],
        timeout_s: float,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> list[RenderResult]:
        """Queue ``items`` and wait for their images (in order)."""
        if len(self._pending) + len(items) > self.capacity:  # or more than the queue ever holds
            self._count_rejected("queue_full", len(items))
            raise QueueFull(self.backend.name, self._retry_after())
        loop = asyncio.get_running_loop()
        now, wall_ns = loop.time(), tracing.now_ns()
        trace = tracing.job_trace()
        jobs = [
            _Job(item, loop.create_future(), now, now + timeout_s, trace=trace) for item in items
        ]
        self._pending.extend(jobs)
        self._set_depth()
        self._arrived.set()
        gathered = asyncio.gather(*(j.future for j in jobs))
        try:
            while True:
                remaining = jobs[0].deadline - loop.time()
                if remaining <= 0:
                    raise DeadlineExceeded(f"no result within {timeout_s:g} s")
                done, _ = await asyncio.wait({gathered}, timeout=min(remaining, DISCONNECT_POLL_S))
                if done:
                    results: list[RenderResult] = gathered.result()
                    self._trace_wait(jobs, wall_ns, None)
                    entry = logs.current()
                    if entry is not None:
                        entry.add_results(results)
                    return results
                if is_disconnected is not None and await is_disconnected():
                    raise ClientDisconnected()
        except BaseException as exc:
            reasons = {DeadlineExceeded: "deadline", ClientDisconnected: "disconnected"}
            if type(exc) in reasons:
                self._count_rejected(reasons[type(exc)], sum(not _rendered(j) for j in jobs))
            self._trace_wait(jobs, wall_ns, type(exc).__name__)
            for job in jobs:
                if not job.future.done():
                    job.future.cancel()
            self._pending = deque(j for j in self._pending if not j.future.done())
            self._set_depth()
            gathered.cancel()
            gathered.add_done_callback(_consume)
            raise

    def _count_rejected(self, reason: str, images: int) -> None:
        """One refused or abandoned call of ``images`` images that were not rendered."""
        name = self.backend.name
        self.metrics.rejected.labels(name, reason).inc(images)
        self.metrics.rejected_requests.labels(name, reason).inc()

    def _trace_wait(self, jobs: list[_Job], wall_ns: int, error: str | None) -> None:
        """The ``queue wait`` span of one call: from queueing until the batch holding its last
        image started (or until now, when it ended without all of them rendered)."""
        if jobs[0].trace is None:
            return
        starts = [j.started for j in jobs if j.started]
        if error is None and len(starts) == len(jobs):
            end_ns = wall_ns + int((max(starts) - jobs[0].enqueued) * 1e9)
        else:
            end_ns = tracing.now_ns()
        attributes = {"distill3d.backend": self.backend.name, "distill3d.images": len(jobs)}
        tracing.closed_span("queue wait", wall_ns, end_ns, error, **attributes)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._next_batch_ready(loop)
                batch = self._take_batch(loop)
                if batch:
                    await self._run_batch(loop, batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # the worker must outlive any one batch
                log.exception("batch worker for %s", self.backend.name)

    async def _next_batch_ready(self, loop: asyncio.AbstractEventLoop) -> None:
        """Return when a batch should start (see the module docstring for the policy)."""
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        target = min(self.max_batch, self._expected)
        while len(self._pending) < target:
            remaining = self._linger_until - loop.time()
            if remaining <= 0:  # past the window (or an idle worker): start with what is here
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Job]:
        now = loop.time()
        batch: list[_Job] = []
        while self._pending and len(batch) < self.max_batch:
            job = self._pending.popleft()
            if job.future.done():
                continue
            if now > job.deadline:
                job.future.set_exception(DeadlineExceeded("waited past its deadline in the queue"))
                continue
            job.started = now
            batch.append(job)
        self._set_depth()
        return batch

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        try:
            await self._render_batch(loop, batch)
        finally:
            self._expected = len(batch) + len(self._pending)
            self._linger_until = loop.time() + self.max_wait_s

    async def _render_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        name = self.backend.name
        for job in batch:
            self.metrics.queue_wait.labels(name).observe(job.started - job.enqueued)
        self.metrics.batch_size.labels(name).observe(len(batch))
        self._batches += 1
        batch_id = self._batches
        attributes = {"distill3d.backend": name, "distill3d.batch_size": len(batch)}
        start = time.perf_counter()
        with tracing.batch_span([j.trace for j in batch], **attributes) as span:
            try:
                images = await loop.run_in_executor(
                    self._executor, self._render, [j.item for j in batch]
                )
            except Exception as exc:
                log.warning("%s failed on a batch of %d: %s", name, len(batch), exc)
                tracing.set_error(span, f"{type(exc).__name__}: {exc}")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(BackendFailed(f"{type(exc).__name__}: {exc}"))
                return
        seconds = time.perf_counter() - start
        self._last_batch_s = seconds
        self.metrics.model_time.labels(name).observe(seconds)
        for job, image in zip(batch, images, strict=True):
            if not job.future.done():
                job.future.set_result(
                    RenderResult(
                        image, name, len(batch), seconds, job.started - job.enqueued, batch_id
                    )
                )

    def _render(self, items: list[RenderItem]) -> np.ndarray:
        """Runs in the worker thread: map the z's, truncate, render."""
        w = np.zeros((len(items), self.mapper.w_dim), np.float32)
        needs_mapping = [i for i, item in enumerate(items) if item.z is not None]
        if needs_mapping:
            z = np.stack([items[i].z for i in needs_mapping]).astype(np.float32)
            c_cond = np.stack([items[i].c_cond for i in needs_mapping]).astype(np.float32)
            w[needs_mapping] = self.mapper.map(z, c_cond)
        for i, item in enumerate(items):
            if item.w is not None:
                w[i] = item.w
        psi = np.array([item.psi for item in items], np.float32)
        w = self.mapper.truncate(w, psi)
        per_layer = [i for i, item in enumerate(items) if item.ws is not None]
        if per_layer:  # the batch goes per-layer: every other image's w repeated on each row
            num_ws = items[per_layer[0]].ws.shape[0]  # type: ignore[union-attr]
            w = np.repeat(w[:, None], num_ws, axis=1)
            for i in per_layer:
                w[i] = items[i].ws
        c = np.stack([item.c for item in items]).astype(np.float32)
        return self.backend.render(w, c)


def _rendered(job: _Job) -> bool:
    """Whether ``job``'s image was rendered (its future holds a result)."""
    f = job.future
    return f.done() and not f.cancelled() and f.exception() is None


def _consume(future: asyncio.Future[object]) -> None:
    """Retrieve a cancelled gather's outcome so asyncio does not log it as unhandled."""
    if not future.cancelled():
        future.exception()
