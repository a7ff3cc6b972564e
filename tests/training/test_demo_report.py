"""`distill3d demo report` on an untrained demo-architecture teacher and its student."""

from __future__ import annotations

import json
import math

from PIL import Image

from distill3d.cli import main
from distill3d.models.checkpoint import save_checkpoint
from distill3d.models.load import init_generator
from distill3d.models.student import student_from_teacher, student_preset
from distill3d.models.video import decode_video


def test_demo_report_writes_every_number_and_picture(tmp_path, capsys):
    teacher = init_generator("demo", seed=0)
    save_checkpoint(teacher, tmp_path / "teacher")
    save_checkpoint(student_from_teacher(teacher, student_preset("demo")), tmp_path / "student")
    out = tmp_path / "report"
    argv = ["demo", "report", "--teacher", str(tmp_path / "teacher"), "--student"]
    argv += [str(tmp_path / "student"), "--out", str(out), "--scenes", "2", "--yaws=-20,30"]
    argv += ["--pitches=-10,10"]
    argv += ["--turntable-frames", "3", "--speed-repeats", "1", "--bias-samples", "2"]
    assert main([*argv, "--bias", f"s1={tmp_path / 'student'}"]) == 0
    assert "teacher vs ground truth" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    f, r = report["fidelity"], report["reprojection_error"]
    assert all(math.isfinite(v) for v in f.values())
    # Ground truth is consistent by construction: its warped views agree almost exactly; an
    # untrained teacher's colour fields do not reproduce the figures at all.
    assert r["ground_truth"] < 0.01 and f["teacher_psnr"] < 20
    # Ground truth's pupils are dark in white eyes; an untrained teacher draws no eyes.
    assert f["ground_truth_pupil_contrast"] > 0.2 > abs(f["teacher_pupil_contrast"])
    assert set(report["fidelity_by_yaw"]) == {"-20", "30"}
    assert report["config"]["pitches"] == [-10.0, 10.0]
    assert (
        report["speed_ms_per_image"]["teacher"] > 0 and report["speed_ms_per_image"]["student"] > 0
    )
    assert report["bias"]["s1"]["samples"] == 2
    assert Image.open(out / "samples.png").size == (2 * 128, 3 * 2 * 128)
    assert Image.open(out / "faces.png").size == (2 * 3 * 128, 2 * 2 * 128)  # zoomed 2x
    assert decode_video((out / "turntable.gif").read_bytes()) == (3, 3 * 128, 128)
    markdown = (out / "report.md").read_text()
    assert "| teacher vs ground truth |" in markdown and "| s1 |" in markdown
    assert "| -20 |" in markdown and "pupil contrast" in markdown
    assert main([*argv[:-2], "--bias", "nonsense"]) == 2
