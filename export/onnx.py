"""ONNX export of the student (w, c) -> image and of the teacher's z -> w mapping, verified.

Choices (docs/serving.md §1):
- torch's dynamo exporter at opset 18 (the lowest it builds; later opsets respell GridSample,
  which TensorRT misreads), with a dynamic batch axis on every input and output;
- the non-fused modulated convolution (a grouped conv would bake the batch into ``group``),
  constant noise, FP32;
- every graph is run in ONNX Runtime against PyTorch at several batch sizes before it is written;
  a graph that disagrees is refused, not saved.

Metadata travels in ``export.json`` beside the graphs and in each graph's ``metadata_props``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..models.checkpoint import sha256_file
from ..models.editing import truncate
from ..models.render import frontal_camera
from ..models.runtime.errors import ExportError
from ..models.runtime.export_files import EXPORT_FORMAT, METADATA_NAME, graph_path
from ..models.runtime.triton_names import (
    CAMERA_LABEL_SIZE,
    IMAGE,
    IMAGE_RAW,
    TRUNCATION_PSI,
    C,
    W,
    Z,
)
from ..models.student import Student

log = logging.getLogger(__name__)

OPSET = 18
STUDENT_GRAPH = "student.onnx"
MAPPING_GRAPH = "mapping.onnx"
STUDENT_FP16_GRAPH = "student_fp16.onnx"
VERIFY_BATCH_SIZES = (1, 2, 5)
MAX_BATCH = 1024  # upper bound of the exported dynamic batch axis


class StudentGraph(nn.Module):
    """What the ONNX graph computes: (w [B, w_dim], c [B, 25]) -> image (and image_raw)."""

    def __init__(self, student: Student, with_raw: bool) -> None:
        super().__init__()
        self.student = student
        self.with_raw = with_raw

    def forward(self, w: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.student.synthesis(w, c, noise_mode="const", fused_modconv=False)
        return (out["image"], out["image_raw"]) if self.with_raw else (out["image"],)


class MappingGraph(nn.Module):
    """(z [B, z_dim], truncation_psi [B, 1]) -> w [B, w_dim], mapped with the frontal camera.

    The frontal conditioning camera is a constant of the graph (as EG3D's sampling scripts use);
    truncation is an input so one graph serves every psi.
    """

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.mapping = student.teacher_mapping
        c = student.config.rendering.mapping_condition(frontal_camera(student).to_label())
        self.register_buffer("c_frontal", c)

    def forward(self, z: torch.Tensor, truncation_psi: torch.Tensor) -> tuple[torch.Tensor]:
        c = self.c_frontal.expand(z.shape[0], -1)  # already zeroed/scaled for the mapping
        w = self.mapping(z, c)[:, 0]
        return (truncate(w, self.mapping.w_avg, truncation_psi),)


@dataclass
class GraphSpec:
    """Names and shapes of a graph's tensors ("batch" = the dynamic axis)."""

    file: str
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    precision: str = "fp32"
    sha256: str = ""
    verification: dict[str, Any] = field(default_factory=dict)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'distill3d[export]'"
        ) from exc


def _export(
    module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, names: GraphSpec
) -> None:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dynamic = {name: {0: batch} for name in names.inputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(names.inputs),
            output_names=list(names.outputs),
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes=dynamic,
            external_data=False,
            verbose=False,
        )


