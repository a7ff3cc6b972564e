"""Latent edits: exact, deterministic and shape-correct, and they do what they say on a model."""

from __future__ import annotations

import pytest
import torch

from distill3d.models.editing import interpolate, style_mix, truncate
from distill3d.models.render import orbit_camera
from distill3d.models.stylegan2 import truncate as mapping_truncate


def _w(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_interpolation_endpoints_midpoint_and_sequences():
    a, b = _w(0, 2, 8), _w(1, 2, 8)
    assert torch.equal(interpolate(a, b, 0.0), a) and torch.equal(interpolate(a, b, 1.0), b)
    assert torch.allclose(interpolate(a, b, 0.5), (a + b) / 2)
    frames = interpolate(a, b, torch.linspace(0, 1, 5))
    assert frames.shape == (5, 2, 8) and torch.equal(frames[0], a) and torch.allclose(frames[-1], b)
    assert torch.equal(interpolate(a, b, torch.linspace(0, 1, 5)), frames)  # deterministic
    with pytest.raises(ValueError, match="differ in shape"):
        interpolate(a, _w(2, 3, 8), 0.5)


def test_style_mix_takes_coarse_rows_from_one_and_fine_from_the_other():
    a, b = _w(0, 8), _w(1, 6, 8)  # one w, and ws with 6 rows
    mixed = style_mix(a, b, cutoff=2, num_ws=6)
    assert mixed.shape == (6, 8)
    assert all(torch.equal(mixed[i], a) for i in range(2))
    assert torch.equal(mixed[2:], b[2:])
    assert torch.equal(style_mix(a, b, 0, 6), b) and torch.equal(style_mix(a, b, 6, 6)[3], a)
    with pytest.raises(ValueError, match="cutoff"):
        style_mix(a, b, 7, 6)


def test_truncation_matches_the_mapping_networks():
    ws, avg = _w(0, 3, 6, 8), _w(1, 8)
    assert torch.allclose(truncate(ws, avg, 0.7), mapping_truncate(ws.clone(), avg, 0.7))
    assert torch.allclose(
        truncate(ws, avg, 0.5, cutoff=2), mapping_truncate(ws.clone(), avg, 0.5, 2)
    )
    assert torch.equal(truncate(ws, avg, 1.0), ws)
    assert torch.allclose(truncate(ws, avg, 0.0), avg.expand_as(ws))


def test_mixing_on_a_student_changes_only_what_its_rows_drive(tiny_generator):
    from distill3d.models.student import student_from_teacher, student_preset

    student = student_from_teacher(tiny_generator, student_preset("tiny")).eval()
    a, b = _w(3, 1, student.w_dim), _w(4, 1, student.w_dim)
    c = orbit_camera(student, [15.0], [5.0]).to_label()
    k = student.num_ws
    with torch.no_grad():
        only_a = student.synthesis(style_mix(a, b, k, k), c)
        mixed = student.synthesis(style_mix(a, b, 1, k), c)
    # Row 0 (geometry and colour) from a: the raw low-resolution image is a's exactly; the SR
    # (row K-1, from b) changes the final image.
    assert torch.equal(mixed["image_raw"], only_a["image_raw"])
    assert not torch.allclose(mixed["image"], only_a["image"])
