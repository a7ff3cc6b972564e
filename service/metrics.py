"""Prometheus metrics of one service instance, in its own registry (no process-global state, so
several apps in one process, as in tests, do not share counters).

Every label set known in advance (backend x reason, endpoint x method x status class, format,
role x outcome) is created at start, at 0: Prometheus only sees a counter's first increment as a
step if the series existed before it, otherwise ``rate()`` of the first rejection or fallback is
empty. The exposition leaves out ``_created`` series (see ``_WithoutCreated``). The standard
process, platform and GC collectors are registered on this registry; GPU memory is read at scrape
time. Run one worker per GPU: the registry is per process (docs/serving.md §5).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import get_args

import psutil
import torch
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .cache import EVENTS, RenderCache  # the render cache's counters and collector (below)
from .schemas import ImageFormat, VideoFormatName

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)

# Label values known before the first request, created at 0 (see the module docstring).
REJECTION_REASONS = ("queue_full", "deadline", "disconnected")
FALLBACK_REASONS = ("pose_out_of_student_range", "student_error")
ENCODE_FORMATS = (*get_args(ImageFormat), *get_args(VideoFormatName))
INVERSION_ROLES = ("student", "volumetric")
INVERSION_OUTCOMES = ("ok", "busy", "bad_input", "failed")
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")
# Scrapes and probes run every few seconds whatever the traffic: counted with the API they would
# drown its request rate and latency quantiles, so the request metrics leave them out.
UNMEASURED_PATHS = frozenset(
    {"/metrics", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}
)


def status_class(status: int | str) -> str:
    """'2xx' for 200, '5xx' for 503: the bounded label the error-ratio panels divide by."""
    return f"{str(status)[0]}xx"


class _MemoryCollector(Collector):
    """The deprecated project-prefixed RSS copy; on CUDA, torch's and the device's memory."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._process = psutil.Process()
        self._nvml = _nvml_handle(device)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # Kept one release for dashboards and alerts that query it; the standard name,
        # process_resident_memory_bytes, comes from ProcessCollector.
        rss = GaugeMetricFamily(
            "distill3d_process_resident_memory_bytes",
            "DEPRECATED, use process_resident_memory_bytes: resident memory of the process",
        )
        rss.add_metric([], float(self._process.memory_info().rss))
        yield rss
        if not self.device.startswith("cuda") or not torch.cuda.is_available():
            return
        torch_mem = GaugeMetricFamily(
            "distill3d_torch_cuda_memory_bytes",
            "PyTorch caching allocator memory (excludes TensorRT's own)",
            labels=["device", "kind"],
        )
        torch_mem.add_metric(
            [self.device, "allocated"], float(torch.cuda.memory_allocated(self.device))
        )
        torch_mem.add_metric(
            [self.device, "reserved"], float(torch.cuda.memory_reserved(self.device))
        )
        yield torch_mem
        if self._nvml is not None:
            import pynvml

            info = pynvml.nvmlDeviceGetMemoryInfo(self._nvml)
            device_mem = GaugeMetricFamily(
                "distill3d_gpu_memory_bytes", "Device memory from NVML", labels=["device", "kind"]
            )
            device_mem.add_metric([self.device, "used"], float(info.used))
            device_mem.add_metric([self.device, "total"], float(info.total))
            yield device_mem


def _nvml_handle(device: str) -> object | None:
    """An NVML handle for a CUDA device, or None (no GPU, or nvidia-ml-py not installed)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        index = torch.device(device).index or 0
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # NVML missing or unusable: memory from torch only
        return None


class _WithoutCreated:
    """The registry as the exposition sees it, less the ``<name>_created`` samples.

    prometheus_client writes a creation-time gauge beside every counter and histogram series,
    doubling the series count for no use on a dashboard. Its only switch,
    ``disable_created_metrics()``, is process-global (it would change every other registry in
    the process), and the registry has no option for it, so they are filtered here instead.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = [s for s in family.samples if s.name != f"{family.name}_created"]
            yield kept