def verify_graph(
    path: Path,
    reference: Callable[..., Sequence[torch.Tensor]],
    make_inputs: Callable[[int], dict[str, np.ndarray]],
    batch_sizes: Sequence[int] = VERIFY_BATCH_SIZES,
    atol: float = 1e-3,
) -> dict[str, Any]:
    """Run the graph in ONNX Runtime (CPU) and ``reference`` at each batch size.

    Raises ``ExportError`` naming the batch size and output when the largest absolute difference
    exceeds ``atol``; returns the measured differences otherwise.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    report: dict[str, Any] = {"batch_sizes": list(batch_sizes), "atol": atol, "max_abs_error": {}}
    for b in batch_sizes:
        inputs = make_inputs(b)
        got = session.run(None, inputs)
        with torch.no_grad():
            want = reference(*(torch.from_numpy(v) for v in inputs.values()))
        for name, g, r in zip(output_names, got, want, strict=True):
            r_np = r.detach().float().cpu().numpy()
            if g.shape != r_np.shape:
                raise ExportError(
                    f"{path.name}: output {name} has shape {list(g.shape)} at batch {b}, "
                    f"PyTorch gives {list(r_np.shape)}"
                )
            err = float(np.abs(g.astype(np.float32) - r_np).max())
            key = f"{name}@{b}"
            report["max_abs_error"][key] = err
            if not np.isfinite(err) or err > atol:
                raise ExportError(
                    f"{path.name} disagrees with PyTorch: output {name} at batch {b} differs by "
                    f"{err:.3g} (tolerance {atol:g}); the graph was not written"
                )
    return report


def _inputs_maker(names: dict[str, int], seed: int) -> Callable[[int], dict[str, np.ndarray]]:
    """Seeded random inputs per batch size; ``names`` maps input name -> feature size."""

    def make(batch: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed + batch)
        out = {}
        for name, size in names.items():
            if name == "truncation_psi":
                out[name] = rng.uniform(0.5, 1.0, (batch, 1)).astype(np.float32)
            else:
                out[name] = rng.standard_normal((batch, size)).astype(np.float32)
        return out

    return make


def _camera_inputs(student: Student, seed: int) -> Callable[[int], dict[str, np.ndarray]]:
    """w around the teacher's w_avg and real orbit cameras, so verification sees real poses."""
    from ..models.render import orbit_camera

    def make(batch: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed + batch)
        w = student.w_avg.cpu().numpy() + rng.standard_normal((batch, student.w_dim))
        yaw = rng.uniform(-40, 40, batch).tolist()
        pitch = rng.uniform(-15, 15, batch).tolist()
        c = orbit_camera(student, yaw, pitch).to_label().numpy()
        return {"w": w.astype(np.float32), "c": c.astype(np.float32)}

    return make


def _set_metadata(path: Path, metadata: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(path))


