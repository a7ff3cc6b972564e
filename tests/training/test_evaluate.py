"""`distill3d eval` on the tiny models: the report's contents, poses in and beyond the range."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from distill3d.cli import main
from distill3d.models.checkpoint import read_checkpoint_info, save_checkpoint
from distill3d.models.student import student_from_teacher, student_preset
from distill3d.models.video import decode_video
from distill3d.training.evaluation.evaluate import EvalConfig, _poses


def test_poses_inside_and_beyond_the_training_range():
    config = EvalConfig(samples=200, train_yaw_deg=40, train_pitch_deg=10)
    poses = _poses(config, torch.Generator().manual_seed(0))
    yaw, pitch = poses["in_range"]
    assert yaw.abs().max() <= 40 and pitch.abs().max() <= 10
    yaw, pitch = poses["beyond_range"]
    assert yaw.abs().min() >= 40 and yaw.abs().max() <= 60 and pitch.abs().max() <= 15
    assert (yaw > 0).any() and (yaw < 0).any()


def test_eval_command_writes_the_report(tiny_generator, tmp_path, capsys):
    save_checkpoint(tiny_generator, tmp_path / "teacher")
    teacher_sha = read_checkpoint_info(tmp_path / "teacher").weights_sha256
    student = student_from_teacher(tiny_generator, student_preset("tiny"))
    save_checkpoint(
        student,
        tmp_path / "student",
        metadata={"teacher_sha256": teacher_sha, "pose_range": {"yaw_deg": 45, "pitch_deg": 15}},
    )
    out = tmp_path / "report"
    argv = ["eval", "--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student")]
    assert main([*argv, "--out", str(out), "--samples", "3", "--no-lpips"]) == 0
    printed = capsys.readouterr().out
    assert "in_range: PSNR" in printed and "reprojection teacher" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["train_yaw_deg"] == pytest.approx(30.0)  # 45 / 1.5
    for group in ("in_range", "beyond_range"):
        f, c = report["fidelity"][group], report["consistency"][group]
        assert f["psnr_db"]["n"] == 3 and math.isfinite(f["psnr_db"]["mean"])
        assert -1 <= f["ssim"]["mean"] <= 1 and "lpips" not in f
        for key in ("teacher_reprojection_error", "student_reprojection_error"):
            assert 0 <= c[key]["mean"] < 1
        assert 0 < c["valid_fraction"]["mean"] <= 1
    markdown = (out / "report.md").read_text()
    assert "| in range |" in markdown and "![grid](grid.png)" in markdown
    # Grid: 2 groups x 3 latents rows of (teacher, student, difference) 64 px tiles.
    assert Image.open(out / "grid.png").size == (3 * 64, 2 * 3 * 64)
    frames, width, height = decode_video((out / "turntable.gif").read_bytes())
    assert (frames, width, height) == (24, 128, 64)


def test_eval_refuses_swapped_models(tiny_generator, tmp_path, capsys):
    save_checkpoint(tiny_generator, tmp_path / "teacher")
    argv = ["eval", "--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "teacher")]
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    assert "--student" in capsys.readouterr().err
