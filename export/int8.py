"""INT8 student graph: ONNX Runtime static quantization, calibrated on the poses it will serve.

Why static QDQ quantization of the convolutions only:
- almost all of the student's arithmetic is in its ``Conv`` / ``ConvTranspose`` nodes (the S2D
  and the super-resolution); the fully connected layers (mappings, style affines) are a rounding
  error of the cost but set every modulation, so they stay FP32 and so does every elementwise op;
- QDQ (QuantizeLinear/DequantizeLinear pairs around each quantized op) is the format ONNX Runtime
  fuses into integer kernels on CPU and that TensorRT reads as explicit quantization;
- per-channel weight scales, because the output channels of a modulated convolution have very
  different ranges (about 1 dB better than one scale per tensor on the demo student);
- activation ranges are calibrated on what a service sends: w = mapping(z ~ N(0, I)) with the
  frontal conditioning camera baked into ``mapping.onnx`` and a truncation psi in the served range,
  and orbit cameras within the checkpoint's pose range (``source.pose_range`` in ``export.json``).

The quantized graph is checked like the FP16 one (``export/fp16.py``): on held-out samples (other
seeds than the calibration's) the PSNR of its images against the FP32 graph's must reach a floor,
or it is refused with ``Int8Refused`` and nothing is written. Its record in ``export.json``
carries the verification and the quantization settings.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..models.runtime.errors import ExportError
from ..models.runtime.export_files import graph_path, read_export
from ..models.runtime.onnx import INT8_KEY
from ..models.student import DEFAULT_POSE_RANGE
from .fp16 import psnr_db
from .onnx import VERIFY_BATCH_SIZES, install_student_variant

STUDENT_INT8_GRAPH = "student_int8.onnx"
DEFAULT_MIN_INT8_PSNR_DB = 30.0  # below FP16's 40 dB: 8-bit activations cost ~10 dB more
QUANTIZED_OPS = ("Conv", "ConvTranspose")
PSI_RANGE = (0.5, 1.0)  # truncation the service is used with


class Int8Refused(ExportError):
    """The INT8 graph fell below the PSNR floor against the FP32 graph; nothing was written."""


@dataclass(frozen=True)
class Int8Settings:
    """How the graph is quantized and calibrated (recorded in ``export.json``)."""

    calibration_samples: int = 64
    calibration_batch: int = 8
    per_channel: bool = True
    method: str = "minmax"  # minmax | entropy | percentile (onnxruntime's CalibrationMethod)
    activation_type: str = "quint8"  # u8 activations, s8 weights: the fast path on x86 CPUs
    seed: int = 1000  # calibration seeds; verification uses ``seed + 10_000``

    def __post_init__(self) -> None:
        if self.calibration_samples < 1 or self.calibration_batch < 1:
            raise ValueError("calibration_samples and calibration_batch must be positive")
        if self.method not in ("minmax", "entropy", "percentile"):
            raise ValueError(f"unknown calibration method {self.method!r}")
        if self.activation_type not in ("quint8", "qint8"):
            raise ValueError(f"activation_type must be quint8 or qint8, not {self.activation_type}")


def pose_range_of(metadata: dict[str, Any]) -> dict[str, float]:
    """The poses the exported student is trusted for: its checkpoint's, else the default."""
    recorded = metadata.get("source", {}).get("pose_range") or DEFAULT_POSE_RANGE
    return {"yaw_deg": float(recorded["yaw_deg"]), "pitch_deg": float(recorded["pitch_deg"])}


