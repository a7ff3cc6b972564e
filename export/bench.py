"""Speed and memory of the volumetric teacher vs the student in each backend, same machine, same run.

For every runner (teacher in PyTorch; student in PyTorch eager, with FP16/BF16 autocast and as
replayed CUDA graphs on CUDA, optionally torch.compile'd, in ONNX Runtime, in TensorRT) and batch size: per-image latency (median and p95 of repeated timed calls
after warm-up, with device synchronisation), throughput, peak memory (process RSS sampled during
the calls on CPU; torch peak allocated/reserved and NVML on CUDA), FLOPs per image counted by
PyTorch's FlopCounterMode on the model itself (so ONNX/TensorRT inherit the student's count), and
the achieved fraction of the device's measured matrix-multiply peak.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models.eg3d.generator import TriPlaneGenerator
from ..models.render import orbit_camera, w_avg_of
from ..models.student import Student
from ..models.timing import synchronize, time_calls

log = logging.getLogger(__name__)


@dataclass
class Runner:
    """One way of rendering a batch: ``run(batch)`` renders ``batch`` images (inputs made once)."""

    name: str  # e.g. "student torch", "teacher volumetric"
    model: str  # "teacher" | "student"
    backend: str  # volumetric | torch | torch-fp16 | torch-bf16 | onnxruntime | tensorrt
    device: str
    precision: str
    prepare: Callable[[int], Callable[[], Any]]  # batch -> a no-argument call of that batch
    flops_per_image: float = 0.0


@dataclass
class Measurement:
    runner: str
    model: str
    backend: str
    device: str
    precision: str
    batch: int
    ms_per_image_median: float | None = None
    ms_per_image_p95: float | None = None
    images_per_s: float | None = None
    peak_rss_bytes: int | None = None  # the whole process (models included)
    rss_increase_bytes: int | None = None  # peak above the RSS just before the timed calls
    torch_peak_allocated_bytes: int | None = None
    torch_peak_reserved_bytes: int | None = None
    gpu_used_bytes: int | None = None
    flops_per_image: float = 0.0
    achieved_tflops: float | None = None
    fraction_of_matmul_peak: float | None = None
    error: str | None = None


@dataclass
class BenchReport:
    device: str
    device_name: str
    torch_version: str
    threads: int
    matmul_peak_tflops: float
    rows: list[Measurement] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def matmul_peak_tflops(device: str, dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    """Measured dense matmul throughput of ``device`` (the roofline we compare against)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    repeats = 20 if device.startswith("cuda") else 3
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    return 2 * n**3 / seconds / 1e12


