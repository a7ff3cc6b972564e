"""Light student presets: a fraction of ST2's cost, buildable from their teacher, exportable to
ONNX, and the same in ONNX Runtime as in PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill3d.export.bench import count_flops
from distill3d.models.load import default_model
from distill3d.models.render import orbit_camera
from distill3d.models.student import (
    LIGHT_DEMO_MIRROR,
    LIGHT_STUDENTS,
    Student,
    student_from_teacher,
    student_preset,
    teacher_preset_of,
)


def _gflop(name: str) -> float:
    """GFLOP per image, counted on the meta device (no memory, no arithmetic: fast at 512 px)."""
    with torch.device("meta"):
        student = Student(student_preset(name)).eval()
        w, c = torch.zeros(1, student.w_dim), torch.zeros(1, 25)
    return count_flops(lambda: student.synthesis(w, c, noise_mode="const")) / 1e9


def test_light_presets_cost_a_fraction_of_st2():
    st2 = _gflop("ffhq512")
    assert 200 < st2 < 320  # the paper's ST2 at 512 px
    light, lighter = _gflop("ffhq512-light"), _gflop("ffhq512-lighter")
    assert light < st2 / 10 and lighter < light / 2


@pytest.mark.parametrize("name", sorted(LIGHT_STUDENTS))
def test_light_presets_keep_the_teachers_interface(name):
    config = student_preset(name)
    teacher = student_preset(teacher_preset_of(name))
    assert config.teacher == teacher.teacher  # same cameras, resolutions, latent sizes
    assert config.sr.output_resolution == config.img_resolution
    assert not config.sr_is_teachers  # a narrower SR, trained from scratch
    assert config.channel_base < teacher.channel_base


def test_each_light_ffhq_preset_has_a_demo_mirror_of_the_same_shape():
    for ffhq, demo in LIGHT_DEMO_MIRROR.items():
        big, small = LIGHT_STUDENTS[ffhq], LIGHT_STUDENTS[demo]
        assert teacher_preset_of(demo) == "demo"
        assert big[1] / student_preset("ffhq512").channel_base == pytest.approx(
            small[1] / student_preset("demo").channel_base
        )
    assert _gflop("demo-light") < _gflop("demo") / 5


def test_a_light_student_exports_to_onnx_and_matches_pytorch(tmp_path):
    import onnxruntime as ort

    from distill3d.export.onnx import export_onnx

    torch.manual_seed(0)
    # The shipped demo teacher: what demo-light would be distilled from. (A freshly initialised
    # demo teacher's camera embedding is exactly zero, which mapping.onnx turns into NaN.)
    student = student_from_teacher(default_model(), student_preset("demo-light"))
    student.eval()
    meta = export_onnx(student, tmp_path / "export", {"checkpoint": "test"}, fp16=False)
    assert meta["graphs"]["student"]["outputs"]["image"] == ["batch", 3, 128, 128]
    session = ort.InferenceSession(
        str(tmp_path / "export" / "student.onnx"), providers=["CPUExecutionProvider"]
    )
    w = student.w_avg[None].repeat(3, 1) + 0.5 * torch.randn(3, student.w_dim)
    c = orbit_camera(student, [-30.0, 0.0, 30.0], 5.0).to_label()
    got = session.run(None, {"w": w.numpy(), "c": c.numpy()})[0]
    with torch.no_grad():
        want = student.synthesis(w, c, noise_mode="const", fused_modconv=False)["image"].numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-3


def test_the_bench_measures_a_light_preset_with_its_full_teacher():
    from distill3d.export.bench import preset_models

    teacher, student = preset_models("ffhq512-lighter", seed=0)
    assert teacher.config.img_resolution == 512 and student.config.img_resolution == 512
    assert student.config.channel_base == LIGHT_STUDENTS["ffhq512-lighter"][1]
    # The student's frozen mapping is the teacher's: a seed names one identity in both.
    z = torch.randn(2, teacher.z_dim, generator=torch.Generator().manual_seed(0))
    c = torch.zeros(2, 25)
    assert torch.equal(teacher.mapping(z, c), student.mapping(z, c))