def served_inputs(
    folder: str | os.PathLike[str],
    metadata: dict[str, Any],
    seed: int,
    pose_range: dict[str, float] | None = None,
) -> Callable[[int], dict[str, np.ndarray]]:
    """Student inputs as a service draws them, from the export folder alone.

    z ~ N(0, I) through ``mapping.onnx`` (frontal conditioning camera, psi uniform in
    ``PSI_RANGE``) gives w; cameras orbit within +-``pose_range`` degrees. The same generator
    with different seeds provides the calibration set and the held-out verification set.
    """
    import onnxruntime as ort

    from ..models.camera import Camera

    session = ort.InferenceSession(
        str(graph_path(folder, metadata, "mapping")), providers=["CPUExecutionProvider"]
    )
    z_dim = int(metadata["graphs"]["mapping"]["inputs"]["z"][1])
    cam = metadata["camera"]
    poses = pose_range or pose_range_of(metadata)

    def make(batch: int, offset: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([seed, offset, batch])
        z = rng.standard_normal((batch, z_dim)).astype(np.float32)
        psi = rng.uniform(*PSI_RANGE, (batch, 1)).astype(np.float32)
        (w,) = session.run(None, {"z": z, "truncation_psi": psi})
        yaw = rng.uniform(-poses["yaw_deg"], poses["yaw_deg"], batch).tolist()
        pitch = rng.uniform(-poses["pitch_deg"], poses["pitch_deg"], batch).tolist()
        c = Camera.orbit(yaw, pitch, cam["radius"], cam["pivot"], cam["focal_length"]).to_label()
        return {"w": w.astype(np.float32), "c": c.numpy().astype(np.float32)}

    return make


def _calibration_reader(make: Callable[..., dict[str, np.ndarray]], settings: Int8Settings) -> Any:
    """A ``CalibrationDataReader`` that draws its batches lazily (memory stays one batch)."""
    from onnxruntime.quantization import CalibrationDataReader

    class ServedPoses(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = self._draw()

        def _draw(self) -> Iterator[dict[str, np.ndarray]]:
            left, offset = settings.calibration_samples, 0
            while left > 0:
                batch = min(settings.calibration_batch, left)
                yield make(batch, offset)
                left, offset = left - batch, offset + 1

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

        def rewind(self) -> None:
            self._batches = self._draw()

    return ServedPoses()


def _bias_as_vector(model: Any) -> None:
    """Give every Gemm a 1-D bias: the exporter writes [1, N], which the quantizer's per-channel
    bias handling cannot take (only matters when Gemm is quantized; harmless otherwise)."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gemm" and len(node.input) == 3 and node.input[2] in initializers:
            tensor = initializers[node.input[2]]
            if len(tensor.dims) == 2 and tensor.dims[0] == 1:
                value = numpy_helper.to_array(tensor).reshape(-1)
                tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))


def quantize_student(
    fp32_path: Path,
    dst: Path,
    make: Callable[..., dict[str, np.ndarray]],
    settings: Int8Settings,
    op_types: Sequence[str] = QUANTIZED_OPS,
) -> None:
    """Write ``dst``: ``fp32_path`` with QDQ INT8 ``op_types``, calibrated on ``make``'s batches."""
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ExportError(
            "INT8 export needs onnx and onnxruntime: pip install 'distill3d[export]'"
        ) from exc
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    activation = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}[settings.activation_type]
    with tempfile.TemporaryDirectory(prefix="distill3d-int8-") as tmp:
        # Shape inference and constant folding first, so weights reach the quantizer as constants.
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        model = onnx.load(str(pre))
        _bias_as_vector(model)
        onnx.save(model, str(pre))
        quantize_static(
            str(pre),
            str(dst),
            _calibration_reader(make, settings),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=settings.per_channel,
            activation_type=activation,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[settings.method],
            extra_options={
                "WeightSymmetric": True,
                "ActivationSymmetric": False,
                # onnxruntime's bias-scale adjustment breaks on per-channel 2-D biases.
                "QDQDisableWeightAdjustForInt32Bias": True,
            },
        )


def verify_int8(
    fp32_path: Path,
    int8_path: Path,
    make: Callable[..., dict[str, np.ndarray]],
    batch_sizes: Sequence[int],
    min_psnr_db: float,
) -> dict[str, Any]:
    """PSNR and largest difference of the INT8 graph's outputs against the FP32 graph's, per
    output and batch size; ``Int8Refused`` when any PSNR is below ``min_psnr_db``."""
    import onnxruntime as ort

    s32 = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    s8 = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in s32.get_outputs()]
    report: dict[str, Any] = {
        "reference": fp32_path.name,
        "min_psnr_db": min_psnr_db,
        "held_out": "seeds disjoint from the calibration set, same pose and psi ranges",
        "psnr_db": {},
        "max_abs_error": {},
    }
    for b in batch_sizes:
        inputs = make(b, 1_000_000)  # an offset the calibration never reaches
        for name, a, q in zip(names, s32.run(None, inputs), s8.run(None, inputs), strict=True):
            if q.dtype != np.float32 or q.shape != a.shape:
                raise ExportError(
                    f"the INT8 graph gives {name} as {q.dtype} {list(q.shape)}, "
                    f"expected float32 {list(a.shape)}"
                )
            value = psnr_db(a, q)
            key = f"{name}@{b}"
            report["psnr_db"][key] = round(value, 2) if np.isfinite(value) else "inf"
            report["max_abs_error"][key] = round(float(np.abs(a - q).max()), 5)
            if not value >= min_psnr_db:
                raise Int8Refused(
                    f"the INT8 graph's {name} at batch {b} is {value:.1f} dB from the FP32 graph "
                    f"(needs >= {min_psnr_db} dB); the INT8 graph was not written. Calibrate on "
                    "more samples, try --method percentile, or serve the FP16/FP32 graph"
                )
    return report


