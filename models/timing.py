"""Wall-clock timing of a model call, the one loop the benchmarks and the reports share.

CUDA work is asynchronous: a call returns before its kernels finish, so every timed call is
followed by a device synchronisation, and warm-up calls (allocator, cuDNN autotuning, lazy
initialisation) are run first and not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def synchronize(device: str) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_calls(
    call: Callable[[], Any], device: str, warmup: int = 2, repeats: int = 5
) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``call`` after ``warmup`` untimed ones, without
    autograd."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            call()
        synchronize(device)
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            synchronize(device)
            times.append(time.perf_counter() - start)
    return times
