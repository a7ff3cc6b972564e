"""One command that exercises every GPU path and writes one report (JSON + Markdown).

Why: GPU machines are lent briefly and rarely, so everything that can only be checked on one
(autocast precisions, CUDA graphs, torch.compile, ONNX Runtime's CUDA provider, the teacher and the
student at FFHQ-512 batch sizes, the service on CUDA with NVML metrics under load) runs in one
go, within a time budget, and each path's images are compared with the CPU render of the same
inputs. On a machine without CUDA (CI) ``--cpu-only`` runs the same items at toy sizes and
records every CUDA-only item as skipped with its reason, so the report format and the code
paths stay tested.

    python -m distill3d.gpu_check --out docs/gpu-check            # on the GPU machine
    python -m distill3d.gpu_check --cpu-only --out gpu-check-cpu  # anywhere, < 60 s

Measurements reuse ``export/bench.py`` (runners and ``measure``); nothing is timed twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .export import bench

MEASURED, SKIPPED, FAILED = "measured", "skipped", "failed"
REPORT_JSON, REPORT_MD = "gpu-check.json", "gpu-check.md"


@dataclass(frozen=True)
class CheckPlan:
    """Sizes and budgets of one run; ``cpu_only`` shrinks everything to the tiny preset."""

    cpu_only: bool
    device: str
    budget_s: float
    preset: str  # the architecture for the batch sweep (random weights)
    batch_sizes: tuple[int, ...]
    parity_batch: int
    loadtest_s: float
    warmup: int
    repeats: int

    @classmethod
    def make(cls, cpu_only: bool, device: str = "cuda") -> CheckPlan:
        if cpu_only:
            return cls(True, "cpu", 55.0, "tiny", (1, 2), 2, 0.0, 0, 1)
        return cls(False, device, 480.0, "ffhq512", (1, 8, 32), 4, 60.0, 2, 5)


@dataclass
class Item:
    """One line of the report: measured (with ``result``), skipped or failed (with ``reason``)."""

    name: str
    status: str = SKIPPED
    reason: str = ""
    seconds: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    mode: str
    device: str
    device_name: str
    torch_version: str
    cuda_version: str | None
    onnxruntime_providers: list[str]
    python: str
    started: str
    budget_s: float
    total_s: float = 0.0
    items: list[Item] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Checker:
    """Runs items in order, each guarded: an exception fails that item, not the run; once the
    budget is spent the remaining items are skipped with that reason."""

    def __init__(self, plan: CheckPlan, report: Report) -> None:
        self.plan = plan
        self.report = report
        self.start = time.perf_counter()

    def left_s(self) -> float:
        return self.plan.budget_s - (time.perf_counter() - self.start)

    def skip(self, name: str, reason: str) -> Item:
        item = Item(name, SKIPPED, reason)
        self.report.items.append(item)
        return item

    def run(self, name: str, body: Callable[[], dict[str, Any]], needs_s: float = 0.0) -> Item:
        if self.left_s() < needs_s:
            return self.skip(name, f"time budget spent ({self.plan.budget_s:.0f} s in all)")
        item = Item(name)
        began = time.perf_counter()
        try:
            item.result = body()
            item.status = MEASURED
        except Exception as exc:  # one broken path must not hide the others' results
            item.status = FAILED
            item.reason = (
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            )
            item.result = {"traceback": traceback.format_exc(limit=4)[-2000:]}
        item.seconds = round(time.perf_counter() - began, 2)
        self.report.items.append(item)
        return item


def parity(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float | str]:
    """PSNR (images in [-1, 1] on the [0, 1] scale) and largest absolute difference."""
    from .models.metrics import psnr

    a = reference.detach().float().cpu().clamp(-1, 1)
    b = other.detach().float().cpu().clamp(-1, 1)
    value = float(psnr(a.reshape(1, -1), b.reshape(1, -1))[0])
    return {
        "psnr_db": round(value, 2) if np.isfinite(value) else "inf",  # identical (JSON-safe)
        "max_abs_diff": round(float((a - b).abs().max()), 5),
    }


def _row(m: bench.Measurement) -> dict[str, Any]:
    keep = (
        "batch",
        "precision",
        "ms_per_image_median",
        "ms_per_image_p95",
        "images_per_s",
        "torch_peak_allocated_bytes",
        "peak_rss_bytes",
        "flops_per_image",
        "error",
    )
    return {k: getattr(m, k) for k in keep}


def _measured(runner: bench.Runner, plan: CheckPlan, batches: Sequence[int]) -> dict[str, Any]:
    rows = []
    for b in batches:
        row = bench.measure(runner, b, plan.warmup, plan.repeats)
        rows.append(_row(row))
        if row.error:
            break
    return {"runner": runner.name, "rows": rows}


def _render(runner: bench.Runner, batch: int) -> torch.Tensor:
    """The runner's image for bench's fixed inputs of ``batch`` (same inputs on every device)."""
    with torch.no_grad():
        out = runner.prepare(batch)()
        if isinstance(out, (list, tuple)):
            out = out[0]
        return torch.as_tensor(out).float().cpu()


@contextlib.contextmanager
def _export_folder(student: Any) -> Iterator[Path]:
    from .export.onnx import export_onnx

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = Path(tmp) / "export"
        export_onnx(student, folder, {"checkpoint": "gpu-check"}, fp16=False, batch_sizes=(1, 2))
        yield folder


def check_student_paths(
    c: Checker, student: Any, eager: Sequence[bench.Runner], reference: torch.Tensor
) -> None:
    """Eager fp32/fp16/bf16, CUDA graphs, torch.compile: speed at batch 1 and parity with CPU."""
    plan, cuda = c.plan, c.plan.device.startswith("cuda")
    runners = {r.backend: r for r in eager}
    for backend, label in (
        ("torch", "student eager fp32"),
        ("torch-fp16", "student eager fp16"),
        ("torch-bf16", "student eager bf16"),
    ):
        if backend not in runners:
            c.skip(label, "needs CUDA (autocast precisions are a GPU path)")
            continue
        runner = runners[backend]

        def body(runner: bench.Runner = runner) -> dict[str, Any]:
            out = _measured(runner, plan, (1,))
            out["parity_vs_cpu"] = parity(reference, _render(runner, plan.parity_batch))
            return out

        c.run(label, body, needs_s=5)

    if not cuda:
        c.skip("student cuda graph fp16", "needs CUDA (CUDA graphs)")
    else:

        def graphs() -> dict[str, Any]:
            runner = bench.student_cuda_graph_runner(student, plan.device)
            out = _measured(runner, plan, (1,))
            out["parity_vs_cpu"] = parity(reference, _render(runner, plan.parity_batch))
            return out

        c.run("student cuda graph fp16", graphs, needs_s=10)

    if plan.cpu_only:
        c.skip("student torch.compile", "skipped in --cpu-only: Inductor compiles for minutes")
    else:

        def compiled() -> dict[str, Any]:
            runner = bench.student_compiled_runner(student, plan.device)
            out = _measured(runner, plan, (1,))
            out["parity_vs_cpu"] = parity(reference, _render(runner, plan.parity_batch))
            return out

        c.run("student torch.compile", compiled, needs_s=120)


def check_onnxruntime(c: Checker, student: Any, reference: torch.Tensor) -> None:
    """ONNX Runtime's CUDA provider on the FP32 graph (CPU provider as the control)."""
    try:
        import onnxruntime as ort
    except ImportError:
        c.skip("onnxruntime cuda", "onnxruntime is not installed (pip install 'distill3d[gpu]')")
        return
    providers = ort.get_available_providers()
    if c.plan.cpu_only or "CUDAExecutionProvider" not in providers:
        reason = "skipped in --cpu-only" if c.plan.cpu_only else "no CUDAExecutionProvider"
        c.skip("onnxruntime cuda", f"{reason} (providers here: {', '.join(providers)})")
        return

    def body() -> dict[str, Any]:
        with _export_folder(student) as folder:
            session = ort.InferenceSession(
                str(folder / "student.onnx"),
                providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
            )
            w, cam = bench._inputs(student, c.plan.parity_batch, "cpu")
            feed = {"w": w.numpy(), "c": cam.numpy()}
            session.run(None, feed)
            times = []
            for _ in range(c.plan.repeats):
                began = time.perf_counter()
                image = session.run(None, feed)[0]
                times.append(time.perf_counter() - began)
            return {
                "providers": session.get_providers(),
                "batch": c.plan.parity_batch,
                "ms_per_image_median": round(
                    1000 * float(np.median(times)) / c.plan.parity_batch, 3
                ),
                "parity_vs_cpu": parity(reference, torch.from_numpy(image)),
            }

    c.run("onnxruntime cuda", body, needs_s=60)