def export_onnx(
    student: Student,
    out_dir: str | os.PathLike[str],
    source: dict[str, Any],
    with_raw: bool = True,
    fp16: bool = True,
    batch_sizes: Sequence[int] = VERIFY_BATCH_SIZES,
    atol: float = 1e-3,
    min_fp16_psnr_db: float = 40.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the verified student graph, the mapping graph and (``fp16``) the FP16 student.

    ``source`` describes the checkpoint (path, weights hash, teacher hash) and is copied into
    the metadata. The folder is assembled under a temporary name and moved into place only when
    every graph verified. Returns the metadata written to ``export.json``.
    """
    _require_onnx()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / METADATA_NAME).is_file():
        raise ExportError(f"refusing to write into {out}: it is a non-empty folder of other files")
    student = student.float().cpu().eval()
    cfg = student.config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        graphs: dict[str, GraphSpec] = {}
        res, nrr = cfg.img_resolution, cfg.neural_rendering_resolution

        # 1. The student.
        spec = GraphSpec(
            STUDENT_GRAPH,
            {W: ["batch", student.w_dim], C: ["batch", CAMERA_LABEL_SIZE]},
            {IMAGE: ["batch", 3, res, res]},
        )
        if with_raw:
            spec.outputs[IMAGE_RAW] = ["batch", 3, nrr, nrr]
        graph = StudentGraph(student, with_raw).eval()
        example = _camera_inputs(student, seed)(2)
        _export(
            graph, tuple(torch.from_numpy(v) for v in example.values()), tmp / STUDENT_GRAPH, spec
        )
        spec.verification = verify_graph(
            tmp / STUDENT_GRAPH, graph, _camera_inputs(student, seed), batch_sizes, atol
        )
        graphs["student"] = spec

        # 2. The teacher's z -> w mapping.
        mspec = GraphSpec(
            MAPPING_GRAPH,
            {Z: ["batch", student.z_dim], TRUNCATION_PSI: ["batch", 1]},
            {W: ["batch", student.w_dim]},
        )
        mapping = MappingGraph(student).eval()
        make_z = _inputs_maker({Z: student.z_dim, TRUNCATION_PSI: 1}, seed)
        _export(
            mapping,
            tuple(torch.from_numpy(v) for v in make_z(2).values()),
            tmp / MAPPING_GRAPH,
            mspec,
        )
        mspec.verification = verify_graph(tmp / MAPPING_GRAPH, mapping, make_z, batch_sizes, atol)
        graphs["mapping"] = mspec

        metadata = {
            "format": EXPORT_FORMAT,
            "format_version": 1,
            "distill3d_version": __version__,
            "torch_version": torch.__version__,
            "opset": OPSET,
            "max_batch": MAX_BATCH,
            "source": source,
            "img_resolution": res,
            "neural_rendering_resolution": nrr,
            "camera": camera_convention(student),
            "graphs": {},
        }
        for key, g in graphs.items():
            _set_metadata(tmp / g.file, graph_properties(metadata, key))
            g.sha256 = sha256_file(tmp / g.file)
            metadata["graphs"][key] = asdict(g)
        write_metadata(tmp, metadata)

        # 3. FP16 student with FP32 inputs and outputs, checked against the FP32 graph.
        if fp16:
            from .fp16 import add_fp16_graph

            metadata = add_fp16_graph(tmp, min_fp16_psnr_db, batch_sizes, seed + 100)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metadata


def export_browser_graphs(student: nn.Module, folder: Path, source: dict[str, Any]) -> None:
    """What the service's in-browser viewer runs: the student and mapping graphs in FP32 (no
    raw output, no FP16 variant), verified like every export; ``distill3d serve`` hands this to
    the service, which never imports the export package itself."""
    export_onnx(student, folder, source, with_raw=False, fp16=False)  # type: ignore[arg-type]


def graph_properties(metadata: dict[str, Any], key: str) -> dict[str, Any]:
    """What each graph file carries in its own ``metadata_props``, so it is traceable alone."""
    return {
        "distill3d_source_sha256": str(metadata["source"].get("weights_sha256", "")),
        "graph": key,
        "camera_convention": metadata["camera"],
    }


def install_student_variant(
    folder: Path,
    metadata: dict[str, Any],
    key: str,
    tmp: Path,
    file: str,
    precision: str,
    verification: dict[str, Any],
) -> dict[str, Any]:
    """Move a verified variant of the student graph (FP16, int8) from ``tmp`` into ``folder``
    as ``file`` and record it under ``key`` in ``export.json``: same tensors as the FP32 student,
    its own precision, hash and verification. Returns the updated metadata."""
    _set_metadata(tmp, graph_properties(metadata, key))
    student = metadata["graphs"]["student"]
    spec = GraphSpec(
        file,
        dict(student["inputs"]),
        dict(student["outputs"]),
        precision=precision,
        sha256=sha256_file(tmp),
        verification=verification,
    )
    os.replace(tmp, folder / file)
    metadata["graphs"][key] = asdict(spec)
    write_metadata(folder, metadata)
    return metadata


def write_metadata(folder: Path, metadata: dict[str, Any]) -> None:
    """Replace ``export.json`` atomically (a reader never sees half a file)."""
    tmp = folder / f".{METADATA_NAME}.tmp"
    tmp.write_text(json.dumps(metadata, indent=2) + "\n")
    os.replace(tmp, folder / METADATA_NAME)


def sample_inputs(
    folder: str | os.PathLike[str], metadata: dict[str, Any], seed: int = 0
) -> Callable[[int], dict[str, np.ndarray]]:
    """Realistic student inputs from an export folder alone: w from ``mapping.onnx`` (random z,
    psi 0.7) and orbit cameras within +-40 deg yaw, +-15 deg pitch in the export's convention.

    Verification of derived artefacts (FP16 graphs, TensorRT plans) uses these, so it sees the
    inputs a service will send rather than arbitrary numbers.
    """
    import onnxruntime as ort

    from ..models.camera import Camera

    session = ort.InferenceSession(
        str(graph_path(folder, metadata, "mapping")), providers=["CPUExecutionProvider"]
    )
    z_dim = int(metadata["graphs"]["mapping"]["inputs"]["z"][1])
    cam = metadata["camera"]

    def make(batch: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed + batch)
        z = rng.standard_normal((batch, z_dim)).astype(np.float32)
        psi = np.full((batch, 1), 0.7, np.float32)
        (w,) = session.run(None, {"z": z, "truncation_psi": psi})
        yaw = rng.uniform(-40, 40, batch).tolist()
        pitch = rng.uniform(-15, 15, batch).tolist()
        c = Camera.orbit(yaw, pitch, cam["radius"], cam["pivot"], cam["focal_length"]).to_label()
        return {"w": w.astype(np.float32), "c": c.numpy().astype(np.float32)}

    return make


def camera_convention(student: Student) -> dict[str, Any]:
    """What a caller needs to build the 25-number camera input."""
    rk = student.config.rendering
    return {
        "label": "16 cam2world (row-major, OpenCV: x right, y down, z forward) + 9 normalised intrinsics",
        "radius": rk.avg_camera_radius,
        "pivot": list(rk.avg_camera_pivot),
        "focal_length": rk.focal_length,
        "conditioning": "frontal camera (EG3D's sampling convention), baked into mapping.onnx",
        "image_range": [-1.0, 1.0],
    }
