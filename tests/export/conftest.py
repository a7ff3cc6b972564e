"""Export fixtures: one tiny student and one export of it, shared by the export tests
(tests that change an export work on a copy)."""

from __future__ import annotations

import pytest
import torch

from distill3d.export.onnx import export_onnx
from distill3d.models.load import init_generator
from distill3d.models.student import Student, student_from_teacher, student_preset


@pytest.fixture(scope="session")
def student() -> Student:
    torch.manual_seed(0)
    s = student_from_teacher(init_generator("tiny", seed=2), student_preset("tiny"))
    with torch.no_grad():  # non-trivial noise and biases, so the graph has something to get wrong
        for name, p in s.named_parameters():
            if name.endswith("noise_strength") or name.endswith(".bias"):
                p.add_(0.1 * torch.randn(p.shape))
    return s.eval()


@pytest.fixture(scope="session")
def exported(student, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny"
    metadata = export_onnx(student, out, {"checkpoint": "test", "weights_sha256": "ab" * 32})
    return out, metadata