def check_teacher(c: Checker, teacher: Any) -> bench.Runner | None:
    """The volumetric teacher on the device, and its parity with its own CPU render."""
    plan = c.plan
    built: list[bench.Runner] = []

    def body() -> dict[str, Any]:
        on_cpu = not plan.device.startswith("cuda")
        reference = None if on_cpu else _render(bench.teacher_runner(teacher, "cpu"), 1)
        runner = bench.teacher_runner(teacher, plan.device)  # counts its FLOPs: one render
        built.append(runner)
        out = _measured(runner, plan, (1,))
        image = _render(runner, 1)
        out["parity_vs_cpu"] = parity(image if reference is None else reference, image)
        if reference is not None:  # why a few dB are lost even when both paths are right
            out["note"] = "the stratified depth jitter is drawn by each device's own generator"
        return out

    c.run(f"teacher {plan.preset}", body, needs_s=10)
    return built[0] if built else None


def check_batch_sweep(
    c: Checker, teacher: bench.Runner | None, student: Any, eager: Sequence[bench.Runner]
) -> None:
    """The preset's teacher and student at each batch size with peak memory."""
    plan = c.plan
    cuda = plan.device.startswith("cuda")

    def body() -> dict[str, Any]:
        student.to(plan.device)  # the ONNX export moved it to the CPU
        runners = ([teacher] if teacher else []) + list(eager)
        if cuda:
            runners.append(bench.student_cuda_graph_runner(student, plan.device))
        out: dict[str, Any] = {"preset": plan.preset, "runners": []}
        for runner in runners:
            teacher_batches = plan.batch_sizes[: 1 if plan.cpu_only else 2]  # slow, memory-hungry
            batches = plan.batch_sizes if runner.model == "student" else teacher_batches
            out["runners"].append(_measured(runner, plan, batches))
            if cuda:
                torch.cuda.empty_cache()
        out["memory"] = "torch.cuda.max_memory_allocated" if cuda else "process RSS"
        return out

    name = f"bench {plan.preset} batch {'/'.join(map(str, plan.batch_sizes))}"
    c.run(name, body, needs_s=10)


