"""The HTTP service: ``serve`` runs it, ``loadtest`` measures one on this machine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..models.errors import ConfigError
from .common import SubParsers


def add_serve(sub: SubParsers) -> None:
    p = sub.add_parser(
        "serve",
        help="run the HTTP service (render, orbit, metrics); the embedded model on CPU by default",
        description="Serve /render, /orbit, /v1/models, /metrics, /healthz, /readyz and /docs. "
        "Settings come from DISTILL3D_* environment variables, then --config FILE (YAML/JSON), "
        "then these flags. The API key is read from DISTILL3D_API_KEY or the file only.",
    )
    p.add_argument("--config", type=Path, help="settings file (YAML or JSON)")
    p.add_argument("--host", help="bind address (default 127.0.0.1; 0.0.0.0 in containers)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--teacher", help="'default', a checkpoint folder, an EG3D .pkl, or 'none'")
    p.add_argument("--student", help="a student checkpoint folder")
    p.add_argument("--onnx-dir", type=Path, help="an export folder (ONNX Runtime backend)")
    p.add_argument("--plan-dir", type=Path, help="a TensorRT plan folder")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--student-backend",
        choices=["auto", "torch", "onnxruntime", "onnxruntime-int8", "tensorrt"],
        default=None,
        help="auto: the fastest at warm-up (the settings' StudentBackendName)",
    )
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--teacher-max-batch-size", type=int)
    p.add_argument("--max-wait-ms", type=float)
    p.add_argument("--queue-size", type=int)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)


_SETTINGS_FLAGS = (
    "host",
    "port",
    "teacher",
    "student",
    "onnx_dir",
    "plan_dir",
    "device",
    "student_backend",
    "max_batch_size",
    "teacher_max_batch_size",
    "max_wait_ms",
    "queue_size",
)


def _settings(args: argparse.Namespace) -> Any:
    """Environment, then --config, then flags, validated (device included) before serving."""
    from pydantic import ValidationError

    from ..service.settings import load_settings

    try:
        settings = load_settings(args.config, **{f: getattr(args, f) for f in _SETTINGS_FLAGS})
        settings.resolved_device()
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {exc}") from None
    return settings


def cmd_serve(args: argparse.Namespace) -> None:
    import logging

    from ..service import server

    settings = _settings(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # One worker (it owns the models and the batching queue), with the connection limits,
    # request deadlines and SIGTERM drain of service/server.py.
    from ..export.onnx import export_browser_graphs

    server.run(settings, log_level=args.log_level, graph_exporter=export_browser_graphs)


def add_loadtest(sub: SubParsers) -> None:
    p = sub.add_parser(
        "loadtest",
        help="measure requests/s and p50/p99 latency of a local service at several concurrencies",
        description="Send a bounded number of /render requests to a service on this machine "
        "(loopback only). With --url it measures a running service; without, it starts one per "
        "--batching mode (on: --max-batch-size, off: batch 1) with the model flags given.",
    )
    p.add_argument("--url", help="a running service, e.g. http://127.0.0.1:8000")
    p.add_argument("--concurrency", default="1,2,4,8", help="comma-separated levels")
    p.add_argument("--requests", type=int, default=32, help="requests per level")
    p.add_argument("--batching", default="on,off", help="modes to start (without --url)")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--backend", default="auto", choices=["auto", "student", "volumetric"])
    p.add_argument("--yaw", type=float, default=20.0)
    p.add_argument("--teacher", help="passed to distill3d serve")
    p.add_argument("--student", help="passed to distill3d serve")
    p.add_argument("--onnx-dir", help="passed to distill3d serve")
    p.add_argument("--device", help="passed to distill3d serve")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.set_defaults(func=cmd_loadtest)


def _serve_flags(args: argparse.Namespace) -> list[str]:
    """The model flags given to loadtest, passed on to each ``distill3d serve`` it starts."""
    flags = []
    for flag in ("teacher", "student", "onnx_dir", "device"):
        if getattr(args, flag):
            flags += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return flags


def _batching_modes(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(mode, extra serve flags) for each of --batching's on/off."""
    modes = []
    for mode in [m.strip() for m in args.batching.split(",") if m.strip()]:
        if mode not in ("on", "off"):
            raise ConfigError(f"--batching takes on and/or off, got {mode!r}")
        batch = args.max_batch_size if mode == "on" else 1
        extra = ["--max-batch-size", str(batch), "--teacher-max-batch-size", str(batch)]
        modes.append((mode, [*extra, "--max-wait-ms", str(args.max_wait_ms)]))
    return modes


def cmd_loadtest(args: argparse.Namespace) -> None:
    import asyncio
    import os

    from ..service.loadtest import format_table, run_level, spawn_service

    levels = [int(v) for v in args.concurrency.split(",") if v.strip()]
    params = {"yaw": args.yaw, "backend": args.backend}
    key = os.environ.get("DISTILL3D_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else None
    results = []

    def measure(url: str, label: str) -> None:
        for level in levels:
            result = asyncio.run(run_level(url, level, args.requests, label, params, headers))
            print(format_table([result]).splitlines()[-1] if results else format_table([result]))
            results.append(result)

    if args.url:
        measure(args.url, "service")
    else:
        serve = _serve_flags(args)
        for mode, extra in _batching_modes(args):
            with spawn_service([*serve, *extra]) as url:
                measure(url, f"batching {mode}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
