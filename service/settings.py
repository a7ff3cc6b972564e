"""Service configuration: environment variables (``DISTILL3D_*``), a YAML/JSON settings file
(``DISTILL3D_CONFIG`` or ``--config``), then command-line flags, in rising priority.

With nothing set, the service serves the embedded default model on CPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..models.config_files import read_config_file

StudentBackendName = Literal["auto", "torch", "onnxruntime", "onnxruntime-int8", "tensorrt"]


class ServiceSettings(BaseSettings):
    """Everything the service reads at start-up. Environment names are ``DISTILL3D_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="DISTILL3D_", extra="forbid")

    # Models. "default" / "default-student" are the embedded demo models; None leaves a side out.
    teacher: str | None = Field(
        "default", description="volumetric teacher: 'default', a checkpoint folder or an EG3D .pkl"
    )
    student: str | None = Field(
        "default-student", description="student: 'default-student' or a run's student folder"
    )
    onnx_dir: Path | None = Field(None, description="export folder for the ONNX Runtime backend")
    plan_dir: Path | None = Field(
        None, description="TensorRT plan folder (distill3d export tensorrt)"
    )
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1'")
    student_backend: StudentBackendName = Field(
        "auto", description="auto = the fastest that loads, measured at warm-up"
    )
    fallback: bool = Field(True, description="render with the teacher when the student fails")
    onnx_export: bool = Field(
        True,
        description="without onnx_dir: export the PyTorch student to ONNX once (cached by weights "
        "hash in $DISTILL3D_GRAPH_CACHE_DIR) so that auto can pick ONNX Runtime; needs the export "
        "extra and `distill3d serve`",
    )
    onnx_intra_op_threads: int = Field(
        0, ge=0, le=1024, description="ONNX Runtime threads per operator (0: its default, cores)"
    )
    onnx_inter_op_threads: int = Field(
        1, ge=1, le=1024, description="ONNX Runtime operators at once (1: sequential)"
    )
    onnx_cpu_arena: bool = Field(True, description="ONNX Runtime keeps freed CPU buffers for reuse")

    # Batching and limits.
    max_batch_size: int = Field(8, ge=1, le=256, description="the most images in one batch")
    tune_batch: bool = Field(
        True,
        description="at warm-up, time the student at batch 1, 2, 4, ... up to max_batch_size and "
        "cap batches at the size with the most images/s (batching that is slower per image than "
        "batch 1 is never used); skipped when warmup is off",
    )
    teacher_max_batch_size: int = Field(2, ge=1, le=64)
    max_wait_ms: float = Field(10.0, ge=0, le=1000)
    queue_size: int = Field(64, ge=1, le=100_000, description="queued images per backend")
    request_timeout_s: float = Field(60.0, gt=0, description="queue wait + render, then 504")
    max_frames: int = Field(240, ge=1, le=10_000)
    max_fps: int = Field(60, ge=1, le=240)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="JSON request bodies")
    max_upload_bytes: int = Field(8 << 20, ge=1024, description="POST /invert image uploads")
    max_upload_pixels: int = Field(2048 * 2048, ge=64, description="width x height of uploads")
    invert_steps: int = Field(200, ge=1, description="POST /invert default optimisation steps")
    max_invert_steps: int = Field(1000, ge=1)
    invert_concurrency: int = Field(1, ge=1, le=64, description="inversions at once; then 429")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    warmup: bool = True

    # Render cache (service/cache.py) and the teacher's geometry routes (/mesh, /depth).
    render_cache_bytes: int = Field(
        64 << 20,
        ge=0,
        le=1 << 40,
        description="bytes of encoded responses kept in memory for repeated requests; 0 = off",
    )
    render_cache_max_age_s: int = Field(
        3600,
        ge=0,
        le=31_536_000,
        description="Cache-Control max-age of cacheable GET responses (then revalidated by ETag)",
    )
    mesh_concurrency: int = Field(
        1, ge=1, le=16, description="GET /mesh extractions at once; then 429"
    )
    mesh_max_resolution: int = Field(
        256, ge=16, le=256, description="largest /mesh grid (cells a side); beyond it 422"
    )

    # The HTTP server (service/server.py): limits for a port open to the public.
    max_connections: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="open connections; at the cap a new one replaces the longest-idle one, or "
        "is closed at once (lowered to fit ulimit -n)",
    )
    backlog: int = Field(1024, ge=1, le=65535, description="listen() queue of unaccepted ones")
    keep_alive_timeout_s: float = Field(5.0, gt=0, le=3600, description="idle keep-alive")
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="a request head must arrive within this; else closed"
    )
    body_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="a request body must arrive within this; else 408"
    )
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="on SIGTERM, time for requests in flight to finish; then 503 and exit",
    )
    shutdown_delay_s: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="on SIGTERM, /readyz is 503 at least this long (for a load balancer)",
    )
    accept_error_log_interval_s: float = Field(
        10.0, gt=0, description="accept() errors (out of descriptors) logged once per interval"
    )

    # Logs and traces (service/logs.py, service/tracing.py).
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one JSON object per line (one per request); text: for people"
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces endpoint (http://collector:4318/v1/traces); needs the otel "
        "extra. Unset: no tracing",
    )

    # Access.
    api_key: SecretStr | None = Field(None, description="require 'Authorization: Bearer <key>'")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    @field_validator("teacher", "student", "onnx_dir", "plan_dir", "api_key", mode="before")
    @classmethod
    def _none_words(cls, value: Any) -> Any:
        """Empty or 'none' means unset, so compose files can pass ${VAR:-} through."""
        if isinstance(value, str) and value.strip().lower() in {"", "none", "off"}:
            return None
        return value

    @model_validator(mode="after")
    def _something_to_serve(self) -> ServiceSettings:
        if self.teacher is None and self.student is None and self.onnx_dir is None:
            raise ValueError("nothing to serve: set DISTILL3D_TEACHER and/or DISTILL3D_STUDENT")
        if self.plan_dir is not None and self.onnx_dir is None:
            raise ValueError("plan_dir needs onnx_dir (the export the plan was built from)")
        if self.shutdown_delay_s > self.drain_timeout_s:
            raise ValueError("shutdown_delay_s must not exceed drain_timeout_s")
        return self

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device}: CUDA is not available here; use cpu")
        return self.device


def load_settings(
    config_file: str | os.PathLike[str] | None = None, **overrides: Any
) -> ServiceSettings:
    """Settings from the environment, then ``config_file`` (or ``$DISTILL3D_CONFIG``), then
    ``overrides`` (None values are ignored, so unset CLI flags do not mask the others)."""
    values: dict[str, Any] = {}
    path = config_file or os.environ.get("DISTILL3D_CONFIG")
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"settings file {path} not found")
        values = read_config_file(path, what="settings file")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ServiceSettings(**values)  # the environment fills whatever is left unset
