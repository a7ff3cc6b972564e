"""`distill3d export fp16` on an existing export folder: verified, recorded, or refused with the
folder left exactly as it was."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from distill3d.cli import main
from distill3d.export.onnx import sample_inputs
from distill3d.models.checkpoint import sha256_file


@pytest.fixture
def fp32_only(exported, tmp_path):
    """A copy of the shared export without its FP16 graph."""
    src, _ = exported
    folder = tmp_path / "export"
    shutil.copytree(src, folder)
    (folder / "student_fp16.onnx").unlink()
    meta = json.loads((folder / "export.json").read_text())
    del meta["graphs"]["student_fp16"]
    (folder / "export.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def test_fp16_graph_is_added_and_recorded(fp32_only, capsys):
    assert main(["export", "fp16", "--onnx", str(fp32_only)]) == 0
    assert "verified against student.onnx" in capsys.readouterr().out
    meta = json.loads((fp32_only / "export.json").read_text())
    graph = meta["graphs"]["student_fp16"]
    assert graph["precision"] == "fp16"
    assert graph["sha256"] == sha256_file(fp32_only / "student_fp16.onnx")
    assert set(graph["verification"]["psnr_db"]) == {
        f"{n}@{b}" for n in ("image", "image_raw") for b in (1, 2, 5)
    }
    assert not list(fp32_only.glob(".*"))  # no temporary files left
    inputs = sample_inputs(fp32_only, meta, seed=5)(3)
    opts = {"providers": ["CPUExecutionProvider"]}
    full = ort.InferenceSession(str(fp32_only / "student.onnx"), **opts).run(None, inputs)[0]
    half = ort.InferenceSession(str(fp32_only / "student_fp16.onnx"), **opts).run(None, inputs)[0]
    assert half.dtype == np.float32 and half.shape == full.shape
    assert 0 < np.abs(half - full).max() < 0.05  # really FP16 arithmetic, and close


def test_fp16_below_the_floor_leaves_the_folder_untouched(fp32_only, capsys):
    before = {p.name: p.read_bytes() for p in fp32_only.iterdir()}
    assert main(["export", "fp16", "--onnx", str(fp32_only), "--min-psnr", "500"]) == 2
    assert "FP16 graph was not written" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in fp32_only.iterdir()} == before


def test_changed_or_missing_graphs_are_named(fp32_only, tmp_path, capsys):
    with open(fp32_only / "student.onnx", "ab") as f:
        f.write(b"\0")
    assert main(["export", "fp16", "--onnx", str(fp32_only)]) == 2
    assert "does not match the hash in export.json" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", "fp16", "--onnx", str(tmp_path / "empty")]) == 2
    assert "is not an export folder" in capsys.readouterr().err
