"""Cameras: EG3D's frontal label, orbit geometry, label round trip, projection."""

from __future__ import annotations

import math

import pytest
import torch

from distill3d.models.camera import Camera, focal_from_eg3d_fov, focal_from_fov

# A frontal training label from EG3D's FFHQ dataset.json (image 00023.png, NVlabs/eg3d#65).
FFHQ_00023 = [
    0.9999417662620544, 0.010793998837471008, 0.00011557899415493011, 0.0015220991844047327,
    0.010792133398354053, -0.9998840093612671, 0.01074833795428276, -0.012054688543150803,
    0.0002315831370651722, -0.010746465064585209, -0.9999422430992126, 2.699972660546436,
    0.0, 0.0, 0.0, 1.0,
    4.2647, 0.0, 0.5, 0.0, 4.2647, 0.5, 0.0, 0.0, 1.0,
]  # fmt: skip


def test_frontal_label_is_eg3ds() -> None:
    label = Camera.frontal().to_label()[0]
    expected = torch.tensor(
        [
            1,
            0,
            0,
            0,
            0,
            -1,
            0,
            0,
            0,
            0,
            -1,
            2.7,
            0,
            0,
            0,
            1,
            4.2647,
            0,
            0.5,
            0,
            4.2647,
            0.5,
            0,
            0,
            1,
        ],
        dtype=torch.float32,
    )
    torch.testing.assert_close(label, expected, atol=1e-6, rtol=0)
    # And within a degree and a centimetre of a real frontal face label from the dataset.
    torch.testing.assert_close(label, torch.tensor(FFHQ_00023), atol=0.015, rtol=0)


def test_orbit_zero_is_frontal_and_yaw_pitch_move_the_camera() -> None:
    torch.testing.assert_close(Camera.orbit(0, 0).to_label(), Camera.frontal().to_label())
    right = Camera.orbit(30, 0).origin[0]
    assert right[0] > 1.0 and abs(right[1]) < 1e-6  # yaw moves towards +x, stays level
    up = Camera.orbit(0, 20).origin[0]
    assert up[1] > 0.9  # positive pitch raises the camera
    # Pitch is the true elevation of the camera above the origin's horizontal plane.
    assert math.degrees(math.asin(up[1] / up.norm())) == pytest.approx(20, abs=1e-4)
    # Every orbit camera sits at the radius and looks at the pivot.
    cams = Camera.orbit([-50, 10, 45], [-15, 0, 25])
    torch.testing.assert_close(cams.origin.norm(dim=1), torch.full((3,), 2.7))
    forward = cams.cam2world[:, :3, 2]
    to_pivot = torch.tensor([0.0, 0.0, 0.2]) - cams.origin
    torch.testing.assert_close(forward, to_pivot / to_pivot.norm(dim=1, keepdim=True))
    # Rotations are proper (det +1) and orthonormal.
    r = cams.cam2world[:, :3, :3]
    torch.testing.assert_close(
        r @ r.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(3))


def test_eg3d_angles_match_lookat_sampler_formula() -> None:
    h, v = math.pi / 2 + 0.4, math.pi / 2 - 0.2
    cam = Camera.from_eg3d_angles(h, v)
    phi = math.acos(1 - 2 * v / math.pi)
    expected = 2.7 * torch.tensor(
        [
            math.sin(phi) * math.cos(math.pi - h),
            math.cos(phi),
            math.sin(phi) * math.sin(math.pi - h),
        ]
    )
    torch.testing.assert_close(cam.origin[0], expected.float())


def test_label_round_trip_and_validation() -> None:
    cams = Camera.orbit([0, 10], [5, -5])
    back = Camera.from_label(cams.to_label())
    torch.testing.assert_close(back.cam2world, cams.cam2world)
    torch.testing.assert_close(back.intrinsics, cams.intrinsics)
    with pytest.raises(ValueError, match="25 numbers"):
        Camera.from_label([0.0] * 16)
    with pytest.raises(ValueError, match="NaN"):
        Camera.from_label([float("nan")] * 25)
    with pytest.raises(ValueError, match="pitch"):
        Camera.orbit(0, 90)


def test_projection_of_the_pivot_is_the_image_centre() -> None:
    cams = Camera.orbit([0, 25, -40], [0, 10, -10])
    pivot = torch.tensor([0.0, 0.0, 0.2]).expand(3, 1, 3)
    uvz = cams.project(pivot)
    torch.testing.assert_close(uvz[..., :2], torch.full((3, 1, 2), 0.5), atol=1e-5, rtol=0)
    assert (uvz[..., 2] > 0).all()


def test_focal_lengths() -> None:
    assert focal_from_eg3d_fov(18.837) == pytest.approx(4.2634, abs=1e-3)
    assert focal_from_fov(90) == pytest.approx(0.5)
