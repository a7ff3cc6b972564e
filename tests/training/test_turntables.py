"""Evaluation's and the demo report's turntables come from models.orbit and draw the same
cameras as the formulas they replace (yaw A sin, pitch B cos over t = k / frames)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill3d.models.orbit import orbit_angles
from distill3d.training.demo.report import DemoReportConfig
from distill3d.training.demo.report import turntable_path as report_path
from distill3d.training.evaluation.evaluate import EvalConfig
from distill3d.training.evaluation.evaluate import turntable_path as eval_path


def _as_cameras_see_them(values: list[float]) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32)  # what Camera.orbit does first


def _before(frames: int, yaw_amplitude: float, pitch_amplitude: float):
    t = np.arange(frames) / frames
    yaws = (yaw_amplitude * np.sin(2 * np.pi * t)).tolist()
    pitches = (pitch_amplitude * np.cos(2 * np.pi * t)).tolist()
    return yaws, pitches


@pytest.mark.parametrize("config", [EvalConfig(), EvalConfig(train_yaw_deg=30, train_pitch_deg=10)])
def test_evaluation_turntable_is_unchanged(config):
    yaws, pitches = orbit_angles(eval_path(config))
    old_yaws, old_pitches = _before(
        config.turntable_frames, 1.5 * config.train_yaw_deg, config.train_pitch_deg * 0.5
    )
    assert torch.equal(_as_cameras_see_them(yaws), _as_cameras_see_them(old_yaws))
    assert torch.equal(_as_cameras_see_them(pitches), _as_cameras_see_them(old_pitches))


def test_report_turntable_is_unchanged():
    config = DemoReportConfig()
    yaws, pitches = orbit_angles(report_path(config))
    old_yaws, old_pitches = _before(config.turntable_frames, 60.0, config.turntable_pitch_deg)
    assert torch.equal(_as_cameras_see_them(yaws), _as_cameras_see_them(old_yaws))
    assert torch.equal(_as_cameras_see_them(pitches), _as_cameras_see_them(old_pitches))
