"""`distill3d train`, `cache`, `init --student` and rendering a trained student from the CLI."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from distill3d.cli import main
from distill3d.models.camera import Camera
from distill3d.models.checkpoint import read_checkpoint_info

FAST = [
    "--no-lpips",
    "--quiet",
    "--set", "eval_samples=2",
    "--set", "teacher_depth_samples=4",
    "--set", "teacher_importance_samples=4",
]  # fmt: skip


def test_train_from_yaml_with_flag_overrides_then_render(tmp_path, capsys) -> None:
    teacher = tmp_path / "teacher"
    assert main(["init", "--preset", "tiny", "--out", str(teacher)]) == 0
    config = tmp_path / "run.yaml"
    config.write_text(
        f"teacher: {teacher}\nsteps: 50\nbatch_size: 4\nloss:\n  hr_l1: 2.0\n"
        "cameras:\n  yaw_max_deg: 30\n"
    )
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--out", str(run), "--steps", "3", *FAST]
    assert main([*args, "--set", "loss.lr_rgb=0.5"]) == 0
    assert "held-out PSNR" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())
    assert saved["steps"] == 3  # the flag beats the file
    assert saved["loss"]["hr_l1"] == 2.0 and saved["loss"]["lr_rgb"] == 0.5
    assert saved["cameras"]["yaw_max_deg"] == 30 and saved["use_lpips"] is False

    # Resume continues the saved run; only --steps may change.
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--quiet"]) == 0
    assert json.loads((run / "train_state" / "progress.json").read_text())["step"] == 4
    assert main(["train", "--out", str(run), "--resume", "--lr", "1"]) == 2
    assert "only --steps" in capsys.readouterr().err

    out = tmp_path / "student.png"
    assert (
        main(
            [
                "render",
                "--model",
                str(run / "student"),
                "--seed",
                "2",
                "--yaw",
                "20",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert np.asarray(Image.open(out)).shape == (64, 64, 3)
    assert (
        main(
            [
                "render",
                "--model",
                str(run / "student"),
                "--depth-out",
                str(tmp_path / "d.png"),
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "renders no depth" in err and not (tmp_path / "x.png").exists()


def test_train_errors_are_one_line(tmp_path, capsys) -> None:
    assert (
        main(["train", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), *FAST])
        == 2
    )
    assert "not found" in capsys.readouterr().err
    assert (
        main(["train", "--teacher", "default", "--out", str(tmp_path / "r"), "--stage", "2"]) == 2
    )
    assert "--init-from" in capsys.readouterr().err
    assert (
        main(
            ["train", "--teacher", "default", "--out", str(tmp_path / "r"), "--set", "loss.nope=1"]
        )
        == 2
    )
    assert "unknown training config field" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "cannot parse" in capsys.readouterr().err
    assert (
        main(["train", "--teacher", "default", "--out", str(tmp_path / "r"), "--set", "novalue"])
        == 2
    )
    assert "KEY=VALUE" in capsys.readouterr().err


def test_cache_then_train_from_it(tmp_path, capsys) -> None:
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "cache",
                "--teacher",
                "default",
                "--out",
                str(cache),
                "--count",
                "5",
                "--shard-size",
                "2",
                "--yaw-std",
                "20",
                "--yaw-max",
                "40",
            ]
        )
        == 0
    )
    assert len(list(cache.glob("shard-*.safetensors"))) == 3
    yaws = torch.cat([load_file(str(f))["c"] for f in cache.glob("shard-*.safetensors")])
    yaws = Camera.from_label(yaws).orbit_angles()[0]
    assert float(yaws.abs().max()) <= 40 + 1e-3
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--teacher",
                "default",
                "--cache",
                str(cache),
                "--out",
                str(run),
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--set",
                "cameras.yaw_std_deg=20",
                "--set",
                "cameras.yaw_max_deg=40",
                *FAST,
            ]
        )
        == 0
    )
    assert (run / "student" / "model.safetensors").is_file()
    assert read_checkpoint_info(run / "student").metadata["pose_range"]["yaw_deg"] == 60
    assert main(["cache", "--teacher", "default", "--out", str(cache), "--count", "5"]) == 2
    assert "already holds a cache" in capsys.readouterr().err


def test_init_student_of_a_preset(tmp_path, capsys) -> None:
    out = tmp_path / "student"
    assert main(["init", "--preset", "tiny", "--student", "--out", str(out)]) == 0
    assert "tiny student" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class"] == "Student" and info["config"]["teacher"]["img_resolution"] == 64
