"""Loading what the service serves: the teacher, the student in each available backend, the
latent mapping, each model's declared pose range, and what /v1/models reports about them."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..models.camera import Camera, CameraConvention
from ..models.eg3d.generator import TriPlaneGenerator
from ..models.errors import ConfigError
from ..models.mapping import LatentModel, camera_convention
from ..models.runtime.export_files import read_export
from ..models.runtime.onnx import INT8_KEY, OnnxMapper, OnnxStudent, SessionSettings
from ..models.student import DEFAULT_POSE_RANGE, Student
from .backends import (
    Backend,
    LatentMapper,
    Mapper,
    TensorRTStudent,
    TorchStudent,
    Volumetric,
    time_backend,
    tune_max_batch,
)
from .settings import ServiceSettings
from .student_export import GraphExporter, cached_export

log = logging.getLogger(__name__)

# Declared when a checkpoint does not say: the student is trusted within 1.5x the default
# training distribution's limits (what the held-out evaluation covers), the teacher to profile.
DEFAULT_STUDENT_RANGE = DEFAULT_POSE_RANGE
DEFAULT_TEACHER_RANGE = {"yaw_deg": 90.0, "pitch_deg": 45.0}


@dataclass(frozen=True)
class PoseRange:
    """Poses a model is declared valid for: |yaw|, |pitch| bounds and radius / fov intervals."""

    yaw_deg: float
    pitch_deg: float
    radius: tuple[float, float]
    fov_deg: tuple[float, float]

    @classmethod
    def around(cls, limits: dict[str, float], camera: CameraConvention) -> PoseRange:
        return cls(
            float(limits["yaw_deg"]),
            float(limits["pitch_deg"]),
            (round(camera.radius * 0.9, 4), round(camera.radius * 1.1, 4)),
            (round(camera.fov_deg * 0.75, 3), round(camera.fov_deg * 1.33, 3)),
        )

    def violations(self, camera: Camera) -> list[tuple[str, str]]:
        """(field, message) for every way ``camera`` falls outside this range."""
        yaw, pitch, radius = (float(v[0]) for v in camera.orbit_angles())
        fov = float(camera.fov_deg()[0])
        out = []
        if abs(yaw) > self.yaw_deg + 1e-4:
            out.append(("yaw", f"yaw {yaw:.1f} is outside [-{self.yaw_deg:g}, {self.yaw_deg:g}]"))
        if abs(pitch) > self.pitch_deg + 1e-4:
            out.append(
                ("pitch", f"pitch {pitch:.1f} is outside [-{self.pitch_deg:g}, {self.pitch_deg:g}]")
            )
        lo, hi = self.radius
        if not lo - 1e-4 <= radius <= hi + 1e-4:
            out.append(("radius", f"radius {radius:.3f} is outside [{lo:g}, {hi:g}]"))
        lo, hi = self.fov_deg
        if not lo - 1e-3 <= fov <= hi + 1e-3:
            out.append(("fov_deg", f"fov_deg {fov:.2f} is outside [{lo:g}, {hi:g}]"))
        return out


@dataclass
class ModelInfo:
    """One loaded model as /v1/models reports it."""

    role: str  # student | volumetric
    backend: str
    device: str
    precision: str
    img_resolution: int
    source: str
    sha256: str
    pose_range: PoseRange
    max_batch_size: int
    warmup_s_per_image: float | None = None
    candidates: dict[str, Any] = field(default_factory=dict)
    # images/s by batch size as measured at warm-up (``tune_batch``), which set max_batch_size
    batch_images_per_s: dict[int, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModels:
    mapper: Mapper
    camera: CameraConvention
    z_dim: int
    w_dim: int
    student: tuple[Backend, ModelInfo] | None = None
    volumetric: tuple[Backend, ModelInfo] | None = None
    num_ws: int | None = None  # known when a PyTorch model is loaded (per-layer latents)
    # The PyTorch models themselves, for what needs gradients (inversion).
    student_model: Student | None = None
    teacher_model: TriPlaneGenerator | None = None


def _load_torch(spec: str, device: str) -> tuple[Any, str, dict[str, Any]]:
    """(model, weights hash, checkpoint metadata) of a shipped model, a checkpoint folder or a
    .pkl."""
    from ..models.checkpoint import read_checkpoint_info, sha256_file
    from ..models.load import load_model, shipped_path

    model = load_model(spec, device=device)
    path = shipped_path(spec) or Path(spec)
    if path.is_dir():
        info = read_checkpoint_info(path)
        return model, info.weights_sha256, dict(info.metadata)
    return model, sha256_file(path), {}


def load_models(
    settings: ServiceSettings, device: str, exporter: GraphExporter | None = None
) -> LoadedModels:
    """Load the configured models, time the student's backends, keep the fastest (``auto``),
    and size its batches from the same warm-up (``tune_batch``). ``exporter`` lets a PyTorch
    student be exported to ONNX so that ONNX Runtime is among the candidates
    (``onnx_export``)."""
    teacher = student_torch = None
    teacher_sha = student_sha = ""
    student_meta: dict[str, Any] = {}
    if settings.teacher is not None:
        teacher, teacher_sha, _ = _load_torch(settings.teacher, device)
        if not isinstance(teacher, TriPlaneGenerator):
            raise ConfigError(
                f"teacher {settings.teacher} is a {type(teacher).__name__}, not a volumetric "
                "EG3D generator; pass the student as DISTILL3D_STUDENT"
            )
    if settings.student is not None:
        student_torch, student_sha, student_meta = _load_torch(settings.student, device)
        if not isinstance(student_torch, Student):
            raise ConfigError(
                f"student {settings.student} is a {type(student_torch).__name__}; "
                "DISTILL3D_STUDENT takes a student checkpoint (a run's student/ folder)"
            )

    export = read_export(settings.onnx_dir) if settings.onnx_dir is not None else None

    torch_model: LatentModel | None = teacher if teacher is not None else student_torch
    if torch_model is not None:
        mapper: Mapper = LatentMapper(torch_model, device)
        camera = camera_convention(torch_model)
    else:
        assert settings.onnx_dir is not None and export is not None
        mapper = OnnxMapper(settings.onnx_dir)
        camera = CameraConvention.from_json(export["camera"])
    loaded = LoadedModels(mapper, camera, mapper.z_dim, mapper.w_dim)
    loaded.student_model, loaded.teacher_model = student_torch, teacher
    if torch_model is not None:
        loaded.num_ws = int(torch_model.num_ws)

    if teacher is not None:
        backend = Volumetric(teacher, device, max_batch=settings.teacher_max_batch_size)
        info = ModelInfo(
            "volumetric",
            "volumetric",
            device,
            "fp32",
            teacher.config.img_resolution,
            str(settings.teacher),
            teacher_sha,
            PoseRange.around(DEFAULT_TEACHER_RANGE, camera),
            backend.max_batch,
        )
        loaded.volumetric = (backend, info)

    limits = student_meta.get("pose_range") or (
        (export or {}).get("source", {}).get("pose_range") or DEFAULT_STUDENT_RANGE
    )
    candidates = _student_candidates(settings, device, student_torch)
    if student_torch is not None and "onnxruntime" not in candidates:
        onnx = _exported_student(settings, device, student_torch, student_sha, limits, exporter)
        if onnx is not None:
            candidates["onnxruntime"] = onnx
    _check_wanted(settings, candidates)
    if candidates:
        # Every timing renders the frontal view (one camera label [1, 25]).
        probe_c = camera.frontal().to_label().numpy().astype(np.float32)
        loaded.student = _pick_student(
            candidates, settings, device, camera, probe_c, limits, export, student_sha
        )
        if settings.tune_batch and settings.warmup:  # no warm-up asked for: no timing either
            _tune_batch(*loaded.student, probe_c, settings.max_batch_size)
        if teacher is not None:
            _check_pair(loaded, student_meta, export, teacher_sha)
    return loaded


def _student_candidates(
    settings: ServiceSettings, device: str, student: Student | None
) -> dict[str, Backend | str]:
    """Each configured student backend, or the reason it cannot load."""
    wanted = settings.student_backend
    out: dict[str, Backend | str] = {}
    if student is not None and wanted in ("auto", "torch"):
        out["torch"] = TorchStudent(student, device, max_batch=settings.max_batch_size)
    if settings.onnx_dir is not None and wanted in ("auto", "onnxruntime"):
        try:
            out["onnxruntime"] = OnnxStudent(
                settings.onnx_dir, device, settings.max_batch_size, session_settings(settings)
            )
        except Exception as exc:
            out["onnxruntime"] = f"unavailable: {exc}"
    if settings.onnx_dir is not None and (
        wanted == "onnxruntime-int8"
        or (wanted == "auto" and _has_int8(settings.onnx_dir) and not device.startswith("cuda"))
    ):
        try:
            out["onnxruntime-int8"] = OnnxStudent(
                settings.onnx_dir,
                device,
                settings.max_batch_size,
                session_settings(settings),
                int8=True,
            )
        except Exception as exc:
            out["onnxruntime-int8"] = f"unavailable: {exc}"
    if settings.plan_dir is not None and wanted in ("auto", "tensorrt"):
        try:
            assert settings.onnx_dir is not None
            out["tensorrt"] = TensorRTStudent(settings.plan_dir, settings.onnx_dir, device)
        except Exception as exc:
            out["tensorrt"] = f"unavailable: {exc}"
    return out


def _has_int8(export_dir: Path) -> bool:
    """Whether an export holds an INT8 graph (auto times it beside FP32 on the CPU)."""
    try:
        return INT8_KEY in read_export(export_dir)["graphs"]
    except Exception:
        return False


def session_settings(settings: ServiceSettings) -> SessionSettings:
    return SessionSettings(
        settings.onnx_intra_op_threads, settings.onnx_inter_op_threads, settings.onnx_cpu_arena
    )


def _exported_student(
    settings: ServiceSettings,
    device: str,
    student: Student,
    sha: str,
    limits: dict[str, float],
    exporter: GraphExporter | None,
) -> Backend | str | None:
    """ONNX Runtime on an export of the PyTorch student (cached), or why not; None when it is
    not wanted (another backend asked for, ``onnx_export`` off)."""
    if settings.student_backend not in ("auto", "onnxruntime") or not settings.onnx_export:
        return None
    if exporter is None:
        return "unavailable: no exporter (start the service with `distill3d serve`)"
    try:
        import onnxruntime  # noqa: F401  (before exporting for nothing)

        folder = cached_export(student, exporter, str(settings.student), sha, dict(limits))
        return OnnxStudent(folder, device, settings.max_batch_size, session_settings(settings))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.info("the student is not served through ONNX Runtime: %s", reason)
        return f"unavailable: {reason}"


def _check_wanted(settings: ServiceSettings, candidates: dict[str, Backend | str]) -> None:
    """A backend asked for by name must have loaded: say what it needs, or why it failed."""
    wanted = settings.student_backend
    if wanted == "auto":
        return
    chosen = candidates.get(wanted)
    if chosen is None:
        raise ConfigError(
            f"student_backend={wanted} but nothing for it is configured "
            "(torch: DISTILL3D_STUDENT; onnxruntime: DISTILL3D_ONNX_DIR, or DISTILL3D_STUDENT "
            "with the export extra; onnxruntime-int8: DISTILL3D_ONNX_DIR with an INT8 graph; "
            "tensorrt: DISTILL3D_PLAN_DIR and DISTILL3D_ONNX_DIR)"
        )
    if isinstance(chosen, str):
        raise ConfigError(f"student_backend={wanted}: {chosen}")


def _pick_student(
    candidates: dict[str, Backend | str],
    settings: ServiceSettings,
    device: str,
    camera: CameraConvention,
    probe_c: np.ndarray,
    limits: dict[str, float],
    export: dict[str, Any] | None,
    student_sha: str,
) -> tuple[Backend, ModelInfo]:
    usable = {k: v for k, v in candidates.items() if not isinstance(v, str)}
    report: dict[str, Any] = {k: v for k, v in candidates.items() if isinstance(v, str)}
    if not usable:
        raise ConfigError("no student backend could load: " + "; ".join(report.values()))
    timings: dict[str, float] = {}
    if len(usable) > 1:
        timings, failures = race_backends(usable, probe_c)
        report.update(failures)
        report.update({k: f"{t * 1000:.1f} ms per image at batch 1" for k, t in timings.items()})
        if not timings:
            raise ConfigError(f"every student backend failed its warm-up: {report}")
        name = min(timings, key=timings.__getitem__)
    else:
        name = next(iter(usable))
    backend = usable[name]
    source = settings.student or str(settings.onnx_dir)
    sha = student_sha or (export or {}).get("source", {}).get("weights_sha256", "")
    info = ModelInfo(
        "student",
        name,
        device,
        backend.precision,
        backend.img_resolution,
        source,
        sha,
        PoseRange.around(limits, camera),
        backend.max_batch,
        warmup_s_per_image=timings.get(name),
        candidates=report,
    )
    return backend, info


def race_backends(
    backends: dict[str, Backend], c: np.ndarray, rounds: int = 5
) -> tuple[dict[str, float], dict[str, str]]:
    """(fastest seconds of a batch-1 render by backend, failures): every backend renders once
    untimed, then once per round in turn, and keeps its fastest round.

    Interleaved rounds and the minimum, because backends in one process disturb each other's
    timing: the threads of the one timed last (PyTorch's OpenMP pool, ONNX Runtime's) keep
    spinning for a while after its calls, on the same cores.
    """
    failures: dict[str, str] = {}
    live = {}
    for name, backend in backends.items():
        try:
            backend.render(np.zeros((1, backend.w_dim), np.float32), c)
            live[name] = backend
        except Exception as exc:
            failures[name] = f"failed its warm-up: {exc}"
    best = {name: float("inf") for name in live}
    for _ in range(rounds):
        for name, backend in live.items():
            w = np.zeros((1, backend.w_dim), np.float32)
            best[name] = min(best[name], time_backend(backend, w, c, repeats=1, warm=False))
    return best, failures


def _tune_batch(backend: Backend, info: ModelInfo, probe_c: np.ndarray, cap: int) -> None:
    """Cap the student's batches at the size with the most images/s (``tune_max_batch``)."""
    best, rates = tune_max_batch(backend, probe_c, min(cap, backend.max_batch))
    backend.max_batch = best
    info.max_batch_size = best
    info.batch_images_per_s = {size: round(rate, 2) for size, rate in rates.items()}
    log.info("student batches capped at %d (images/s by batch size: %s)", best, rates)


def _check_pair(
    loaded: LoadedModels, student_meta: dict[str, Any], export: dict[str, Any] | None, sha: str
) -> None:
    """Note when the student was not distilled from the loaded teacher (a seed then names
    different identities in the two backends, and fallbacks change the picture)."""
    assert loaded.student is not None
    recorded = student_meta.get("teacher_sha256") or (export or {}).get("source", {}).get(
        "teacher_sha256", ""
    )
    if recorded and sha and recorded != sha:
        note = (
            f"the student was distilled from teacher {recorded[:12]}..., the loaded teacher is "
            f"{sha[:12]}...; renders of one latent will differ between backends"
        )
        log.warning(note)
        loaded.student[1].notes.append(note)
