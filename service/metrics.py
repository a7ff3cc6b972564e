"""Prometheus metrics of one service instance, in its own registry (no process-global state, so
several apps in one process, as in tests, do not share counters).

Process memory and GPU memory are read at scrape time by a collector, so they are always
current. Run one worker per GPU: the registry is per process (SERVING.md §3).
"""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class _MemoryCollector(Collector):
    """Process RSS; on CUDA, torch's allocated/reserved memory and the device's (NVML)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._process = psutil.Process()
        self._nvml = _nvml_handle(device)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rss = GaugeMetricFamily(
            "distill3d_process_resident_memory_bytes", "Resident memory of the service process"
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


class ServiceMetrics:
    def __init__(self, device: str = "cpu") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "distill3d_http_requests",
            "HTTP requests by endpoint, status and backend",
            ["endpoint", "method", "status", "backend"],
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
            "Images not rendered: queue_full, deadline, disconnected",
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
        r.register(_MemoryCollector(device))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
