"""`distill3d export triton`: the repository layout Triton expects, configs that parse as
Triton's ModelConfig, tensors that match the graphs, and plans checked against the export."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from fake_tensorrt import H100, fake_tensorrt
from triton_model_config import parse_config

from distill3d.cli import main
from distill3d.export.triton import TritonSettings, to_pbtxt, write_repository
from distill3d.models.checkpoint import sha256_file
from distill3d.models.runtime.errors import ExportError
from distill3d.models.runtime.tensorrt import PLAN_METADATA

FP32 = 11  # DataType.TYPE_FP32
KIND_GPU, KIND_CPU = 1, 2


def _configs(repo):
    return {p.parent.name: parse_config(p.read_text()) for p in repo.glob("*/config.pbtxt")}


def _dims(tensors):
    return {t.name: (t.data_type, list(t.dims)) for t in tensors}


def test_repository_layout_and_configs(exported, tmp_path, capsys):
    folder, metadata = exported
    repo = tmp_path / "repo"
    argv = ["export", "triton", "--onnx", str(folder), "--out", str(repo), "--name", "faces"]
    assert main([*argv, "--max-batch-size", "16", "--max-queue-delay-us", "500"]) == 0
    assert "tritonserver --model-repository=" in capsys.readouterr().out
    assert sorted(p.name for p in repo.iterdir()) == ["faces", "faces_mapping", "faces_z"]
    assert not list(tmp_path.glob(".repo*"))  # staging removed

    configs = _configs(repo)
    student = configs["faces"]
    assert student.name == "faces" and student.platform == "onnxruntime_onnx"
    assert student.max_batch_size == 16
    assert student.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.kind, g.count) for g in student.instance_group] == [(KIND_GPU, 1)]
    assert _dims(student.input) == {"w": (FP32, [32]), "c": (FP32, [25])}
    assert _dims(student.output) == {"image": (FP32, [3, 64, 64]), "image_raw": (FP32, [3, 16, 16])}

    # The version folder holds the FP16 graph byte for byte, and its tensors are the config's.
    model = repo / "faces" / "1" / "model.onnx"
    assert sha256_file(model) == metadata["graphs"]["student_fp16"]["sha256"]
    graph = onnx.load(str(model)).graph
    assert {i.name for i in graph.input} == set(_dims(student.input))
    assert {o.name for o in graph.output} == set(_dims(student.output))
    assert json.loads((repo / "faces" / "1" / "export.json").read_text())["source"] == {
        "checkpoint": "test",
        "weights_sha256": "ab" * 32,
    }

    mapping = configs["faces_mapping"]
    assert _dims(mapping.input) == {"z": (FP32, [32]), "truncation_psi": (FP32, [1])}
    assert _dims(mapping.output) == {"w": (FP32, [32])}
    assert (repo / "faces_mapping" / "1" / "model.onnx").is_file()

    # The ensemble: z, psi, c in; the student's outputs out; its steps wire existing tensors.
    ens = configs["faces_z"]
    assert ens.platform == "ensemble" and ens.max_batch_size == 16
    assert set(_dims(ens.input)) == {"z", "truncation_psi", "c"}
    assert set(_dims(ens.output)) == {"image", "image_raw"}
    first, second = ens.ensemble_scheduling.step
    assert first.model_name == "faces_mapping" and second.model_name == "faces"
    assert dict(first.input_map) == {"z": "z", "truncation_psi": "truncation_psi"}
    assert dict(second.input_map) == {"w": dict(first.output_map)["w"], "c": "c"}
    assert dict(second.output_map) == {"image": "image", "image_raw": "image_raw"}
    assert (repo / "faces_z" / "1").is_dir()  # Triton needs a version folder, even empty


def test_fp32_cpu_variant_and_other_models_kept(exported, tmp_path):
    folder, metadata = exported
    repo = tmp_path / "repo"
    (repo / "someone_else" / "1").mkdir(parents=True)
    settings = TritonSettings(
        instance_kind="cpu", precision="fp32", ensemble=False, instance_count=2
    )
    assert write_repository(folder, repo, settings) == ["distill3d", "distill3d_mapping"]
    assert (repo / "someone_else" / "1").is_dir()
    config = _configs(repo)["distill3d"]
    assert [(g.kind, g.count) for g in config.instance_group] == [(KIND_CPU, 2)]
    model = repo / "distill3d" / "1" / "model.onnx"
    assert sha256_file(model) == metadata["graphs"]["student"]["sha256"]


def test_plan_repository_checks_the_plan_against_the_export(exported, tmp_path):
    folder, _ = exported
    from distill3d.export.tensorrt import BuildSettings, build_plan

    plan_dir = tmp_path / "plan"
    build_plan(
        folder, plan_dir, BuildSettings(max_batch=8), trt=fake_tensorrt(), here=H100, verify=False
    )
    repo = tmp_path / "repo"
    write_repository(folder, repo, TritonSettings(max_batch_size=8), plan_dir)
    config = _configs(repo)["distill3d"]
    assert config.platform == "tensorrt_plan"
    assert config.default_model_filename == "model.plan"
    plan = (repo / "distill3d" / "1" / "model.plan").read_bytes()
    assert plan == (plan_dir / "student.plan").read_bytes()
    recorded = json.loads((repo / "distill3d" / "1" / "export.json").read_text())
    assert recorded["tensorrt_plan"]["platform"]["gpu_name"] == H100.gpu_name

    with pytest.raises(ExportError, match="exceeds the plan's profile"):
        write_repository(folder, repo, TritonSettings(max_batch_size=32), plan_dir)
    with pytest.raises(ExportError, match="GPU instances only"):
        write_repository(
            folder, repo, TritonSettings(max_batch_size=8, instance_kind="cpu"), plan_dir
        )
    meta = json.loads((plan_dir / PLAN_METADATA).read_text())
    meta["onnx_sha256"] = "f" * 64
    (plan_dir / PLAN_METADATA).write_text(json.dumps(meta))
    with pytest.raises(ExportError, match=r"built from another student_fp16\.onnx"):
        write_repository(folder, repo, TritonSettings(max_batch_size=8), plan_dir)
    assert plan == (repo / "distill3d" / "1" / "model.plan").read_bytes()  # left as it was


def test_bad_settings_are_named(exported, tmp_path, capsys):
    folder, _ = exported
    with pytest.raises(ValueError, match="model name"):
        TritonSettings(name="has space")
    with pytest.raises(ValueError, match="max_batch_size"):
        TritonSettings(max_batch_size=0)
    argv = ["export", "triton", "--onnx", str(tmp_path), "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "is not an export folder" in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "mapping.onnx").unlink()
    assert main(["export", "triton", "--onnx", str(copy), "--out", str(tmp_path / "r")]) == 2
    assert "mapping.onnx is missing" in capsys.readouterr().err


def test_pbtxt_writer_quotes_strings_and_leaves_enums_bare():
    from distill3d.export.triton import Enum

    text = to_pbtxt({"name": 'a"b', "kind": Enum("KIND_GPU"), "dims": [1, 2], "on": True})
    assert text == 'name: "a\\"b"\nkind: KIND_GPU\ndims: [ 1, 2 ]\non: true\n'
