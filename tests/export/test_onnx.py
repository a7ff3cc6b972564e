"""ONNX export of the tiny student: graphs agree with PyTorch at several batch sizes, FP16 is
checked against FP32, disagreeing graphs are refused, metadata travels with the files."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from distill3d.cli import main
from distill3d.export.onnx import ExportError, StudentGraph, export_onnx, verify_graph
from distill3d.models.checkpoint import save_checkpoint
from distill3d.models.latents import z_from_seed
from distill3d.models.load import init_generator
from distill3d.models.render import frontal_camera, orbit_camera
from distill3d.models.student import student_from_teacher, student_preset


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_student_graph_matches_pytorch(student, exported, batch):
    out, _ = exported
    w = (student.w_avg + torch.randn(batch, student.w_dim)).float()
    c = orbit_camera(student, np.linspace(-30, 30, batch).tolist(), 5.0).to_label()
    with torch.no_grad():
        ref = student(w, c)
    image, raw = _session(out / "student.onnx").run(None, {"w": w.numpy(), "c": c.numpy()})
    np.testing.assert_allclose(image, ref["image"].numpy(), atol=1e-4)
    np.testing.assert_allclose(raw, ref["image_raw"].numpy(), atol=1e-4)
    half = _session(out / "student_fp16.onnx").run(None, {"w": w.numpy(), "c": c.numpy()})[0]
    assert half.dtype == np.float32
    mse = np.mean(((np.clip(half, -1, 1) - np.clip(image, -1, 1)) / 2) ** 2)
    assert 10 * np.log10(1 / mse) > 40


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_mapping_graph_matches_the_teachers_mapping(student, exported, batch):
    out, _ = exported
    z = torch.cat([z_from_seed(s, student.z_dim) for s in range(batch)])
    psi = torch.full((batch, 1), 0.7)
    (w,) = _session(out / "mapping.onnx").run(None, {"z": z.numpy(), "truncation_psi": psi.numpy()})
    c = frontal_camera(student, batch).to_label()
    ref = student.mapping(z, c, truncation_psi=0.7)[:, 0]
    np.testing.assert_allclose(w, ref.numpy(), atol=1e-5)


def test_graphs_have_a_dynamic_batch_and_no_grouped_conv(exported):
    out, _ = exported
    model = onnx.load(str(out / "student.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {o.name for o in model.graph.output} == {"image", "image_raw"}
    # Modulated convs are plain (group 1, shared weights); grouped convs are only the depthwise
    # resampling filters, one group per channel: nothing depends on the batch.
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    n_modulated = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if group == 1:
                n_modulated += 1
                continue
            shape = weights.get(node.input[1])
            assert shape is not None and shape[0] == group and shape[1] == 1, (node.name, group)
    assert n_modulated > 0
    assert model.opset_import[0].version == 18


def test_metadata_travels_with_the_graphs(exported):
    out, metadata = exported
    on_disk = json.loads((out / "export.json").read_text())
    assert on_disk == json.loads(json.dumps(metadata))
    assert on_disk["source"]["weights_sha256"] == "ab" * 32
    assert on_disk["img_resolution"] == 64 and on_disk["neural_rendering_resolution"] == 16
    assert on_disk["camera"]["radius"] == pytest.approx(2.7)
    student = on_disk["graphs"]["student"]
    assert student["inputs"] == {"w": ["batch", 32], "c": ["batch", 25]}
    assert student["outputs"]["image"] == ["batch", 3, 64, 64]
    assert set(student["verification"]["max_abs_error"]) == {
        f"{n}@{b}" for n in ("image", "image_raw") for b in (1, 2, 5)
    }
    assert on_disk["graphs"]["student_fp16"]["precision"] == "fp16"
    props = {p.key: p.value for p in onnx.load(str(out / "student.onnx")).metadata_props}
    assert props["distill3d_source_sha256"] == "ab" * 32


def test_disagreeing_graph_is_refused(student, exported, tmp_path):
    out, _ = exported
    other = StudentGraph(
        student_from_teacher(init_generator("tiny", seed=9), student_preset("tiny")), True
    )

    def make(b):
        return {
            "w": np.ones((b, 32), np.float32),
            "c": orbit_camera(student, 0.0, 0.0).to_label().repeat(b, 1).numpy(),
        }

    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        verify_graph(out / "student.onnx", other.eval(), make)
    # Through the exporter: a tolerance nothing can meet leaves no folder behind.
    with pytest.raises(ExportError, match="not written"):
        export_onnx(student, tmp_path / "strict", {}, fp16=False, atol=0.0)
    assert not (tmp_path / "strict").exists()
    assert not list(tmp_path.glob(".strict*"))
    with pytest.raises(ExportError, match="FP16 graph was not written"):
        export_onnx(student, tmp_path / "fp16", {}, min_fp16_psnr_db=500.0)
    assert not (tmp_path / "fp16").exists()


def test_cli_exports_a_student_checkpoint(student, tmp_path, capsys):
    save_checkpoint(student, tmp_path / "student")
    assert (
        main(
            [
                "export",
                "onnx",
                "--model",
                str(tmp_path / "student"),
                "--out",
                str(tmp_path / "onnx"),
                "--no-fp16",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "verified at batch [1, 2, 5]" in printed
    assert (tmp_path / "onnx" / "student.onnx").is_file()
    assert not (tmp_path / "onnx" / "student_fp16.onnx").exists()
    meta = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert len(meta["source"]["weights_sha256"]) == 64
    save_checkpoint(init_generator("tiny", seed=0), tmp_path / "teacher")
    assert (
        main(["export", "onnx", "--model", str(tmp_path / "teacher"), "--out", str(tmp_path / "x")])
        == 2
    )
    assert "export takes a student" in capsys.readouterr().err
