"""Service fixtures: tiny teacher and student checkpoints, an export of the student, and an
ASGI client that runs the app's lifespan (models load, warm up, workers start)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from distill3d.export.onnx import export_onnx
from distill3d.models.checkpoint import read_checkpoint_info, save_checkpoint
from distill3d.models.student import student_from_teacher, student_preset
from distill3d.service.settings import ServiceSettings


@pytest.fixture(scope="session")
def checkpoints(tiny_generator, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("service-models")
    save_checkpoint(tiny_generator, root / "teacher")
    teacher_sha = read_checkpoint_info(root / "teacher").weights_sha256
    student = student_from_teacher(tiny_generator, student_preset("tiny")).eval()
    save_checkpoint(
        student,
        root / "student",
        metadata={"teacher_sha256": teacher_sha, "pose_range": {"yaw_deg": 45, "pitch_deg": 20}},
    )
    export_onnx(student, root / "export", {"weights_sha256": "s" * 64}, fp16=False)
    return {"teacher": root / "teacher", "student": root / "student", "export": root / "export"}


@pytest.fixture
def settings_for(checkpoints) -> Callable[..., ServiceSettings]:
    def make(**overrides: Any) -> ServiceSettings:
        values: dict[str, Any] = {
            "teacher": str(checkpoints["teacher"]),
            "student": str(checkpoints["student"]),
            "device": "cpu",
            "max_wait_ms": 5,
        }
        values.update(overrides)
        return ServiceSettings(**values)

    return make
