"""The student's multi-view consistency term: turned cameras, paired teacher batches, and a loss
that is near zero for views consistent by construction and grows when one view drifts."""

from __future__ import annotations

import pytest
import torch

from distill3d.models.camera import Camera
from distill3d.models.errors import ConfigError
from distill3d.models.load import init_generator
from distill3d.models.metrics import reprojection_error
from distill3d.training.config import LossWeights, TrainConfig
from distill3d.training.data import PoseSampler, TeacherBatch, TeacherSampler
from distill3d.training.demo.scenes import build_scenes, render_scenes, sample_z, scene_camera
from distill3d.training.losses import consistency_loss


def test_turned_cameras_are_the_orbit_further_round():
    pivot = (0.0, 0.0, 0.0)
    start = Camera.orbit([10.0, -30.0], [5.0, 15.0], 2.7, pivot, 3.2)
    turned = start.turned(torch.tensor([10.0, -15.0]), pivot)
    expected = Camera.orbit([20.0, -45.0], [5.0, 15.0], 2.7, pivot, 3.2)
    assert torch.allclose(turned.cam2world, expected.cam2world, atol=1e-5)
    # Around an off-centre pivot (FFHQ's) the camera keeps its distance to the pivot and its
    # pitch, still looks at the pivot, and keeps its intrinsics.
    ffhq_pivot = torch.tensor([0.0, 0.0, 0.2])
    camera = Camera.orbit([0.0], [10.0], 2.7, ffhq_pivot.tolist(), 4.26)
    moved = camera.turned(30.0, ffhq_pivot.tolist())
    assert torch.allclose(
        (moved.origin - ffhq_pivot).norm(dim=-1), (camera.origin - ffhq_pivot).norm(dim=-1)
    )
    assert torch.allclose(moved.origin[:, 1], camera.origin[:, 1])
    forward = moved.cam2world[:, :3, 2]  # OpenCV: the camera looks along its z axis
    to_pivot = torch.nn.functional.normalize(ffhq_pivot - moved.origin, dim=-1)
    assert torch.allclose(forward, to_pivot, atol=1e-5)
    assert torch.equal(moved.intrinsics, camera.intrinsics)


def _ground_truth_pair(offset: float = 10.0) -> TeacherBatch:
    """Four demo scenes, each seen at a yaw and again ``offset`` degrees further: exact images
    and depth, consistent by construction."""
    z = sample_z(5, 4)
    yaws = [-40.0, -10.0, 15.0, 35.0]
    a = scene_camera(yaws, [5.0] * 4, 3.2)
    b = a.turned(offset, (0.0, 0.0, 0.0))
    views = [render_scenes(build_scenes(z), cam, 64, 1) for cam in (a, b)]
    image = torch.cat([v.image for v in views])
    depth = torch.cat([v.depth for v in views])
    c = torch.cat([a.to_label(), b.to_label()])
    return TeacherBatch(torch.zeros(8, 4), c, image, image, depth, paired=True)


def test_consistency_loss_is_small_for_consistent_views_and_grows_with_drift():
    batch = _ground_truth_pair()
    consistent = float(consistency_loss(batch.image, batch))
    drifted = batch.image.clone()
    drifted[4:] = (drifted[4:] + 0.2).clamp(-1, 1)  # view B brighter: the views disagree
    inconsistent = float(consistency_loss(drifted, batch))
    assert consistent < 0.03
    assert inconsistent > consistent + 0.08
    # The loss is the reprojection error's comparison on the [-1, 1] scale (its own pixels).
    cam = Camera.from_label(batch.c)
    a = Camera(cam.cam2world[:4], cam.intrinsics[:4])
    b = Camera(cam.cam2world[4:], cam.intrinsics[4:])
    metric = reprojection_error(
        drifted[:4], batch.depth[:4], a, drifted[4:], batch.depth[4:], b
    ).error
    assert inconsistent == pytest.approx(2 * float(metric.mean()), rel=0.1)


def test_consistency_loss_reaches_both_views():
    batch = _ground_truth_pair()
    image = batch.image.clone().requires_grad_(True)
    consistency_loss(image + 0.1 * torch.randn_like(image), batch).backward()
    assert image.grad is not None
    assert image.grad[:4].abs().sum() > 0 and image.grad[4:].abs().sum() > 0
    assert torch.isfinite(image.grad).all()  # infinite background depth stays off the mask


def test_consistency_loss_refuses_an_unpaired_batch():
    batch = _ground_truth_pair()
    unpaired = TeacherBatch(batch.w, batch.c, batch.image, batch.feature, batch.depth)
    with pytest.raises(ConfigError, match="paired views"):
        consistency_loss(batch.image, unpaired)


def test_paired_teacher_batches_show_each_identity_twice():
    teacher = init_generator("tiny", seed=3)
    poses = PoseSampler(teacher, TrainConfig().cameras)
    sampler = TeacherSampler(teacher, poses, seed=1, pair_offset_deg=10.0)
    batch = sampler.sample(step=4, rank=0, batch_size=6)
    assert batch.paired and batch.depth is not None and batch.depth.shape == (6, 1, 16, 16)
    assert torch.allclose(batch.w[:3], batch.w[3:], atol=1e-5)  # one identity, two views
    # Turned about the pivot's vertical axis: 10 degrees either way, at the same height.
    around_pivot = Camera.from_label(batch.c).origin - torch.tensor(
        teacher.config.rendering.avg_camera_pivot
    )
    angle = torch.rad2deg(torch.atan2(around_pivot[:, 0], around_pivot[:, 2]))
    assert torch.allclose((angle[3:] - angle[:3]).abs(), torch.full((3,), 10.0), atol=1e-3)
    assert torch.allclose(around_pivot[3:, 1], around_pivot[:3, 1], atol=1e-5)
    again = sampler.sample(step=4, rank=0, batch_size=6)
    assert torch.equal(batch.c, again.c) and torch.equal(batch.image, again.image)
    with pytest.raises(ConfigError, match="even batch"):
        sampler.sample(step=4, rank=0, batch_size=5)


def test_consistency_settings_are_checked():
    with pytest.raises(ConfigError, match="cache"):
        TrainConfig(loss=LossWeights(consistency=1.0), cache="somewhere")
    with pytest.raises(ConfigError, match="even"):
        TrainConfig(loss=LossWeights(consistency=1.0), batch_size=3)
    with pytest.raises(ConfigError, match="pair_offset_deg"):
        TrainConfig(pair_offset_deg=0.0)
    assert TrainConfig().paired_views is None
    assert TrainConfig(loss=LossWeights(consistency=0.5)).paired_views == 10.0