class ServiceMetrics:
    def __init__(self, device: str = "cpu") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "distill3d_http_requests",
            "HTTP requests by endpoint, status and backend (not /metrics or the probes)",
            ["endpoint", "method", "status", "backend"],
            registry=r,
        )
        self.responses = Counter(
            "distill3d_http_responses",
            "HTTP responses by endpoint, method and status class (2xx..5xx), every route's "
            "series present from the start: the error ratio's numerator and denominator",
            ["endpoint", "method", "status_class"],
            registry=r,
        )
        self.latency = Histogram(
            "distill3d_http_request_duration_seconds",
            "Request latency by endpoint, status and backend",
            ["endpoint", "method", "status", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_time = Histogram(
            "distill3d_model_seconds",
            "Time of one batched model call",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "distill3d_batch_size",
            "Images per model call",
            ["backend"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "distill3d_queue_wait_seconds",
            "Time an image waited before its batch started",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "distill3d_queue_depth", "Images waiting per backend", ["backend"], registry=r
        )
        self.rejected = Counter(
            "distill3d_rejected",
            "Images not rendered: queue_full, deadline, disconnected (an N-frame call counts N)",
            ["backend", "reason"],
            registry=r,
        )
        self.rejected_requests = Counter(
            "distill3d_rejected_requests",
            "Render calls refused or abandoned: queue_full, deadline, disconnected (1 per call)",
            ["backend", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "distill3d_fallbacks",
            "Requests rendered by the volumetric teacher instead of the student",
            ["reason"],
            registry=r,
        )
        self.encode_time = Histogram(
            "distill3d_encode_seconds",
            "Image and video encoding time",
            ["format"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inversions = Counter(
            "distill3d_inversions",
            "POST /invert fits by model role and outcome (ok, busy, bad_input, failed)",
            ["role", "outcome"],
            registry=r,
        )
        self.inversion_time = Histogram(
            "distill3d_inversion_seconds",
            "Time of one inversion (the optimisation, not the upload)",
            ["role"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=r,
        )
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(reason)
        for fmt in ENCODE_FORMATS:
            self.encode_time.labels(fmt)
        for role in INVERSION_ROLES:
            self.inversion_time.labels(role)
            for outcome in INVERSION_OUTCOMES:
                self.inversions.labels(role, outcome)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        r.register(_MemoryCollector(device))

    def precreate_backend(self, backend: str) -> None:
        """Every per-backend series at 0, before the backend's first batch (engine.Batcher)."""
        self.queue_depth.labels(backend).set(0)
        self.model_time.labels(backend)
        self.batch_size.labels(backend)
        self.queue_wait.labels(backend)
        for reason in REJECTION_REASONS:
            self.rejected.labels(backend, reason)
            self.rejected_requests.labels(backend, reason)

    def precreate_routes(self, routes: Iterable[object]) -> None:
        """``distill3d_http_responses_total`` at 0 for every route of the app (its path and
        methods but HEAD; a mount, the static files, as GET) in every status class, so the first 5xx
        of a route is a step that rate() sees."""
        for route in routes:
            path = getattr(route, "path", None)
            if path is None or path in UNMEASURED_PATHS:
                continue
            for method in set(getattr(route, "methods", None) or ("GET",)) - {"HEAD"}:
                for cls in STATUS_CLASSES:
                    self.responses.labels(path, method, cls)

    def observe_request(
        self, endpoint: str, method: str, status: int, backend: str, seconds: float
    ) -> None:
        """One answered request (RequestMetrics), in the three request families."""
        labels = (endpoint, method, str(status), backend)
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)
        self.responses.labels(endpoint, method, status_class(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(_WithoutCreated(self.registry))  # type: ignore[arg-type]

    # -- render cache (service/cache.py) ------------------------------------------------------

    def track_render_cache(self, cache: RenderCache) -> None:
        """Count ``cache``'s events (its ``on_event`` calls ``render_cache_events``) and read
        its size at scrape time. Every event label exists from the start, at 0, so a rate()
        over a hit ratio has both series before the first request."""
        self.render_cache_events = Counter(
            "distill3d_render_cache_events",
            "Render cache look-ups and stores: hit, miss, store, evicted, too_large",
            ["event"],
            registry=self.registry,
        )
        for event in EVENTS:
            self.render_cache_events.labels(event)
        self.registry.register(_RenderCacheCollector(cache))


class _RenderCacheCollector(Collector):
    """The render cache's bytes, entries and budget, read when Prometheus scrapes."""

    def __init__(self, cache: RenderCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.cache.stats()
        for name, doc, value in (
            ("bytes", "Bytes the render cache holds (bodies, headers, overhead)", stats.bytes),
            ("entries", "Responses the render cache holds", stats.entries),
            ("max_bytes", "The render cache's budget (0 = off)", stats.max_bytes),
        ):
            family = GaugeMetricFamily(f"distill3d_render_cache_{name}", doc)
            family.add_metric([], float(value))
            yield family
