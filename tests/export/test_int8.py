"""The INT8 student graph: calibrated, verified against the FP32 graph and recorded, or refused
with the export folder left exactly as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from distill3d.export.fp16 import psnr_db
from distill3d.export.int8 import (
    STUDENT_INT8_GRAPH,
    Int8Refused,
    Int8Settings,
    add_int8_graph,
    served_inputs,
)
from distill3d.models.camera import Camera
from distill3d.models.checkpoint import sha256_file
from distill3d.models.runtime.errors import ExportError

FAST = Int8Settings(calibration_samples=8, calibration_batch=4)


@pytest.fixture
def folder(exported, tmp_path) -> Path:
    """A copy of the shared tiny export (the tests add to it)."""
    src, _ = exported
    dst = tmp_path / "export"
    shutil.copytree(src, dst)
    return dst


def test_int8_graph_is_produced_verified_and_recorded(folder):
    meta = add_int8_graph(folder, min_psnr_db=15.0, settings=FAST, batch_sizes=(1, 3))
    graph = meta["graphs"]["student_int8"]
    assert graph["precision"] == "int8"
    assert graph["sha256"] == sha256_file(folder / STUDENT_INT8_GRAPH)
    assert json.loads((folder / "export.json").read_text())["graphs"]["student_int8"] == graph
    psnr = graph["verification"]["psnr_db"]
    assert set(psnr) == {f"{n}@{b}" for n in ("image", "image_raw") for b in (1, 3)}
    assert all(15.0 <= v < 200 for v in psnr.values())  # close, and really not the FP32 graph
    calibration = graph["verification"]["calibration"]
    assert calibration["calibration_samples"] == 8
    assert calibration["pose_range"] == {"yaw_deg": 75.0, "pitch_deg": 30.0}  # the default
    ops = {n.op_type for n in onnx.load(str(folder / STUDENT_INT8_GRAPH)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not list(folder.glob(".*"))  # no temporary files left

    inputs = served_inputs(folder, meta, seed=7)(2)
    opts = {"providers": ["CPUExecutionProvider"]}
    full = ort.InferenceSession(str(folder / "student.onnx"), **opts).run(None, inputs)[0]
    low = ort.InferenceSession(str(folder / STUDENT_INT8_GRAPH), **opts).run(None, inputs)[0]
    assert low.dtype == np.float32 and low.shape == full.shape
    assert 15.0 <= psnr_db(full, low) < 200


def test_an_impossible_floor_is_refused_and_nothing_is_written(folder):
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(Int8Refused, match="INT8 graph was not written"):
        add_int8_graph(folder, min_psnr_db=200.0, settings=FAST, batch_sizes=(1,))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert issubclass(Int8Refused, ExportError)  # the CLI reports it like any export error


def test_calibration_follows_the_recorded_pose_range(folder):
    meta = json.loads((folder / "export.json").read_text())
    meta["source"]["pose_range"] = {"yaw_deg": 10, "pitch_deg": 5}
    make = served_inputs(folder, meta, seed=0)
    a, b = make(4), make(4, 1)
    assert not np.array_equal(a["w"], b["w"])  # each calibration batch is new
    yaw, pitch, _ = Camera.from_label(torch.from_numpy(a["c"])).orbit_angles()
    assert float(yaw.abs().max()) <= 10.01 and float(pitch.abs().max()) <= 5.01


def test_settings_are_checked():
    with pytest.raises(ValueError, match="calibration method"):
        Int8Settings(method="magic")


def test_cli_adds_the_graph_and_the_bench_measures_it(folder, capsys):
    from distill3d.cli import main
    from distill3d.export.bench import RunnerChoice, bench_runners, measure

    args = ["export", "int8", "--onnx", str(folder), "--samples", "8", "--min-psnr", "15"]
    assert main(args) == 0
    assert "student_int8.onnx: verified against student.onnx" in capsys.readouterr().out
    with bench_runners(None, None, "cpu", RunnerChoice(onnx_dir=folder)) as runners:
        (int8,) = [r for r in runners if r.precision == "int8"]
        row = measure(int8, 1, warmup=1, repeats=1)
    assert row.error is None and row.ms_per_image_median > 0


def test_cli_refusal_exits_2_and_leaves_the_folder(folder, capsys):
    from distill3d.cli import main

    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert (
        main(["export", "int8", "--onnx", str(folder), "--samples", "4", "--min-psnr", "200"]) == 2
    )
    assert "INT8 graph was not written" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
