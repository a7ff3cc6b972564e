"""The demo world's models shipped inside the package: small, hash-checked, trained, and drawing
the figures' faces (eyes with pupils, brows, nose, mouth), not just their silhouettes."""

from __future__ import annotations

import torch

from distill3d.models.camera import Camera
from distill3d.models.checkpoint import read_checkpoint_info
from distill3d.models.eg3d.generator import TriPlaneGenerator
from distill3d.models.eg3d.presets import preset
from distill3d.models.load import DEMO_STUDENT, DEMO_TEACHER, SHIPPED_WEIGHTS, load_model
from distill3d.models.metrics import psnr
from distill3d.models.student import Student
from distill3d.training.demo.face_metrics import feature_psnr, pupil_contrast
from distill3d.training.demo.scenes import (
    SceneRender,
    build_scenes,
    render_scenes,
    sample_z,
    scene_camera,
)


def test_shipped_weights_are_small_and_hash_checked():
    files = [p for p in SHIPPED_WEIGHTS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 30 * 2**20  # the budget
    teacher = read_checkpoint_info(DEMO_TEACHER)
    assert teacher.metadata["demo_world"]["trained_steps"] > 0
    student = read_checkpoint_info(DEMO_STUDENT)
    assert student.metadata["teacher_sha256"] == teacher.weights_sha256  # distilled from it


# Held-out scenes (no training step drew seed 987,654) at eight poses, framed as the shipped
# teacher frames them (its focal length).
HELD_OUT_Z = sample_z(987_654, 8)
HELD_OUT_YAWS = [-30.0, 0.0, 20.0, 45.0, -15.0, 10.0, 0.0, 30.0]
HELD_OUT_PITCHES = [5.0, -5.0, 10.0, 0.0, 15.0, -10.0, 0.0, 5.0]


def _camera(teacher: TriPlaneGenerator) -> Camera:
    return scene_camera(HELD_OUT_YAWS, HELD_OUT_PITCHES, teacher.config.rendering.focal_length)


def _truth(teacher: TriPlaneGenerator) -> SceneRender:
    return render_scenes(build_scenes(HELD_OUT_Z), _camera(teacher), 128, supersample=2)


@torch.no_grad()
def _teacher_images(teacher: TriPlaneGenerator) -> torch.Tensor:
    c = _camera(teacher).to_label()
    rng = [torch.Generator().manual_seed(i) for i in range(len(c))]
    ws = teacher.mapping(HELD_OUT_Z, c)
    return teacher.synthesis(ws, c, noise_mode="const", rng=rng)["image"]


def test_the_default_teacher_draws_the_faces_of_held_out_scenes():
    teacher = load_model("default")
    assert isinstance(teacher, TriPlaneGenerator) and teacher.config == preset("demo-face")
    truth, images = _truth(teacher), _teacher_images(teacher)
    # A random network scores under 10 dB here; the trained teacher draws the figures.
    assert float(psnr(images, truth.image).mean()) > 21
    # Only a model that draws eyes, brows, nose and mouth in place scores here: the first shipped
    # teacher, which painted a smooth face, scored 11.9 dB and a pupil contrast of 0.02
    # (ground truth: 0.40); this one 16.9 dB and 0.13.
    assert feature_psnr(images, truth.image, truth.part) > 15
    assert float(pupil_contrast(images, truth.part).nanmean()) > 0.07


def test_the_default_student_follows_the_teacher_and_draws_the_faces():
    teacher, student = load_model("default"), load_model("default-student")
    assert isinstance(student, Student)
    c = _camera(teacher).to_label()
    with torch.no_grad():
        got = student.synthesis(student.mapping(HELD_OUT_Z, c), c, noise_mode="const")["image"]
    # An untrained student of this shape scores about 12 dB against the teacher.
    assert float(psnr(got, _teacher_images(teacher)).mean()) > 27
    # The faces followed, not averaged away: the first shipped student scored 11.6 dB over the
    # facial features and a pupil contrast of 0.02, like its faceless teacher.
    truth = _truth(teacher)
    assert feature_psnr(got, truth.image, truth.part) > 14.5
    assert float(pupil_contrast(got, truth.part).nanmean()) > 0.05
