"""A bounded load generator for a running service on this machine (loopback only).

For each concurrency level it sends a fixed number of /render requests from that many
concurrent clients and reports requests/s, p50/p99 latency, errors by status, the mean batch
size the service formed (from /metrics before and after), and what the service adds to the model:
the p50 of the model time each response reports (``X-Model-Time-Ms``: its batch's mapping and
render), the p50 of latency minus that time per response (queueing, HTTP, validation,
encoding, and the client's own share of the CPU), and the p50 of the same inside the service
(``Server-Timing``'s ``app`` minus the model: what the service itself adds). ``spawn_service`` starts a service in
a subprocess on a free loopback port, so batching on and off can be compared in one command.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

MAX_REQUESTS = 10_000  # per level: this is a measuring tool, not a stress weapon


@dataclass
class LevelResult:
    label: str
    concurrency: int
    requests: int
    ok: int
    errors: dict[str, int]
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    model_p50_ms: float = float("nan")
    over_model_p50_ms: float = float("nan")
    server_over_model_p50_ms: float = float("nan")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"the load script only targets this machine (loopback), not {host!r}")


def _batch_totals(metrics_text: str) -> tuple[float, float]:
    total = count = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("distill3d_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("distill3d_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


async def run_level(
    url: str,
    concurrency: int,
    requests: int,
    label: str = "",
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 120.0,
    first_seed: int | None = None,
) -> LevelResult:
    """``requests`` GET /render calls from ``concurrency`` concurrent clients.

    Every call asks for another seed, from ``first_seed`` on (by default a random start), so the
    service's render cache never answers: a load test measures the model path, and a second level
    or a second run must not be served from the first one's cached images.
    """
    require_loopback(url)
    if not 1 <= concurrency <= 1024 or not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"concurrency must be 1..1024 and requests 1..{MAX_REQUESTS}")
    base = dict(params or {"yaw": 20, "pitch": 5})
    latencies: list[float] = []
    model_times: list[float] = []
    app_times: list[float] = []
    statuses: Counter[str] = Counter()
    next_index = 0
    seed_base = secrets.randbelow(2**31) if first_seed is None else first_seed
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, timeout=timeout_s, limits=limits, headers=headers
    ) as client:
        before = _batch_totals((await client.get("/metrics")).text)

        async def worker() -> None:
            nonlocal next_index
            while next_index < requests:
                seed = (seed_base + next_index) % 2**32
                next_index += 1
                start = time.perf_counter()
                try:
                    r = await client.get("/render", params={**base, "seed": seed})
                    statuses[str(r.status_code)] += 1
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - start)
                        model_times.append(float(r.headers.get("x-model-time-ms", "nan")) / 1000)
                        app_times.append(_app_seconds(r.headers.get("server-timing", "")))
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
        after = _batch_totals((await client.get("/metrics")).text)
    images, calls = after[0] - before[0], after[1] - before[1]
    ok = statuses.pop("200", 0)
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    model_ms = np.array(model_times) * 1000 if model_times else np.array([np.nan])
    app_ms = np.array(app_times) * 1000 if app_times else np.array([np.nan])
    return LevelResult(
        label=label,
        concurrency=concurrency,
        requests=requests,
        ok=ok,
        errors=dict(statuses),
        seconds=round(seconds, 3),
        requests_per_s=round(ok / seconds, 2),
        p50_ms=round(float(np.percentile(ms, 50)), 1),
        p99_ms=round(float(np.percentile(ms, 99)), 1),
        mean_batch=round(images / calls, 2) if calls else 0.0,
        model_p50_ms=round(float(np.percentile(model_ms, 50)), 1),
        over_model_p50_ms=round(float(np.percentile(ms - model_ms, 50)), 1),
        server_over_model_p50_ms=round(float(np.percentile(app_ms - model_ms, 50)), 1),
    )


def _app_seconds(server_timing: str) -> float:
    """``app``'s duration in a Server-Timing header, in seconds (NaN when absent)."""
    for metric in server_timing.split(","):
        name, _, params = metric.strip().partition(";")
        if name == "app":
            for param in params.split(";"):
                key, _, value = param.strip().partition("=")
                if key == "dur":
                    return float(value) / 1000
    return float("nan")


def format_table(results: Sequence[LevelResult]) -> str:
    head = (
        f"{'mode':<14}{'conc':>5}{'reqs':>6}{'ok':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'batch':>7}{'model ms':>10}{'+client':>9}{'+server':>9}  errors"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        errors = ", ".join(f"{k}: {v}" for k, v in r.errors.items()) or "-"
        lines.append(
            f"{r.label:<14}{r.concurrency:>5}{r.requests:>6}{r.ok:>6}{r.requests_per_s:>9.2f}"
            f"{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}{r.mean_batch:>7.2f}{r.model_p50_ms:>10.1f}"
            f"{r.over_model_p50_ms:>9.1f}{r.server_over_model_p50_ms:>9.1f}  {errors}"
        )
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(
    url: str,
    process: subprocess.Popen,
    timeout_s: float,
    exit_log: Callable[[], str],
    timeout_log: Callable[[], str] | None = None,
) -> None:
    """Poll ``url``/readyz until it answers 200; raise if ``process`` exits first (with
    ``exit_log()``) or ``timeout_s`` passes (with ``timeout_log()``, when reading the output of
    a process still running cannot block)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}:\n{exit_log()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            detail = f":\n{timeout_log()}" if timeout_log else ""
            raise TimeoutError(f"the service was not ready within {timeout_s} s{detail}")
        time.sleep(0.2)


@contextmanager
def spawn_service(
    args: Sequence[str] = (), env: dict[str, str] | None = None, ready_timeout_s: float = 900.0
) -> Iterator[str]:
    """Run ``distill3d serve ARGS`` on a free loopback port; yields its base URL once ready.

    The wait is long because a first start may export a full-size student to ONNX (3.5 minutes
    for FFHQ-512 on 2 CPU cores); it ends at once if the service exits."""
    port = free_port()
    cmd = [sys.executable, "-m", "distill3d.cli", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning", *args]
    process = subprocess.Popen(
        cmd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(
            url, process, ready_timeout_s, lambda: process.stdout.read() if process.stdout else ""
        )
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
