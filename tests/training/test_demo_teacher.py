"""`distill3d demo teacher`: the reconstruction losses, exact resumption, refused mismatches."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from distill3d.cli import main
from distill3d.models.errors import ConfigError
from distill3d.models.load import init_generator, load_model
from distill3d.models.render import w_avg_of
from distill3d.training.demo.teacher import (
    DemoTeacherConfig,
    learning_rate,
    losses,
    step_batch,
    train_demo_teacher,
)

SMALL = {"batch_size": 2, "warmup_steps": 2, "log_every": 1, "checkpoint_every": 2}


def test_step_batches_depend_only_on_seed_and_step():
    config = DemoTeacherConfig(**SMALL)
    z, yaw, pitch = step_batch(config, 7)
    z2, yaw2, pitch2 = step_batch(config, 7)
    assert torch.equal(z, z2) and yaw == yaw2 and pitch == pitch2
    assert not torch.equal(z, step_batch(config, 8)[0])
    assert max(abs(v) for v in yaw) <= config.yaw_deg and max(abs(v) for v in pitch) <= 30


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = DemoTeacherConfig(steps=100, lr=1.0, warmup_steps=10, final_lr_fraction=0.1)
    assert learning_rate(config, 0) == pytest.approx(0.1)
    assert learning_rate(config, 10) == pytest.approx(1.0)
    assert learning_rate(config, 99) == pytest.approx(0.1, abs=1e-3)


def test_losses_are_positive_finite_and_differentiable():
    teacher = init_generator("demo", seed=0).train().requires_grad_(True)
    terms = losses(teacher, *step_batch(DemoTeacherConfig(**SMALL), 0))
    assert set(terms) == {"image", "raw", "alpha", "depth"}
    assert all(float(v.detach()) > 0 and torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    grads = [p.grad for p in teacher.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_an_interrupted_run_resumes_exactly(tmp_path):
    config = DemoTeacherConfig(steps=4, eval_every=4, eval_scenes=1, **SMALL)
    train_demo_teacher(tmp_path / "straight", config, progress=False)
    train_demo_teacher(tmp_path / "split", config, progress=False, max_steps_this_run=2)
    progress = json.loads((tmp_path / "split" / "train_state" / "progress.json").read_text())
    assert progress["step"] == 2
    with (tmp_path / "split" / "metrics.jsonl").open("a") as log:  # logged, then killed
        log.write(json.dumps({"step": 3, "seconds": 99.0}) + "\n")
    evaluation = train_demo_teacher(tmp_path / "split", config, progress=False)
    assert evaluation["step"] == 4 and evaluation["psnr_db"] > 0
    for name in ("teacher", "ema"):
        a = load_file(str(tmp_path / "straight" / "train_state" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "split" / "train_state" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)
    teacher = load_model(tmp_path / "split" / "teacher")
    assert teacher.z_dim == 20 and float(w_avg_of(teacher).abs().sum()) > 0  # w_avg is set
    records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").open()]
    assert [r["step"] for r in records if "step" in r] == [1, 2, 3, 4]
    seconds = [r["seconds"] for r in records if "seconds" in r]
    assert seconds == sorted(seconds) and seconds[-1] < 99.0  # one total clock across runs


def test_resuming_with_other_settings_or_into_a_foreign_folder_is_refused(tmp_path):
    config = DemoTeacherConfig(steps=2, eval_every=2, eval_scenes=1, **SMALL)
    train_demo_teacher(tmp_path / "run", config, progress=False, max_steps_this_run=1)
    other = DemoTeacherConfig(steps=2, eval_every=2, eval_scenes=1, **{**SMALL, "batch_size": 3})
    with pytest.raises(ConfigError, match="batch_size: run 2, now 3"):
        train_demo_teacher(tmp_path / "run", other, progress=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        train_demo_teacher(tmp_path / "foreign", config, progress=False)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_demo_teacher_command(tmp_path, capsys):
    argv = ["demo", "teacher", "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size"]
    assert main([*argv, "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "held-out PSNR vs ground truth" in printed and "teacher checkpoint" in printed
    assert (tmp_path / "run" / "samples" / "step-000002.png").is_file()
