"""Load hostile files in forked children, each under an address-space cap and a time limit.

Started once by ``test_hostile_files.py``: importing torch costs seconds, forking a child that
already has it costs milliseconds, so every case gets a fresh process without paying the import
again. No torch operation runs in this parent, so no thread pool is copied into a child; what the
loaders import lazily on first use (torch._dynamo, pulled in by building a model on the "meta"
device) is imported here once, so the children do not each pay for it.

Protocol: one JSON request per stdin line ``{"loader", "path", "headroom", "seconds"}``; one JSON
answer per stdout line: ``outcome`` is "accepted", "raised" (with ``type``, ``message``,
``lines``) or "killed" (with ``signal``: SIGALRM for the time limit), plus ``seconds`` and
``rss_growth_mb`` (peak resident memory above what the child started with).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import torch._dynamo  # noqa: F401  (the first meta-device build imports it: seconds, once)

from distill3d.models.checkpoint import load_checkpoint
from distill3d.models.eg3d.convert import generator_from_official
from distill3d.models.eg3d.official import load_official_pickle
from distill3d.models.latents import load_latent

LOADERS: dict[str, Callable[[str], Any]] = {
    "pickle": lambda path: generator_from_official(load_official_pickle(path)),
    "checkpoint": load_checkpoint,
    "latent": load_latent,
}


def _status_kib(field: str) -> int:
    """A ``VmSize``/``VmRSS`` figure of this process, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _run_child(request: dict[str, Any], out_fd: int) -> None:
    """Cap the address space, arm the alarm (its default action kills), load, report, exit."""
    limit = _status_kib("VmSize") * 1024 + int(request["headroom"])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    start_rss = _status_kib("VmRSS")
    signal.alarm(int(request["seconds"]))
    start = time.monotonic()
    try:
        LOADERS[request["loader"]](request["path"])
        answer: dict[str, Any] = {"outcome": "accepted"}
    except BaseException as exc:  # the point is to see whatever escapes the loader
        message = str(exc)
        answer = {
            "outcome": "raised",
            "type": type(exc).__name__,
            "message": message[:2000],
            "lines": len(message.splitlines()) or 1,
        }
    answer["seconds"] = round(time.monotonic() - start, 3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    answer["rss_growth_mb"] = round(max(0, peak - start_rss) / 1024, 1)
    os.write(out_fd, json.dumps(answer).encode())
    os._exit(0)


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    """Fork one child for ``request`` and collect its answer, or how it died."""
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _run_child(request, write_fd)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 1 << 16):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if chunks:
        return json.loads(b"".join(chunks))
    died = signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else "exit"
    return {"outcome": "killed", "signal": died, "seconds": round(time.monotonic() - start, 3)}


def main() -> None:
    for line in sys.stdin:
        print(json.dumps(_serve(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
