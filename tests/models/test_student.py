"""The student: shapes, determinism, what it copies from the teacher, checkpoints and presets."""

from __future__ import annotations

import json

import pytest
import torch

from distill3d.models.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from distill3d.models.eg3d.config import SuperResolutionConfig
from distill3d.models.eg3d.generator import TriPlaneGenerator
from distill3d.models.errors import ConfigError
from distill3d.models.latents import z_from_seed
from distill3d.models.load import load_model
from distill3d.models.render import RenderOptions, orbit_camera, render
from distill3d.models.student import (
    Student,
    StudentConfig,
    student_from_teacher,
    student_preset,
)


@pytest.fixture()
def student(tiny_generator: TriPlaneGenerator) -> Student:
    torch.manual_seed(0)
    return student_from_teacher(tiny_generator, student_preset("tiny")).eval()


def _inputs(student: Student, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(n, student.w_dim, generator=gen)
    c = orbit_camera(student, [-20.0, 0.0, 25.0][:n], [5.0, 0.0, -10.0][:n]).to_label()
    return w, c


def test_output_shapes_follow_the_teacher(student: Student, tiny_generator: TriPlaneGenerator):
    w, c = _inputs(student)
    out = student(w, c)
    t = tiny_generator.config
    assert out["image"].shape == (3, 3, t.img_resolution, t.img_resolution)
    nrr = t.neural_rendering_resolution
    assert out["feature"].shape == (3, t.feature_channels, nrr, nrr)
    assert torch.equal(out["image_raw"], out["feature"][:, :3])
    assert all(torch.isfinite(v).all() for v in out.values())


def test_deterministic_and_batch_independent(student: Student):
    w, c = _inputs(student)
    a = student(w, c)["image"]
    b = student(w, c)["image"]
    assert torch.equal(a, b)
    single = student(w[1:2], c[1:2])["image"]
    torch.testing.assert_close(single, a[1:2], rtol=1e-4, atol=1e-5)


def test_pose_changes_the_image(student: Student):
    w, c = _inputs(student)
    out = student(w[:1].repeat(2, 1), c[:2])["image"]
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_mapping_is_the_teachers(student: Student, tiny_generator: TriPlaneGenerator):
    z = torch.randn(4, tiny_generator.z_dim, generator=torch.Generator().manual_seed(2))
    c = orbit_camera(tiny_generator, 0.0, 0.0).to_label().repeat(4, 1)
    for psi, cutoff in ((1.0, None), (0.6, None), (0.5, 2)):
        torch.testing.assert_close(
            student.mapping(z, c, psi, cutoff), tiny_generator.mapping(z, c, psi, cutoff)
        )
    assert not any(p.requires_grad for p in student.teacher_mapping.parameters())
    trainable = {id(p) for p in student.trainable_parameters()}
    assert not any(id(p) in trainable for p in student.teacher_mapping.parameters())


def test_superresolution_starts_as_the_teachers(
    student: Student, tiny_generator: TriPlaneGenerator
):
    """With the same feature image and w, the student's SR gives the teacher's image."""
    w, c = _inputs(student, 2)
    ws = w.unsqueeze(1).repeat(1, tiny_generator.num_ws, 1)
    teacher_out = tiny_generator.synthesis(ws, c, noise_mode="const")
    feature = teacher_out["feature"]
    ours = student.superresolution(feature[:, :3], feature, w.unsqueeze(1), noise_mode="none")
    torch.testing.assert_close(ours, teacher_out["image"], rtol=1e-4, atol=1e-5)


def test_lighter_superresolution_is_trained_from_scratch(tiny_generator: TriPlaneGenerator):
    t_sr = tiny_generator.config.superresolution
    light = SuperResolutionConfig("custom", t_sr.input_resolution, (8, 8), t_sr.block_upsample)
    config = student_preset("tiny", superresolution=light)
    assert not config.replace(teacher=tiny_generator.config).sr_is_teachers
    student = student_from_teacher(tiny_generator, config)
    assert student.superresolution.block0.conv1.weight.shape[0] == 8
    out = student(*_inputs(student))
    assert out["image"].shape[-1] == tiny_generator.config.img_resolution


def test_ws_with_rows_use_first_for_mapping_and_last_for_sr(student: Student):
    w, c = _inputs(student, 2)
    ws = w.unsqueeze(1).repeat(1, 5, 1)
    torch.testing.assert_close(student.synthesis(ws, c)["image"], student(w, c)["image"])


def test_bad_inputs_are_named(student: Student):
    w, c = _inputs(student, 2)
    with pytest.raises(ValueError, match="25"):
        student(w, c[:, :16])
    with pytest.raises(ValueError, match="batch of c"):
        student(w, c[:1])
    with pytest.raises(ValueError, match="w must have shape"):
        student(w[:, :5], c)


def test_checkpoint_round_trip_records_the_teacher(student: Student, tmp_path):
    path = save_checkpoint(student, tmp_path / "s", metadata={"teacher_sha256": "ab" * 32})
    info = read_checkpoint_info(path)
    assert info.model_class == "student"
    assert info.metadata["teacher_sha256"] == "ab" * 32
    assert info.config == student.config
    loaded = load_checkpoint(path)
    assert isinstance(loaded, Student)
    w, c = _inputs(student)
    assert torch.equal(loaded(w, c)["image"], student(w, c)["image"])
    config = json.loads((path / "config.json").read_text())
    assert config["config"]["teacher"]["img_resolution"] == 64


def test_render_helper_treats_student_like_teacher(student: Student):
    z = z_from_seed(5, student.z_dim)
    camera = orbit_camera(student, 15.0, 5.0)
    out = render(student, z, camera, RenderOptions(truncation_psi=0.7, depth_resolution=4))
    assert out["image"].shape == (1, 3, 64, 64)
    again = render(student, z, camera, RenderOptions(truncation_psi=0.7))
    assert torch.equal(out["image"], again["image"])


def test_load_model_reads_student_folder(student: Student, tmp_path):
    save_checkpoint(student, tmp_path / "s")
    assert isinstance(load_model(tmp_path / "s"), Student)


@pytest.mark.parametrize("name", ["ffhq512", "afhq512", "shapenet128", "tiny"])
def test_presets_mirror_the_teachers(name: str):
    config = student_preset(name)
    assert config.img_resolution == config.teacher.img_resolution
    assert config.sr == config.teacher.superresolution
    assert config.sr_is_teachers
    assert StudentConfig.from_dict(config.to_dict()) == config


def test_full_size_ffhq_student_builds_with_paper_sized_s2d():
    torch.manual_seed(0)
    student = Student(student_preset("ffhq512"))
    assert student.synthesis_net.img_resolution == 128
    assert student.synthesis_net.img_channels == 32
    n = sum(p.numel() for p in student.trainable_parameters())
    assert 25e6 < n < 35e6, n


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="sr_conditioning"):
        student_preset("tiny", sr_conditioning="z")
    with pytest.raises(ConfigError, match="mapping_layers"):
        student_preset("tiny", mapping_layers=0)
    with pytest.raises(ConfigError, match="unknown StudentConfig field"):
        StudentConfig.from_dict({"channel_bse": 3})
    bad_sr = SuperResolutionConfig("custom", 16, (8,), (True,))
    with pytest.raises(ConfigError, match="px"):
        student_preset("tiny", superresolution=bad_sr)