def count_flops(call: Callable[[], Any]) -> float:
    """FLOPs of one call as PyTorch counts them (matmuls and convolutions; 2 per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        call()
    return float(counter.get_total_flops())


class _RssSampler:
    """Peak resident memory of this process while a block runs (sampled every 2 ms)."""

    def __init__(self) -> None:
        self.peak = self.before = 0
        self._process = psutil.Process()
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.002)

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        self.before = self.peak = self._process.memory_info().rss
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.clear()


def _inputs(model: Student | TriPlaneGenerator, batch: int, device: str, seed: int = 0):
    """Realistic inputs: w near w_avg, cameras across +-30 degrees yaw."""
    gen = torch.Generator().manual_seed(seed + batch)
    w = w_avg_of(model).detach().cpu() + 0.5 * torch.randn(batch, model.w_dim, generator=gen)
    yaws = np.linspace(-30, 30, batch).tolist() if batch > 1 else [10.0]
    c = orbit_camera(model, yaws, 5.0).to_label()
    return w.float().to(device), c.float().to(device)


def teacher_runner(teacher: TriPlaneGenerator, device: str) -> Runner:
    teacher = teacher.to(device).eval()

    def prepare(batch: int) -> Callable[[], Any]:
        w, c = _inputs(teacher, batch, device)
        ws = w[:, None].expand(-1, teacher.num_ws, -1)
        gens = [torch.Generator(device=device).manual_seed(i) for i in range(batch)]
        return lambda: teacher.synthesis(ws, c, noise_mode="const", rng=gens)["image"]

    runner = Runner("teacher volumetric", "teacher", "volumetric", device, "fp32", prepare)
    runner.flops_per_image = count_flops(prepare(1))
    return runner


def student_torch_runners(student: Student, device: str) -> list[Runner]:
    """Eager FP32, and on CUDA also FP16 and BF16 autocast."""
    student = student.to(device).eval()
    variants = [("torch", "fp32", None)]
    if device.startswith("cuda"):
        variants += [("torch-fp16", "fp16", torch.float16), ("torch-bf16", "bf16", torch.bfloat16)]
    runners = []
    for backend, precision, dtype in variants:

        def prepare(batch: int, dtype: torch.dtype | None = dtype) -> Callable[[], Any]:
            w, c = _inputs(student, batch, device)

            def call() -> Any:
                autocast = (
                    torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()
                )
                with autocast:
                    return student.synthesis(w, c, noise_mode="const")["image"]

            return call

        runners.append(Runner(f"student {backend}", "student", backend, device, precision, prepare))
    flops = count_flops(runners[0].prepare(1))
    for r in runners:
        r.flops_per_image = flops
    return runners


def student_compiled_runner(student: Student, device: str) -> Runner:
    """``torch.compile`` (Inductor) of the student's synthesis, one graph per batch size.

    Compilation happens in the warm-up calls, so the timed calls measure the compiled kernels.
    On CUDA the compiled graph runs under FP16 autocast, the precision it would be served at.
    """
    student = student.to(device).eval()
    cuda = device.startswith("cuda")

    def synthesis(w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()
        with autocast:
            return student.synthesis(w, c, noise_mode="const")["image"]

    compiled = torch.compile(synthesis, dynamic=False)

    def prepare(batch: int) -> Callable[[], Any]:
        w, c = _inputs(student, batch, device)
        return lambda: compiled(w, c)

    precision = "fp16" if cuda else "fp32"
    runner = Runner("student torch.compile", "student", "torch-compile", device, precision, prepare)
    return runner


def student_cuda_graph_runner(
    student: Student, device: str, dtype: torch.dtype = torch.float16
) -> Runner:
    """The student under autocast, captured once per batch size as a CUDA graph and replayed.

    Removes the per-kernel launch overhead that dominates small batches. Inputs live in static
    buffers (a server would copy each request into them); autocast's weight cache is disabled
    during capture, as CUDA graphs require.
    """
    if not device.startswith("cuda"):
        raise ValueError("CUDA graphs need a CUDA device")
    student = student.to(device).eval()

    def prepare(batch: int) -> Callable[[], Any]:
        w, c = _inputs(student, batch, device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.no_grad(), torch.cuda.stream(side):  # warm up allocator and cuDNN plans
            for _ in range(3):
                with torch.autocast("cuda", dtype=dtype, cache_enabled=False):
                    student.synthesis(w, c, noise_mode="const")
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        autocast = torch.autocast("cuda", dtype=dtype, cache_enabled=False)
        with torch.no_grad(), torch.cuda.graph(graph), autocast:
            image = student.synthesis(w, c, noise_mode="const")["image"]

        def call() -> torch.Tensor:
            graph.replay()
            return image

        return call

    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
    return Runner(
        f"student cudagraph-{precision}", "student", "torch-cudagraph", device, precision, prepare
    )


def student_onnx_runner(export_dir: Path, device: str, flops: float) -> Runner:
    from ..models.runtime.onnx import OnnxStudent
    from .onnx import sample_inputs

    backend = OnnxStudent(export_dir, device)
    make_inputs = sample_inputs(export_dir, backend.metadata)

    def prepare(batch: int) -> Callable[[], Any]:
        inputs = make_inputs(batch)
        return lambda: backend.session.run(None, inputs)

    return Runner(
        "student onnxruntime", "student", "onnxruntime", device, backend.precision, prepare, flops
    )


def student_tensorrt_runner(plan_dir: Path, export_dir: Path, device: str, flops: float) -> Runner:
    from ..models.runtime.export_files import read_export
    from ..models.runtime.tensorrt import TensorRTRunner
    from .onnx import sample_inputs

    runner = TensorRTRunner(plan_dir, device, export_dir=export_dir)
    make_inputs = sample_inputs(export_dir, read_export(export_dir))

    def prepare(batch: int) -> Callable[[], Any]:
        inputs = {k: torch.from_numpy(v).to(device) for k, v in make_inputs(batch).items()}
        return lambda: runner(inputs)

    return Runner(
        "student tensorrt", "student", "tensorrt", device, runner.metadata.precision, prepare, flops
    )


def measure(
    runner: Runner, batch: int, warmup: int = 2, repeats: int = 5, peak_tflops: float = 0.0
) -> Measurement:
    row = Measurement(
        runner.name, runner.model, runner.backend, runner.device, runner.precision, batch
    )
    row.flops_per_image = runner.flops_per_image
    cuda = runner.device.startswith("cuda")
    try:
        call = runner.prepare(batch)
        with torch.no_grad():
            for _ in range(warmup):
                call()
            synchronize(runner.device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(runner.device)
        sampler = _RssSampler()
        with sampler.sampling():
            times = time_calls(call, runner.device, warmup=0, repeats=repeats)
    except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
        row.error = f"out of memory: {str(exc).splitlines()[0][:120]}"
        return row
    except RuntimeError as exc:  # e.g. a capture or compile failure: report it, measure the rest
        log.exception("%s at batch %d failed", runner.name, batch)
        row.error = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        return row
    per_image = np.array(times) / batch
    row.ms_per_image_median = round(float(np.median(per_image)) * 1000, 3)
    row.ms_per_image_p95 = round(float(np.percentile(per_image, 95)) * 1000, 3)
    row.images_per_s = round(batch / float(np.median(times)), 3)
    row.peak_rss_bytes = int(sampler.peak)
    row.rss_increase_bytes = int(sampler.peak - sampler.before)
    if cuda:
        row.torch_peak_allocated_bytes = int(torch.cuda.max_memory_allocated(runner.device))
        row.torch_peak_reserved_bytes = int(torch.cuda.max_memory_reserved(runner.device))
        free, total = torch.cuda.mem_get_info(runner.device)
        row.gpu_used_bytes = int(total - free)
    if runner.flops_per_image and row.images_per_s:
        achieved = runner.flops_per_image * row.images_per_s / 1e12
        row.achieved_tflops = round(achieved, 4)
        if peak_tflops > 0:
            row.fraction_of_matmul_peak = round(achieved / peak_tflops, 4)
    return row


def run_bench(
    runners: Sequence[Runner],
    batch_sizes: Sequence[int],
    device: str,
    warmup: int = 2,
    repeats: int = 5,
    teacher_max_batch: int | None = None,
    progress: Callable[[Measurement], None] | None = None,
) -> BenchReport:
    """Measure every runner at every batch size; a runner stops growing after running out of
    memory. ``teacher_max_batch`` caps the (slow, memory-hungry) volumetric teacher."""
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else _cpu_name()
    report = BenchReport(
        device,
        name,
        torch.__version__,
        torch.get_num_threads(),
        round(matmul_peak_tflops(device), 4),
    )
    for runner in runners:
        for batch in batch_sizes:
            if runner.model == "teacher" and teacher_max_batch and batch > teacher_max_batch:
                break
            row = measure(runner, batch, warmup, repeats, report.matmul_peak_tflops)
            report.rows.append(row)
            if progress:
                progress(row)
            if row.error:
                break
        if runner.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return report


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def format_table(report: BenchReport) -> str:
    head = (
        f"{'runner':<22}{'prec':>5}{'batch':>6}{'ms/img':>10}{'p95':>10}{'img/s':>9}"
        f"{'mem MiB':>9}{'GFLOP/img':>11}{'TFLOP/s':>9}{'%peak':>7}"
    )
    lines = [
        f"{report.device} ({report.device_name}), torch {report.torch_version}, "
        f"{report.threads} threads, matmul peak {report.matmul_peak_tflops:.3f} TFLOP/s",
        head,
        "-" * len(head),
    ]
    for r in report.rows:
        if r.error:
            lines.append(f"{r.runner:<22}{r.precision:>5}{r.batch:>6}  {r.error}")
            continue
        mem = r.torch_peak_reserved_bytes if r.torch_peak_reserved_bytes else r.peak_rss_bytes
        pct = f"{100 * r.fraction_of_matmul_peak:.1f}" if r.fraction_of_matmul_peak else "-"
        lines.append(
            f"{r.runner:<22}{r.precision:>5}{r.batch:>6}{r.ms_per_image_median:>10.1f}"
            f"{r.ms_per_image_p95:>10.1f}{r.images_per_s:>9.2f}{(mem or 0) / 2**20:>9.0f}"
            f"{r.flops_per_image / 1e9:>11.2f}{(r.achieved_tflops or 0):>9.3f}{pct:>7}"
        )
    return "\n".join(lines)


def save_json(report: BenchReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n")


def plot_report(report: BenchReport, path: Path, size: tuple[int, int] = (1200, 520)) -> None:
    """Throughput and peak memory vs batch size, one line per runner, as a PNG (Pillow only)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    runners = list(dict.fromkeys(r.runner for r in report.rows))
    batches = sorted({r.batch for r in report.rows})
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]
    panels = [
        ("images / s", lambda r: r.images_per_s),
        (
            "peak memory, MiB",
            lambda r: (r.torch_peak_reserved_bytes or r.peak_rss_bytes or 0) / 2**20,
        ),
    ]
    width = size[0] // 2
    for p, (title, value) in enumerate(panels):
        left, top, right, bottom = p * width + 70, 40, (p + 1) * width - 20, size[1] - 110
        draw.text((left, 12), title, fill="black")
        draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
        values = [value(r) for r in report.rows if not r.error]
        ymax = max(values, default=1.0) * 1.1 or 1.0
        for k in range(5):
            y = bottom - (bottom - top) * k / 4
            draw.line([(left - 4, y), (left, y)], fill="black")
            draw.text((left - 62, y - 6), f"{ymax * k / 4:.3g}", fill="black")

        def x_of(batch: int, left: float = left, right: float = right) -> float:
            i = batches.index(batch)
            return left + (right - left) * (i + 0.5) / len(batches)

        for b in batches:
            draw.text((x_of(b) - 6, bottom + 6), str(b), fill="black")
        draw.text(((left + right) / 2 - 30, bottom + 22), "batch size", fill="black")
        for i, name in enumerate(runners):
            colour = colours[i % len(colours)]
            points = [
                (x_of(r.batch), bottom - (bottom - top) * value(r) / ymax)
                for r in report.rows
                if r.runner == name and not r.error
            ]
            if len(points) > 1:
                draw.line(points, fill=colour, width=3)
            for x, y in points:
                draw.ellipse([(x - 4, y - 4), (x + 4, y + 4)], fill=colour)
    for i, name in enumerate(runners):
        x = 70 + (i % 4) * 280
        y = size[1] - 60 + (i // 4) * 18
        draw.rectangle([(x, y + 3), (x + 14, y + 11)], fill=colours[i % len(colours)])
        draw.text((x + 20, y), name, fill="black")
    draw.text((70, size[1] - 22), f"{report.device_name} ({report.device})", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def preset_models(preset_name: str, seed: int) -> tuple[TriPlaneGenerator, Student]:
    """A random-weight teacher of a preset architecture and the student mirroring it, so the
    official architectures can be timed without their weights. A light student preset
    (``ffhq512-light``, ...) comes with the teacher it distils."""
    from ..models.load import init_generator
    from ..models.student import student_from_teacher, student_preset, teacher_preset_of

    teacher = init_generator(teacher_preset_of(preset_name), seed=seed)
    return teacher, student_from_teacher(teacher, student_preset(preset_name))


@dataclass(frozen=True)
class RunnerChoice:
    """Which runners beyond the eager ones to assemble.

    ``export_source`` asks for the student to be exported to ONNX first (into a temporary
    folder), with that provenance in its export.json, for the ONNX Runtime row.
    """

    cuda_graphs: bool = True
    compiled: bool = False
    onnx_dir: Path | None = None
    plan_dir: Path | None = None
    export_source: dict[str, str] | None = None


def _torch_student_runners(student: Student, device: str, choice: RunnerChoice) -> list[Runner]:
    """Eager (and autocast), CUDA-graph and compiled student runners, all credited with the
    eager model's FLOPs (the others run the same arithmetic)."""
    runners = student_torch_runners(student, device)
    if device.startswith("cuda") and choice.cuda_graphs:
        runners.append(student_cuda_graph_runner(student, device))
    if choice.compiled:
        runners.append(student_compiled_runner(student, device))
    for runner in runners:
        runner.flops_per_image = runners[0].flops_per_image
    return runners


@contextlib.contextmanager
def bench_runners(
    teacher: TriPlaneGenerator | None,
    student: Student | None,
    device: str,
    choice: RunnerChoice | None = None,
) -> Iterator[list[Runner]]:
    """Every runner to measure, in table order: teacher, student in PyTorch, ONNX Runtime and
    TensorRT. A context manager because an ONNX export made for the run lives in a temporary
    folder until the measurements are done."""
    choice = choice or RunnerChoice()
    if choice.export_source is not None and student is None:
        raise ValueError("exporting to ONNX for the bench needs a student")
    if choice.plan_dir is not None and choice.onnx_dir is None and choice.export_source is None:
        raise ValueError("a TensorRT plan needs the ONNX export it was built from")
    runners = [] if teacher is None else [teacher_runner(teacher, device)]
    flops = 0.0
    if student is not None:
        torch_runners = _torch_student_runners(student, device, choice)
        flops = torch_runners[0].flops_per_image
        runners += torch_runners
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = choice.onnx_dir
        if choice.export_source is not None:
            from .onnx import export_onnx

            onnx_dir = Path(tmp) / "export"
            export_onnx(student, onnx_dir, choice.export_source, fp16=device.startswith("cuda"))
        if onnx_dir is not None:
            runners.append(student_onnx_runner(onnx_dir, device, flops))
            from ..models.runtime.export_files import read_export
            from ..models.runtime.onnx import INT8_KEY

            if not device.startswith("cuda") and INT8_KEY in read_export(onnx_dir)["graphs"]:
                from .int8 import student_int8_runner  # the graph distill3d export int8 adds

                runners.append(student_int8_runner(onnx_dir, flops))
        if choice.plan_dir is not None and onnx_dir is not None:
            runners.append(student_tensorrt_runner(choice.plan_dir, onnx_dir, device, flops))
        yield runners