def check_service(c: Checker) -> None:
    """The service on CUDA (shipped student, torch backend): a loadtest and its NVML metrics."""
    plan = c.plan
    if plan.cpu_only or not plan.device.startswith("cuda"):
        c.skip("service cuda loadtest", "needs CUDA (CPU serving is covered by tests/service)")
        return
    try:
        import pynvml  # noqa: F401

        nvml = "nvidia-ml-py present"
    except ImportError:
        nvml = "nvidia-ml-py missing: no distill3d_gpu_memory_bytes"

    def body() -> dict[str, Any]:
        import httpx

        from .service import loadtest

        args = ["--student", "default-student", "--device", plan.device]
        levels = []
        with loadtest.spawn_service(args) as url:
            deadline = time.monotonic() + plan.loadtest_s
            while time.monotonic() < deadline:
                result = asyncio.run(loadtest.run_level(url, 16, 200, label="c16"))
                levels.append(result.to_json())
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
        gauges = [
            line
            for line in metrics.splitlines()
            if line.startswith(("distill3d_gpu_memory_bytes", "distill3d_torch_cuda_memory"))
        ]
        ok = sum(level["ok"] for level in levels)
        seconds = sum(level["seconds"] for level in levels)
        return {
            "nvml": nvml,
            "requests_ok": ok,
            "requests_per_s": round(ok / seconds, 2) if seconds else 0.0,
            "levels": levels,
            "memory_gauges": gauges,
        }

    c.run("service cuda loadtest", body, needs_s=plan.loadtest_s + 40)


def _environment(plan: CheckPlan) -> Report:
    try:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    except ImportError:
        providers = []
    cuda = plan.device.startswith("cuda")
    return Report(
        mode="cpu-only" if plan.cpu_only else "gpu",
        device=plan.device,
        device_name=torch.cuda.get_device_name(plan.device) if cuda else bench._cpu_name(),
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        onnxruntime_providers=providers,
        python=platform.python_version(),
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        budget_s=plan.budget_s,
    )


