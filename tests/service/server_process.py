"""`distill3d serve` in a subprocess on a loopback port, for tests that need real sockets and
real signals: the handle keeps the process (to signal it, read its exit code) and its log."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from distill3d.service.loadtest import free_port, wait_until_ready


@dataclass
class ServerProcess:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout_s: float) -> int:
        return self.process.wait(timeout=timeout_s)


@contextmanager
def serve_process(
    args: Sequence[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    max_descriptors: int | None = None,
    ready_timeout_s: float = 120.0,
) -> Iterator[ServerProcess]:
    """``python -m distill3d serve ARGS`` (settings also from ``env``: ``DISTILL3D_*``) until
    /readyz is 200. ``max_descriptors`` lowers its ``ulimit -n``. Killed on the way out if it
    is still running."""
    port = free_port()
    cmd = [sys.executable, "-m", "distill3d", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--device", "cpu", "--log-level", "info", *args]

    def limit() -> None:  # runs in the child between fork and exec
        if max_descriptors is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_descriptors, hard))

    child_env = {**os.environ, "DISTILL3D_THREADS": "1", **(env or {})}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            cmd, env=child_env, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=limit
        )
    handle = ServerProcess(f"http://127.0.0.1:{port}", port, process, log_path)
    try:
        wait_until_ready(handle.url, process, ready_timeout_s, handle.log, handle.log)
        yield handle
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
