"""The distillation loop on the tiny teacher: it learns, it resumes exactly, it runs stage 2 with
a mixed real batch, it runs under torchrun, and it refuses bad set-ups with clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from distill3d.models.camera import Camera
from distill3d.models.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from distill3d.models.errors import CheckpointError, ConfigError
from distill3d.models.load import init_generator
from distill3d.models.student import Student
from distill3d.training.config import TrainConfig
from distill3d.training.data import (
    PoseSampler,
    TeacherCache,
    TeacherSampler,
    write_cache,
)
from distill3d.training.train import train

SMALL_D = {"channel_base": 256, "channel_max": 16, "r1_interval": 2}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "tiny"
    save_checkpoint(init_generator("tiny", seed=11), path)
    return path


def _config(teacher_dir: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        teacher=str(teacher_dir),
        steps=6,
        batch_size=2,
        use_lpips=False,
        eval_samples=4,
        sample_every=1000,
        checkpoint_every=2,
        log_every=1,
        lr=0.005,
        teacher_depth_samples=6,
        teacher_importance_samples=6,
    )
    return base.replace(**changes)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_one_step_changes_the_student_not_the_teacher(teacher_dir, tmp_path):
    teacher_before = load_file(str(teacher_dir / "model.safetensors"))
    train(_config(teacher_dir, steps=1, checkpoint_every=1), tmp_path / "run", progress=False)
    state = tmp_path / "run" / "train_state"
    student = _weights(state / "student.safetensors")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        from distill3d.models.student import student_from_teacher, student_preset

        fresh = student_from_teacher(init_generator("tiny", seed=11), student_preset("tiny"))
    fresh_state = fresh.state_dict()
    changed = [k for k, v in student.items() if not torch.equal(v, fresh_state[k])]
    assert any(k.startswith("synthesis_net.") for k in changed)
    assert any(k.startswith("student_mapping.") for k in changed)
    assert not any(k.startswith("teacher_mapping.") for k in changed)
    teacher_after = load_file(str(teacher_dir / "model.safetensors"))
    assert all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before)
    # The run directory ends with a usable student checkpoint that names its teacher.
    info = read_checkpoint_info(tmp_path / "run" / "student")
    assert info.model_class == "student"
    assert info.metadata["teacher_sha256"] == read_checkpoint_info(teacher_dir).weights_sha256
    assert info.metadata["step"] == 1
    assert info.metadata["pose_range"] == {"yaw_deg": 75.0, "pitch_deg": 30.0}


def test_student_mapping_learning_rate_is_a_run_setting(teacher_dir):
    from distill3d.training.config import StudentSettings
    from distill3d.training.train import student_config_for

    teacher = init_generator("tiny", seed=11)
    default = student_config_for(_config(teacher_dir), teacher)
    assert default.mapping_lr_multiplier == 0.01
    config = TrainConfig.from_dict(
        {**_config(teacher_dir).to_dict(), "student": {"mapping_lr_multiplier": 1.0}}
    )
    assert config.student == StudentSettings(mapping_lr_multiplier=1.0)
    student = Student(student_config_for(config, teacher))
    assert student.config.mapping_lr_multiplier == 1.0
    # Equalised learning rate: the runtime gain of every mapping layer follows the multiplier.
    assert student.student_mapping.fc0.weight_gain == pytest.approx(
        1.0 / student.student_mapping.fc0.weight.shape[1] ** 0.5
    )


def test_stage1_lowers_heldout_error(teacher_dir, tmp_path):
    result = train(
        _config(teacher_dir, steps=40, checkpoint_every=40), tmp_path / "run", progress=False
    )
    assert result.heldout_psnr_end > result.heldout_psnr_start + 3, result
    lines = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss/total"] for r in lines if "loss/total" in r]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert list((tmp_path / "run" / "samples").glob("step-*.png"))
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_resume_reproduces_the_uninterrupted_run(teacher_dir, tmp_path):
    config = _config(teacher_dir, steps=6, checkpoint_every=2)
    train(config, tmp_path / "whole", progress=False)
    # Interrupted after 3 steps, as a kill would: the last checkpoint is step 2.
    train(config, tmp_path / "broken", progress=False, stop_after=3)
    progress = json.loads((tmp_path / "broken" / "train_state" / "progress.json").read_text())
    assert progress["step"] == 2
    result = train(None, tmp_path / "broken", resume=True, progress=False)
    assert result.step == 6
    _assert_same_weights(tmp_path / "whole", tmp_path / "broken")


def test_resume_before_the_first_checkpoint_starts_over(teacher_dir, tmp_path):
    config = _config(teacher_dir, steps=3, checkpoint_every=10)
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "broken", progress=False, stop_after=2)
    assert not (tmp_path / "broken" / "train_state").exists()
    assert train(None, tmp_path / "broken", resume=True, progress=False).step == 3
    _assert_same_weights(tmp_path / "whole", tmp_path / "broken")


def _assert_same_weights(run_a: Path, run_b: Path) -> None:
    for name in ("student", "ema"):
        a = _weights(run_a / "train_state" / f"{name}.safetensors")
        b = _weights(run_b / "train_state" / f"{name}.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key} differs after resume"


def _write_dataset(root: Path, teacher, n: int = 6) -> Path:
    """EG3D-style folder: images with a pose-colour correlation and dataset.json labels."""
    rk = teacher.config.rendering
    yaws = torch.linspace(-40, 40, n)
    labels = Camera.orbit(
        yaws, torch.zeros(n), rk.avg_camera_radius, rk.avg_camera_pivot, rk.focal_length
    ).to_label()
    root.mkdir(parents=True)
    entries = []
    for i in range(n):
        colour = (200, 40, 40) if yaws[i] > 0 else (40, 40, 200)
        Image.new("RGB", (32, 32), colour).save(root / f"img{i}.png")
        entries.append([f"img{i}.png", labels[i].tolist()])
    (root / "dataset.json").write_text(json.dumps({"labels": entries}))
    return root


def test_a_run_with_the_consistency_term_logs_it(teacher_dir, tmp_path):
    config = _config(teacher_dir, steps=2, batch_size=4, loss={"consistency": 1.0})
    train(config, tmp_path / "run", progress=False)
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    logged = [r["loss/consistency"] for r in rows if "loss/consistency" in r]
    assert len(logged) == 2 and all(v > 0 for v in logged)


def test_stage1_warm_start_begins_from_the_given_student(teacher_dir, tmp_path):
    from distill3d.training.train import initial_student

    first = tmp_path / "first"
    train(_config(teacher_dir, steps=2), first, progress=False)
    digest = read_checkpoint_info(teacher_dir).weights_sha256
    config = _config(teacher_dir, init_from=str(first), lr=0.01)
    warm = initial_student(config, init_generator("tiny", seed=11), digest)
    source = load_checkpoint(first / "student").state_dict()
    assert all(torch.equal(v, source[k]) for k, v in warm.state_dict().items())
    fresh = initial_student(_config(teacher_dir), init_generator("tiny", seed=11), digest)
    assert any(not torch.equal(v, source[k]) for k, v in fresh.state_dict().items())
    # It trains like any stage-1 run, and keeps the source's architecture.
    result = train(config, tmp_path / "warm", progress=False)
    assert result.step == 6
    with pytest.raises(ConfigError, match="keeps that student's architecture"):
        _config(teacher_dir, init_from=str(first), student={"channel_max": 8})


def test_stage2_starts_from_stage1_and_mixes_real_images(teacher_dir, tmp_path):
    stage1 = tmp_path / "stage1"
    train(_config(teacher_dir, steps=2), stage1, progress=False)
    dataset = _write_dataset(tmp_path / "data", init_generator("tiny", seed=11))
    config = _config(
        teacher_dir,
        stage=2,
        init_from=str(stage1),
        steps=4,
        dataset=str(dataset),
        discriminator={**SMALL_D, "real_mix": 0.5},
    )
    train(config, tmp_path / "stage2", progress=False)
    lines = [
        json.loads(x) for x in (tmp_path / "stage2" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("loss/adversarial" in r and "loss/d" in r for r in lines)
    assert any("loss/r1" in r for r in lines)
    assert (tmp_path / "stage2" / "train_state" / "discriminator.safetensors").is_file()
    start = load_checkpoint(stage1 / "student")
    end = load_checkpoint(tmp_path / "stage2" / "student")
    assert isinstance(end, Student)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(start.state_dict().values(), end.state_dict().values(), strict=True)
    )


def test_real_batch_mix_ratio(teacher_dir, tmp_path):
    from distill3d.training.dataset import ImageDataset
    from distill3d.training.train import real_batch

    teacher = init_generator("tiny", seed=11)
    dataset = ImageDataset(_write_dataset(tmp_path / "d", teacher), resolution=64)
    sampler = TeacherSampler(teacher, PoseSampler(teacher, TrainConfig().cameras), seed=0)
    batch = sampler.sample(0, 0, 4)
    config = _config(teacher_dir, stage=2, init_from="x", discriminator={"real_mix": 0.75})
    img, raw, cam = real_batch(config, 0, 0, batch, dataset, 16)
    assert img.shape == (4, 3, 64, 64) and raw.shape == (4, 3, 16, 16) and cam.shape == (4, 25)
    # The last quarter are teacher renders, the first three real images (flat colours).
    assert torch.equal(img[3:], batch.image[3:])
    assert all(img[i].flatten(1).std(1).max() < 1e-3 for i in range(3))


def test_cached_teacher_trains_and_orders_samples_by_epoch(teacher_dir, tmp_path):
    teacher = init_generator("tiny", seed=11)
    sampler = TeacherSampler(teacher, PoseSampler(teacher, TrainConfig().cameras), seed=3)
    write_cache(sampler, tmp_path / "cache", count=5, shard_size=2, batch_size=2, progress=False)
    cache = TeacherCache(tmp_path / "cache", seed=0)
    seen = cache.indices(0, 0, 1, 5)
    assert sorted(seen) == [0, 1, 2, 3, 4]  # one epoch covers every sample once
    batch = cache.sample(1, 0, 1, 3)
    assert batch.image.shape == (3, 3, 64, 64) and batch.feature.shape[1] == 8
    train(
        _config(teacher_dir, steps=2, cache=str(tmp_path / "cache")),
        tmp_path / "run",
        progress=False,
    )
    assert (tmp_path / "run" / "student" / "config.json").is_file()
    # The student's declared pose range comes from the run's cameras: they must be the cache's.
    with pytest.raises(ConfigError, match=r"--set cameras.yaw_max_deg=50"):
        train(
            _config(
                teacher_dir, steps=2, cache=str(tmp_path / "cache"), cameras={"yaw_max_deg": 60}
            ),
            tmp_path / "run-60",
            progress=False,
        )
    assert not (tmp_path / "run-60" / "student").exists()
    (tmp_path / "cache" / "cache.json").unlink()
    with pytest.raises(ConfigError, match="distill3d cache"):
        TeacherCache(tmp_path / "cache", seed=0)


def test_torchrun_two_processes_train(teacher_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "distill3d", "train", "--teacher", str(teacher_dir), "--out", str(tmp_path / "ddp"),
        "--steps", "3", "--batch-size", "4", "--no-lpips", "--quiet", "--device", "cpu",
        "--set", "eval_samples=2", "--set", "teacher_depth_samples=4",
        "--set", "teacher_importance_samples=4",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("held-out PSNR") == 1  # only rank 0 reports
    info = read_checkpoint_info(tmp_path / "ddp" / "student")
    assert info.metadata["step"] == 3
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert any('"loss/total"' in line for line in lines)


def test_bad_setups_fail_clearly(teacher_dir, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="--init-from"):
        _config(teacher_dir, stage=2)
    with pytest.raises(CheckpointError, match="not found"):
        train(_config(tmp_path / "nope"), tmp_path / "r1", progress=False)
    with pytest.raises(ConfigError, match="real_mix"):
        _config(teacher_dir, discriminator={"real_mix": 1.5})
    with pytest.raises(ConfigError, match="unknown training config field"):
        _config(teacher_dir, **{"loss.hr_l2": 1.0})
    monkeypatch.delenv("DISTILL3D_LPIPS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(ConfigError, match="--no-lpips"):
        train(_config(teacher_dir, use_lpips=True), tmp_path / "r3", progress=False)
    train(_config(teacher_dir, steps=1), tmp_path / "r4", progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(_config(teacher_dir, steps=1), tmp_path / "r4", progress=False)
    with pytest.raises(ConfigError, match="holds no run"):
        train(None, tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(ConfigError, match="not a training run directory"):
        train(
            _config(teacher_dir, stage=2, init_from=str(tmp_path)), tmp_path / "r5", progress=False
        )
    with pytest.raises((ConfigError, CheckpointError), match=r"dataset\.json"):
        (tmp_path / "nodata").mkdir()
        train(
            _config(teacher_dir, dataset=str(tmp_path / "nodata")), tmp_path / "r6", progress=False
        )