def run_checks(plan: CheckPlan) -> Report:
    """Every item in order; never raises for one failing path."""
    from .models.load import init_generator
    from .models.student import student_from_teacher, student_preset

    report = _environment(plan)
    c = Checker(plan, report)
    if plan.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --cpu-only")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher = init_generator(plan.preset, seed=0)
        student = student_from_teacher(teacher, student_preset(plan.preset)).eval()
    # The CPU render every device path is compared with (bench's fixed inputs).
    cuda = plan.device.startswith("cuda")
    cpu_runners = bench.student_torch_runners(student, "cpu")
    reference = _render(cpu_runners[0], plan.parity_batch)
    eager = bench.student_torch_runners(student, plan.device) if cuda else cpu_runners
    check_student_paths(c, student, eager, reference)
    check_onnxruntime(c, student, reference)
    teacher_run = check_teacher(c, teacher)
    check_batch_sweep(c, teacher_run, student, eager)
    if plan.device.startswith("cuda"):
        teacher.to("cpu")
        student.to("cpu")
        torch.cuda.empty_cache()
    check_service(c)
    report.total_s = round(time.perf_counter() - c.start, 2)
    return report


def format_markdown(report: Report) -> str:
    lines = [
        f"# GPU check ({report.mode})",
        "",
        f"{report.device} ({report.device_name}), torch {report.torch_version}, "
        f"CUDA {report.cuda_version or '-'}, ONNX Runtime providers: "
        f"{', '.join(report.onnxruntime_providers) or '-'}; started {report.started}, "
        f"{report.total_s:.0f} s of a {report.budget_s:.0f} s budget.",
        "",
        "| item | status | s | ms/img (batch) | parity vs CPU | note |",
        "|---|---|---:|---|---|---|",
    ]
    for item in report.items:
        timing, note = [], item.reason
        rows = list(item.result.get("rows", []))
        for runner in item.result.get("runners", []):
            rows += [{**r, "runner": runner["runner"]} for r in runner["rows"]]
        for r in rows:
            label = f"{r.get('runner', '')} " if "runner" in r else ""
            mem = r.get("torch_peak_allocated_bytes") or r.get("peak_rss_bytes")
            value = r["ms_per_image_median"]
            shown = f"{value:.1f}" if value is not None else (r.get("error") or "-")
            mib = f", {mem / 2**20:.0f} MiB" if mem else ""
            timing.append(f"{label}{shown} ({r['batch']}{mib})")
        if "ms_per_image_median" in item.result:
            timing.append(f"{item.result['ms_per_image_median']:.1f} ({item.result['batch']})")
        if "requests_per_s" in item.result:
            note = f"{item.result['requests_per_s']} req/s, {item.result['nvml']}"
        p = item.result.get("parity_vs_cpu")
        shown_parity = f"{p['psnr_db']} dB, max {p['max_abs_diff']}" if p else "-"
        lines.append(
            f"| {item.name} | {item.status} | {item.seconds:.1f} | "
            f"{'; '.join(timing) or '-'} | {shown_parity} | {note} |"
        )
    return "\n".join(lines) + "\n"


def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / REPORT_JSON, out / REPORT_MD
    json_path.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    md_path.write_text(format_markdown(report))
    return json_path, md_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The check's flags (shared by ``python -m distill3d.gpu_check`` and ``distill3d gpu-check``)."""
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="report folder")
    parser.add_argument("--device", default="cuda", help="CUDA device to check")
    parser.add_argument(
        "--cpu-only", action="store_true", help="no CUDA: toy sizes, CUDA items skipped (< 60 s)"
    )


def run(out: Path, device: str = "cuda", cpu_only: bool = False) -> int:
    """Run every check, write the JSON + Markdown report to ``out``; 1 if any item failed."""
    plan = CheckPlan.make(cpu_only, device)
    torch.set_num_threads(
        min(torch.get_num_threads(), 2) if plan.cpu_only else torch.get_num_threads()
    )
    report = run_checks(plan)
    json_path, md_path = write_report(report, out)
    sys.stdout.write(format_markdown(report) + f"\nwrote {json_path} and {md_path}\n")
    return 1 if any(item.status == FAILED for item in report.items) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill3d.gpu_check", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args.out, args.device, args.cpu_only)


if __name__ == "__main__":
    raise SystemExit(main())