def add_int8_graph(
    folder: str | os.PathLike[str],
    min_psnr_db: float = DEFAULT_MIN_INT8_PSNR_DB,
    settings: Int8Settings | None = None,
    batch_sizes: Sequence[int] = VERIFY_BATCH_SIZES,
) -> dict[str, Any]:
    """Quantize an export folder's ``student.onnx`` into ``student_int8.onnx`` and record it.

    The graph is built under a temporary name and verified first; one below the floor is
    deleted (``Int8Refused``) and the folder is left as it was. Returns the new ``export.json``.
    """
    import onnxruntime

    settings = settings or Int8Settings()
    folder = Path(folder)
    metadata = read_export(folder)
    fp32 = graph_path(folder, metadata, "student")
    poses = pose_range_of(metadata)
    tmp = folder / f".{STUDENT_INT8_GRAPH}.tmp"
    try:
        quantize_student(fp32, tmp, served_inputs(folder, metadata, settings.seed, poses), settings)
        verification = verify_int8(
            fp32,
            tmp,
            served_inputs(folder, metadata, settings.seed + 10_000, poses),
            batch_sizes,
            min_psnr_db,
        )
        verification["calibration"] = {
            **asdict(settings),
            "pose_range": poses,
            "truncation_psi": list(PSI_RANGE),
            "z": "N(0, I) through mapping.onnx (frontal conditioning camera)",
        }
        verification["quantization"] = {
            "format": "QDQ",
            "quantized_ops": list(QUANTIZED_OPS),
            "weights": "int8, symmetric, "
            + ("per channel" if settings.per_channel else "per tensor"),
            "activations": f"{settings.activation_type[1:]}, asymmetric, per tensor",
            "onnxruntime_version": onnxruntime.__version__,
        }
        return install_student_variant(
            folder, metadata, INT8_KEY, tmp, STUDENT_INT8_GRAPH, "int8", verification
        )
    finally:
        tmp.unlink(missing_ok=True)


def student_int8_runner(export_dir: Path, flops: float) -> Any:
    """A bench runner (``export/bench.py``) for the INT8 graph in ONNX Runtime on the CPU, fed
    the same realistic inputs as the FP32 ONNX row so the two compare directly."""
    import onnxruntime as ort

    from .bench import Runner
    from .onnx import sample_inputs

    metadata = read_export(export_dir)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        str(graph_path(export_dir, metadata, INT8_KEY)), options, providers=["CPUExecutionProvider"]
    )
    make_inputs = sample_inputs(export_dir, metadata)

    def prepare(batch: int) -> Callable[[], Any]:
        inputs = make_inputs(batch)
        return lambda: session.run(None, inputs)

    return Runner(
        "student onnxruntime-int8", "student", "onnxruntime", "cpu", "int8", prepare, flops
    )
