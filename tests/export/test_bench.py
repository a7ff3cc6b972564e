"""`distill3d bench` on the tiny models: every runner at every batch size, numbers that make
sense, FLOPs counted right, JSON and plot written; bad arguments named."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from distill3d.cli import main
from distill3d.export.bench import count_flops, matmul_peak_tflops
from distill3d.models.checkpoint import save_checkpoint


def test_flop_count_of_a_convolution_is_the_textbook_number():
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    x = torch.zeros(1, 8, 20, 20)
    assert count_flops(lambda: conv(x)) == 2 * 8 * 16 * 3 * 3 * 20 * 20
    assert 1e-4 < matmul_peak_tflops("cpu", n=256) < 100


def test_bench_preset_with_onnx_runtime(tmp_path, capsys):
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["bench", "--preset", "tiny", "--export-onnx", "--batch-sizes", "1,2"]
    argv += ["--repeats", "2", "--warmup", "1", "--device", "cpu", "--json", str(out)]
    assert main([*argv, "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert "matmul peak" in printed and "student onnxruntime" in printed
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["matmul_peak_tflops"] > 0
    rows = {(r["runner"], r["batch"]): r for r in report["rows"]}
    assert set(rows) == {
        (name, b)
        for name in ("teacher volumetric", "student torch", "student onnxruntime")
        for b in (1, 2)
    }
    for r in rows.values():
        assert r["error"] is None
        assert 0 < r["ms_per_image_median"] <= r["ms_per_image_p95"]
        assert r["images_per_s"] == pytest.approx(1000 / r["ms_per_image_median"], rel=0.6)
        assert r["peak_rss_bytes"] > 50e6 and r["rss_increase_bytes"] >= 0
        assert r["achieved_tflops"] > 0 and r["fraction_of_matmul_peak"] > 0
    teacher = rows[("teacher volumetric", 1)]["flops_per_image"]
    student = rows[("student torch", 1)]["flops_per_image"]
    assert 0 < student < teacher  # no ray marching
    assert rows[("student onnxruntime", 2)]["flops_per_image"] == student
    assert Image.open(plot).size == (1200, 520)


def test_bench_checkpoints_and_teacher_cap(tiny_generator, tmp_path, capsys):
    save_checkpoint(tiny_generator, tmp_path / "teacher")
    argv = ["bench", "--teacher", str(tmp_path / "teacher"), "--batch-sizes", "1,2,4"]
    argv += ["--teacher-max-batch", "2", "--repeats", "1", "--device", "cpu"]
    assert main([*argv, "--json", str(tmp_path / "b.json")]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [(r["runner"], r["batch"]) for r in rows] == [
        ("teacher volumetric", 1),
        ("teacher volumetric", 2),
    ]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--preset", "tiny", "--batch-sizes", "1,x"], "comma-separated integers"),
        (["--preset", "tiny", "--batch-sizes", "0"], "positive integers"),
        (["--preset", "tiny", "--repeats", "0"], "--repeats"),
        ([], "nothing to measure"),
        (["--preset", "tiny", "--teacher", "default"], "not both"),
        (["--preset", "tiny", "--plan-dir", "p"], "--plan-dir needs --onnx-dir"),
    ],
)
def test_bench_bad_arguments(extra, needle, capsys):
    assert main(["bench", "--device", "cpu", *extra]) == 2
    assert needle in capsys.readouterr().err


def test_compiled_student_row_matches_eager(tiny_generator):
    from distill3d.export.bench import (
        _inputs,
        measure,
        student_compiled_runner,
        student_cuda_graph_runner,
    )
    from distill3d.models.student import student_from_teacher, student_preset

    student = student_from_teacher(tiny_generator, student_preset("tiny")).eval()
    runner = student_compiled_runner(student, "cpu")
    assert (runner.backend, runner.precision) == ("torch-compile", "fp32")
    with torch.no_grad():
        compiled = runner.prepare(2)()
        w, c = _inputs(student, 2, "cpu")
        eager = student.synthesis(w, c, noise_mode="const")["image"]
    assert torch.allclose(compiled, eager, atol=1e-4)
    row = measure(runner, 2, warmup=1, repeats=2)
    assert row.error is None and row.ms_per_image_median > 0
    with pytest.raises(ValueError, match="CUDA"):
        student_cuda_graph_runner(student, "cpu")


def test_a_failing_runner_is_reported_and_the_bench_goes_on():
    from distill3d.export.bench import Runner, run_bench

    def broken(batch: int):
        raise RuntimeError("capture failed: operation not permitted when stream is capturing")

    ok = Runner("ok", "student", "torch", "cpu", "fp32", lambda b: lambda: torch.zeros(b))
    bad = Runner("bad", "student", "torch-cudagraph", "cpu", "fp16", broken)
    report = run_bench([bad, ok], [1, 2], "cpu", warmup=0, repeats=1)
    rows = [(r.runner, r.batch, r.error) for r in report.rows]
    assert rows[0][:2] == ("bad", 1) and "capture failed" in rows[0][2]
    assert [(r, b) for r, b, e in rows[1:]] == [("ok", 1), ("ok", 2)]  # bad stopped after 1
    assert all(e is None for _, _, e in rows[1:])
