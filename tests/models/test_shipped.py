"""The demo world's models shipped inside the package: small, hash-checked, and trained."""

from __future__ import annotations

import torch

from distill3d.models.checkpoint import read_checkpoint_info
from distill3d.models.eg3d.generator import TriPlaneGenerator
from distill3d.models.eg3d.presets import preset
from distill3d.models.load import DEMO_STUDENT, DEMO_TEACHER, SHIPPED_WEIGHTS, load_model
from distill3d.models.metrics import psnr
from distill3d.models.student import Student
from distill3d.training.demo.scenes import build_scenes, render_scenes, sample_z, scene_camera


def test_shipped_weights_are_small_and_hash_checked():
    files = [p for p in SHIPPED_WEIGHTS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 30 * 2**20  # the budget
    teacher = read_checkpoint_info(DEMO_TEACHER)
    assert teacher.metadata["demo_world"]["trained_steps"] > 0
    student = read_checkpoint_info(DEMO_STUDENT)
    assert student.metadata["teacher_sha256"] == teacher.weights_sha256  # distilled from it


# Held-out scenes (no training step drew seed 987,654) at four poses.
HELD_OUT_Z = sample_z(987_654, 4)
HELD_OUT_CAMERA = scene_camera([-30.0, 0.0, 20.0, 45.0], [5.0, -5.0, 10.0, 0.0])


@torch.no_grad()
def _teacher_images(teacher: TriPlaneGenerator) -> torch.Tensor:
    c = HELD_OUT_CAMERA.to_label()
    rng = [torch.Generator().manual_seed(i) for i in range(len(c))]
    ws = teacher.mapping(HELD_OUT_Z, c)
    return teacher.synthesis(ws, c, noise_mode="const", rng=rng)["image"]


def test_the_default_teacher_reproduces_held_out_scenes():
    teacher = load_model("default")
    assert isinstance(teacher, TriPlaneGenerator) and teacher.config == preset("demo")
    truth = render_scenes(build_scenes(HELD_OUT_Z), HELD_OUT_CAMERA, 128, supersample=2).image
    # A random network scores under 10 dB here; the trained teacher draws the figures.
    assert float(psnr(_teacher_images(teacher), truth).mean()) > 20


def test_the_default_student_follows_the_teacher():
    teacher, student = load_model("default"), load_model("default-student")
    assert isinstance(student, Student)
    c = HELD_OUT_CAMERA.to_label()
    with torch.no_grad():
        got = student.synthesis(student.mapping(HELD_OUT_Z, c), c, noise_mode="const")["image"]
    # An untrained student of this shape scores about 12 dB against the teacher.
    assert float(psnr(got, _teacher_images(teacher)).mean()) > 25
