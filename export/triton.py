"""A Triton Inference Server model repository for an exported student.

For users who outgrow one service instance (docs/serving.md §3). The repository holds three models:

- ``<name>``: the student, ``w`` [w_dim] and ``c`` [25] -> ``image`` [3, R, R] (and
  ``image_raw``), from the ONNX graph (ONNX Runtime backend) or a TensorRT plan;
- ``<name>_mapping``: the teacher's mapping, ``z`` and ``truncation_psi`` -> ``w``;
- ``<name>_z``: an ensemble chaining the two, so a client sends z, psi and the camera.

Each has dynamic batching; dims exclude the batch axis, as Triton expects with
``max_batch_size > 0``. The export's metadata is copied into every version folder.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.runtime.errors import ExportError
from ..models.runtime.export_files import graph_path, read_export
from ..models.runtime.tensorrt import GRAPHS, PLAN_METADATA, PlanMetadata
from ..models.runtime.triton_names import (
    DATATYPE,
    DEFAULT_MODEL_NAME,
    MODEL_VERSION,
    C,
    W,
    model_names,
)

CONFIG_NAME = "config.pbtxt"
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU", "auto": "KIND_AUTO"}


@dataclass(frozen=True)
class TritonSettings:
    name: str = DEFAULT_MODEL_NAME
    max_batch_size: int = 32
    max_queue_delay_us: int = 2000  # how long the batcher may wait to fill a batch
    instance_kind: str = "gpu"
    instance_count: int = 1
    precision: str = "fp16"  # which ONNX graph serves the student when no plan is given
    ensemble: bool = True

    def __post_init__(self) -> None:
        if not self.name or not all(ch.isalnum() or ch in "_-" for ch in self.name):
            raise ValueError(f"model name must be letters, digits, '_' or '-', got {self.name!r}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ValueError("max_queue_delay_us must not be negative")
        if self.instance_kind not in KINDS:
            raise ValueError(f"instance kind must be one of {sorted(KINDS)}")
        if self.instance_count < 1:
            raise ValueError("instance_count must be at least 1")
        if self.precision not in GRAPHS:
            raise ValueError(f"precision must be one of {sorted(GRAPHS)}")


class Enum(str):
    """A protobuf enum value: written bare (TYPE_FP32), not quoted."""


def to_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """Protobuf text format of a nested dict.

    Lists of dicts are repeated messages, lists of scalars repeated scalars, dicts nested
    messages (maps are lists of {"key", "value"} dicts, as in text format).
    """
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{\n{to_pbtxt(value, indent + 1)}{pad}}}")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            items = [f"{pad}  {{\n{to_pbtxt(v, indent + 2)}{pad}  }}" for v in value]
            lines.append(f"{pad}{key} [\n" + ",\n".join(items) + f"\n{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _tensors(spec: dict[str, list[int | str]], skip_batch: bool = True) -> list[dict[str, Any]]:
    out = []
    for name, shape in spec.items():
        if shape[0] != "batch":
            raise ExportError(f"tensor {name} has no leading batch axis: {shape}")
        out.append(
            {
                "name": name,
                "data_type": Enum(f"TYPE_{DATATYPE}"),
                "dims": [int(d) for d in shape[1:]],
            }
        )
    return out


def _model_config(
    name: str,
    platform: str,
    inputs: dict[str, list[int | str]],
    outputs: dict[str, list[int | str]],
    settings: TritonSettings,
    filename: str,
) -> dict[str, Any]:
    return {
        "name": name,
        "platform": platform,
        "max_batch_size": settings.max_batch_size,
        "default_model_filename": filename,
        "input": _tensors(inputs),
        "output": _tensors(outputs),
        "dynamic_batching": {"max_queue_delay_microseconds": settings.max_queue_delay_us},
        "instance_group": [
            {"kind": Enum(KINDS[settings.instance_kind]), "count": settings.instance_count}
        ],
    }


def _map(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in pairs]


def _ensemble_config(
    settings: TritonSettings, student: dict[str, Any], mapping: dict[str, Any]
) -> dict[str, Any]:
    inputs = {**mapping["inputs"], C: student["inputs"][C]}
    return {
        "name": model_names(settings.name).pipeline,
        "platform": "ensemble",
        "max_batch_size": settings.max_batch_size,
        "input": _tensors(inputs),
        "output": _tensors(student["outputs"]),
        "ensemble_scheduling": {
            "step": [
                {
                    "model_name": model_names(settings.name).mapping,
                    "model_version": -1,
                    "input_map": _map((k, k) for k in mapping["inputs"]),
                    "output_map": _map([(W, "mapped_w")]),
                },
                {
                    "model_name": settings.name,
                    "model_version": -1,
                    "input_map": _map([(W, "mapped_w"), (C, C)]),
                    "output_map": _map((k, k) for k in student["outputs"]),
                },
            ]
        },
    }


def _write_model(
    root: Path, config: dict[str, Any], files: dict[str, Path], metadata: dict[str, Any]
) -> None:
    version = root / config["name"] / MODEL_VERSION
    version.mkdir(parents=True)
    for target, source in files.items():
        shutil.copyfile(source, version / target)
    if metadata:
        (version / "export.json").write_text(json.dumps(metadata, indent=2) + "\n")
    header = "# Written by distill3d export triton. Dims exclude the batch axis.\n"
    (root / config["name"] / CONFIG_NAME).write_text(header + to_pbtxt(config))


def write_repository(
    export_dir: str | os.PathLike[str],
    repo_dir: str | os.PathLike[str],
    settings: TritonSettings | None = None,
    plan_dir: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Write (or add to) a Triton model repository; returns the model names written.

    With ``plan_dir`` the student is served from the TensorRT plan (built from this export:
    checked by hash), otherwise from the ONNX graph of ``settings.precision``. Existing models of
    the same names are replaced; other models in the repository are left alone.
    """
    settings = settings or TritonSettings()
    export_dir = Path(export_dir)
    repo = Path(repo_dir)
    metadata = read_export(export_dir)
    graphs = metadata["graphs"]
    exported_max = int(metadata.get("max_batch", 1024))
    if settings.max_batch_size > exported_max:
        raise ExportError(
            f"max_batch_size {settings.max_batch_size} exceeds the graphs' {exported_max}"
        )

    if plan_dir is not None:
        plan_dir = Path(plan_dir)
        plan = PlanMetadata.load(plan_dir / PLAN_METADATA)
        key = GRAPHS[plan.precision]
        if key not in graphs or graphs[key]["sha256"] != plan.onnx_sha256:
            raise ExportError(
                f"the plan in {plan_dir} was built from another {plan.onnx_file} than the one in "
                f"{export_dir}; rebuild it with distill3d export tensorrt --onnx {export_dir}"
            )
        if settings.max_batch_size > plan.max_batch:
            raise ExportError(
                f"max_batch_size {settings.max_batch_size} exceeds the plan's profile "
                f"(max batch {plan.max_batch}); use --max-batch-size {plan.max_batch} or rebuild"
            )
        if settings.instance_kind == "cpu":
            raise ExportError("a TensorRT plan runs on GPU instances only; drop --kind cpu")
        student_files = {"model.plan": plan_dir / plan.plan_file}
        student_meta = {
            **metadata,
            "tensorrt_plan": json.loads((plan_dir / PLAN_METADATA).read_text()),
        }
        student_config = _model_config(
            settings.name, "tensorrt_plan", plan.inputs, plan.outputs, settings, "model.plan"
        )
        student_spec = {"inputs": plan.inputs, "outputs": plan.outputs}
    else:
        key = GRAPHS[settings.precision]
        student_files = {"model.onnx": graph_path(export_dir, metadata, key)}
        student_meta = metadata
        spec = graphs[key]
        student_config = _model_config(
            settings.name,
            "onnxruntime_onnx",
            spec["inputs"],
            spec["outputs"],
            settings,
            "model.onnx",
        )
        student_spec = spec

    mapping = graphs["mapping"]
    mapping_config = _model_config(
        model_names(settings.name).mapping,
        "onnxruntime_onnx",
        mapping["inputs"],
        mapping["outputs"],
        settings,
        "model.onnx",
    )
    models = [
        (student_config, student_files, student_meta),
        (mapping_config, {"model.onnx": graph_path(export_dir, metadata, "mapping")}, metadata),
    ]
    if settings.ensemble:
        models.append((_ensemble_config(settings, student_spec, mapping), {}, {}))

    # Model folders are assembled beside the repository and swapped in, so a running Triton
    # polling the repository never sees half a model.
    repo.mkdir(parents=True, exist_ok=True)
    staging = repo.parent / f".{repo.name}.staging-{uuid.uuid4().hex[:8]}"
    try:
        for config, files, meta in models:
            _write_model(staging, config, files, meta)
        for config, _, _ in models:
            target = repo / config["name"]
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging / config["name"], target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [config["name"] for config, _, _ in models]
