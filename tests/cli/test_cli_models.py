"""Every model argument takes the shipped models by name (``default``, ``default-student``), as the
README promises: the CLI resolves all of them in one place, distill3d.cli.common."""

from __future__ import annotations

import json

import pytest

from distill3d.cli import main
from distill3d.cli.common import checkpoint_folder, checkpoint_metadata, load_student, load_teacher
from distill3d.models.checkpoint import read_checkpoint_info
from distill3d.models.eg3d.generator import TriPlaneGenerator
from distill3d.models.errors import ConfigError
from distill3d.models.load import DEMO_STUDENT, DEMO_TEACHER
from distill3d.models.student import Student


def test_export_onnx_takes_the_shipped_student(tmp_path, capsys) -> None:
    out = tmp_path / "export"
    argv = ["export", "onnx", "--model", "default-student", "--out", str(out)]
    assert main([*argv, "--no-fp16", "--no-raw"]) == 0
    assert "student, verified at batch" in capsys.readouterr().out
    source = json.loads((out / "export.json").read_text())["source"]
    assert source["checkpoint"] == "default-student"
    assert source["weights_sha256"] == read_checkpoint_info(DEMO_STUDENT).weights_sha256
    assert source["pose_range"]  # the shipped student's valid poses travel with its graphs
    assert (out / "student.onnx").is_file() and (out / "mapping.onnx").is_file()


def test_bench_takes_default_and_default_student(tmp_path, capsys) -> None:
    report = tmp_path / "bench.json"
    argv = ["bench", "--teacher", "default", "--student", "default-student", "--device", "cpu"]
    flags = ["--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--json", str(report)]
    assert main([*argv, *flags]) == 0
    rows = json.loads(report.read_text())["rows"]
    assert [r["runner"] for r in rows] == ["teacher volumetric", "student torch"]
    assert all(r["error"] is None for r in rows)
    assert "student torch" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "folder"), [("default", DEMO_TEACHER), ("default-student", DEMO_STUDENT)]
)
def test_the_resolver_maps_shipped_names_to_their_folders(name, folder) -> None:
    assert checkpoint_folder(name) == folder
    assert checkpoint_metadata(name).weights_sha256 == read_checkpoint_info(folder).weights_sha256


def test_teacher_and_student_flags_take_the_shipped_models_and_name_a_mix_up() -> None:
    assert isinstance(load_teacher("default", "--teacher"), TriPlaneGenerator)
    assert isinstance(load_student("default-student", "--student"), Student)
    with pytest.raises(ConfigError, match="--student default is a TriPlaneGenerator"):
        load_student("default", "--student", command="eval")
    with pytest.raises(ConfigError, match="not a volumetric EG3D generator"):
        load_teacher("default-student", "--teacher")
