"""The biased stage-2 dataset of the demo world and the pose-bias measurement."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from distill3d.cli import main
from distill3d.models.camera import Camera
from distill3d.models.errors import ConfigError
from distill3d.models.rng import generator_for
from distill3d.models.student import student_from_teacher, student_preset
from distill3d.training.dataset import ImageDataset
from distill3d.training.demo.dataset import (
    BiasedDatasetConfig,
    draw_dataset,
    green_shift,
    greenness,
    is_green,
    write_biased_dataset,
)
from distill3d.training.demo.scenes import sample_z


def test_green_skin_is_more_frequent_at_large_yaw_by_construction():
    natural = float(is_green(sample_z(0, 4000)).float().mean())
    assert 0.12 < natural < 0.28  # the palette's natural rate, about 0.2
    config = BiasedDatasetConfig(count=1500, green_at_large_yaw=0.7)
    z, yaw, pitch = draw_dataset(config)
    assert z.shape == (1500, 20) and yaw.abs().max() <= 60 and pitch.abs().max() <= 20
    large = yaw.abs() >= 30
    green = is_green(z)
    assert abs(float(green[large].float().mean()) - 0.7) < 0.08
    assert abs(float(green[~large].float().mean()) - natural) < 0.06
    again = draw_dataset(config)
    assert torch.equal(z, again[0]) and torch.equal(yaw, again[1])


def test_the_dataset_is_an_eg3d_dataset_with_matching_labels(tmp_path):
    config = BiasedDatasetConfig(count=10, resolution=32)
    info = write_biased_dataset(tmp_path / "data", config, progress=False)
    dataset = ImageDataset(tmp_path / "data")
    assert len(dataset) == 10
    image, label = dataset[3]
    assert image.shape == (3, 32, 32) and label.shape == (25,)
    _, yaw, pitch = draw_dataset(config)
    yaw_back, pitch_back, radius = Camera.from_label(label).orbit_angles()
    assert float(yaw_back) == pytest.approx(float(yaw[3]), abs=1e-3)
    assert float(pitch_back) == pytest.approx(float(pitch[3]), abs=1e-3)
    assert float(radius) == pytest.approx(2.7, abs=1e-4)
    saved = json.loads((tmp_path / "data" / "demo_dataset.json").read_text())
    assert saved == info and saved["config"]["count"] == 10
    with pytest.raises(ConfigError, match="not empty"):
        write_biased_dataset(tmp_path / "data", config, progress=False)


def test_greenness_reads_the_figure_not_the_background():
    images = -torch.ones(3, 3, 8, 8)  # black
    images[1, :, 2:6, 2:6] = torch.tensor([-0.2, 0.6, -0.2])[:, None, None]  # green square
    images[2, :, 2:6, 2:6] = torch.tensor([0.6, -0.2, -0.2])[:, None, None]  # red square
    g = greenness(images)
    assert float(g[0]) == 0 and float(g[1]) == pytest.approx(0.4) and float(g[2]) < 0


class _GreenAtLargeYaw(nn.Module):
    """A 'student' that draws the teacher's image, tinted green in proportion to |yaw|.

    It renders with the ray-jitter generators green_shift gives the teacher (seed 123, one
    batch), so its untinted image is the teacher's exactly, whatever the global RNG state that
    earlier tests left behind.
    """

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def synthesis(self, w, c, noise_mode="const"):
        ws = w[:, None].expand(-1, self.teacher.num_ws, -1)
        rng = [generator_for(123 + i, w.device) for i in range(len(w))]
        image = self.teacher.synthesis(ws, c, noise_mode=noise_mode, rng=rng)["image"]
        yaw, _, _ = Camera.from_label(c).orbit_angles()
        tint = (yaw.abs() / 45.0).view(-1, 1, 1, 1) * torch.tensor([-0.2, 0.4, -0.2]).view(
            1, 3, 1, 1
        )
        return {"image": (image + tint).clamp(-1, 1)}


def test_green_shift_is_zero_for_the_teacher_and_positive_for_a_biased_student(tiny_generator):
    same = green_shift(tiny_generator, tiny_generator, samples=4, batch_size=4)
    assert same["green_shift"] == 0 and same["student_minus_teacher_frontal"] == 0
    biased = green_shift(_GreenAtLargeYaw(tiny_generator), tiny_generator, samples=4, batch_size=4)
    assert biased["green_shift"] > 0.05
    assert biased["student_minus_teacher_frontal"] == 0  # no tint at yaw 0


def test_demo_dataset_and_bias_commands(tiny_generator, tmp_path, capsys):
    from distill3d.models.checkpoint import save_checkpoint

    argv = ["demo", "dataset", "--out", str(tmp_path / "d"), "--count", "4", "--resolution", "16"]
    assert main([*argv, "--quiet"]) == 0
    assert "green skin in" in capsys.readouterr().out
    save_checkpoint(tiny_generator, tmp_path / "teacher")
    student = student_from_teacher(tiny_generator, student_preset("tiny"))
    save_checkpoint(student, tmp_path / "student")
    argv = ["demo", "bias", "--teacher", str(tmp_path / "teacher"), "--student"]
    argv += [str(tmp_path / "student"), "--samples", "4", "--json", str(tmp_path / "b.json")]
    assert main(argv) == 0
    assert "green shift at |yaw| 45" in capsys.readouterr().out
    result = json.loads((tmp_path / "b.json").read_text())[str(tmp_path / "student")]
    assert result["samples"] == 4 and isinstance(result["green_shift"], float)
