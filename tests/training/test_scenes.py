"""The demo world's renderer: deterministic scenes, exact depth, and geometry that agrees with the
teacher's camera conventions (a point seen in one view lands where projection says in another)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill3d.cli import main
from distill3d.models.eg3d.renderer import sample_rays
from distill3d.training.demo.scenes import (
    PARTS,
    SCENE_DIM,
    attributes,
    build_scenes,
    headwear_of,
    render_scenes,
    sample_z,
    scene_camera,
    trace,
)


def test_scenes_are_a_deterministic_function_of_the_seed():
    assert torch.equal(sample_z(3, 4), sample_z(3, 4))
    a = render_scenes(build_scenes(sample_z(3, 2)), scene_camera([20, -10], [5, 5]), 32)
    b = render_scenes(build_scenes(sample_z(3, 2)), scene_camera([20, -10], [5, 5]), 32)
    assert torch.equal(a.image, b.image) and torch.equal(a.depth, b.depth)
    c = render_scenes(build_scenes(sample_z(4, 2)), scene_camera([20, -10], [5, 5]), 32)
    assert not torch.equal(a.image, c.image)
    assert a.image.shape == (2, 3, 32, 32) and a.mask.shape == a.depth.shape == (2, 1, 32, 32)
    assert a.image.min() >= -1 and a.image.max() <= 1


def test_attributes_see_only_the_direction_of_z():
    """The teacher's mapping normalises z, so the scene must not depend on z's scale."""
    z = sample_z(0, 3)
    assert torch.allclose(attributes(z), attributes(3 * z), atol=1e-6)
    u = attributes(sample_z(1, 2000))
    assert u.min() > 0 and u.max() < 1 and abs(float(u.mean()) - 0.5) < 0.02
    kinds = headwear_of(u)
    assert {"hair", "hat", "none"} == set(kinds)
    with pytest.raises(ValueError, match=str(SCENE_DIM)):
        attributes(torch.zeros(2, SCENE_DIM + 1))


def _world_points(camera, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3D points of every pixel that hits the figure, [P, 3], and their pixel indices."""
    resolution = depth.shape[-1]
    origins, directions = sample_rays(camera.cam2world, camera.intrinsics, resolution)
    d = depth.reshape(-1)
    hit = torch.isfinite(d)
    return origins[0][hit] + d[hit, None] * directions[0][hit], hit.nonzero()[:, 0]


def test_a_point_seen_in_one_view_lands_where_projection_says_in_another():
    scenes = build_scenes(sample_z(11, 1))
    view_a, view_b = scene_camera([-20.0], [5.0]), scene_camera([25.0], [-8.0])
    res = 64
    a = render_scenes(scenes, view_a, res, supersample=1)
    points, pixels = _world_points(view_a, a.depth)
    assert len(points) > 0.2 * res * res  # the figure fills a good part of the frame
    # Projecting A's points back into A gives A's own pixel centres (camera conventions agree).
    uvz = view_a.project(points[None])[0]
    cols, rows = pixels % res, pixels // res
    assert torch.allclose(uvz[:, 0], (cols + 0.5) / res, atol=1e-4)
    assert torch.allclose(uvz[:, 1], (rows + 0.5) / res, atol=1e-4)
    # In B: trace a ray from B's centre through each point; where nothing is in front of it,
    # B's hit distance equals the distance to the point and B sees the same colour (Lambertian).
    origin_b = view_b.origin[0]
    to_point = points - origin_b
    distance = to_point.norm(dim=-1)
    colour_b, depth_b = trace(
        scenes, origin_b.expand(1, len(points), 3), (to_point / distance[:, None])[None]
    )
    visible = (depth_b[0] - distance).abs() < 1e-3
    hidden = depth_b[0] < distance - 1e-3  # something nearer to B covers the point
    assert 0.3 < float(visible.float().mean()) < 1.0  # some points are hidden from B, most not
    # Every other ray hits the point itself (up to rays grazing a silhouette in float32).
    assert float((visible | hidden).float().mean()) > 0.99
    colour_a, _ = trace(scenes, view_a.origin.expand(1, len(points), 3),
                        ((points - view_a.origin[0]) / (points - view_a.origin[0]).norm(dim=-1, keepdim=True))[None])  # fmt: skip
    # Same colour from both views, except where float round-off lands a point on the other side
    # of a boundary between two parts (a handful of pixels).
    colour_error = (colour_a[0][visible] - colour_b[0][visible]).abs().amax(dim=-1)
    assert float((colour_error < 2e-3).float().mean()) > 0.98
    # And the projection of a visible point into B lands inside B's image.
    uv_b = view_b.project(points[visible][None])[0]
    assert bool(((uv_b[:, :2] > 0) & (uv_b[:, :2] < 1)).all())


def test_faces_look_towards_plus_z_and_positive_yaw_moves_the_camera_to_plus_x():
    seed = next(s for s in range(50) if headwear_of(attributes(sample_z(s, 1))) == ["none"])
    scenes = build_scenes(sample_z(seed, 1))
    frontal = render_scenes(scenes, scene_camera([0.0], [0.0]), 64, supersample=1)
    # Bareheaded, the nearest point of a frontal view is the nose tip, near the image centre.
    d = frontal.depth[0, 0]
    row, col = divmod(int(d.argmin()), 64)
    assert abs(col - 31.5) <= 2 and 28 <= row <= 44
    # The nose centre is in front (+z) of the skull centre, which the frontal camera faces.
    nose = scenes.centre[0, PARTS.index("nose")]
    assert float(nose[2]) > 0.2
    # From yaw +80 the camera is on the +x side: the right ear (x > 0) is nearer than the left.
    side = scene_camera([80.0], [0.0])
    assert float(side.origin[0, 0]) > 2.5
    centres = scenes.centre[0]
    ear_r, ear_l = centres[PARTS.index("ear_r")], centres[PARTS.index("ear_l")]
    assert float((ear_r - side.origin[0]).norm()) < float((ear_l - side.origin[0]).norm())


def test_supersampled_images_are_box_filtered_with_exact_centre_depth():
    scenes = build_scenes(sample_z(2, 1))
    camera = scene_camera([15.0], [10.0])
    fine = render_scenes(scenes, camera, 64, supersample=1)
    coarse = render_scenes(scenes, camera, 32, supersample=2)
    assert torch.allclose(coarse.image, torch.nn.functional.avg_pool2d(fine.image, 2), atol=1e-6)
    exact = render_scenes(scenes, camera, 32, supersample=1)
    assert torch.equal(coarse.depth, exact.depth)
    edge = (coarse.mask > 0) & (coarse.mask < 1)
    assert bool(edge.any())  # partially covered pixels at the silhouette
    finite = torch.isfinite(coarse.depth)
    radius = 2.7
    assert bool(
        ((coarse.depth[finite] > radius - 0.6) & (coarse.depth[finite] < radius + 0.6)).all()
    )
    assert not math.isfinite(float(coarse.depth[0, 0, 0, 0]))  # the corner sees background


def test_demo_scenes_command(tmp_path, capsys):
    out = tmp_path / "scenes.png"
    assert main(["demo", "scenes", "--seeds", "0-2,7", "--yaws=-30,30", "--resolution", "32",
                 "--out", str(out)]) == 0  # fmt: skip
    from PIL import Image

    assert Image.open(out).size == (4 * 32, 2 * 32)
    assert main(["demo", "scenes", "--seeds", "x", "--out", str(out)]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_the_batched_change_of_frame_matches_the_per_ellipsoid_formula():
    """``_nearest_hits`` maps all ellipsoids' frames with one matrix product; the textbook
    per-ellipsoid form inv_k (x - c_k) must give the same hits."""
    from distill3d.training.demo.scenes import _nearest_hits, build_scenes, sample_z, scene_camera

    scenes = build_scenes(sample_z(11, 2))
    camera = scene_camera([30.0, -60.0], [10.0, -5.0])
    origins, directions = sample_rays(camera.cam2world, camera.intrinsics, 48)
    for i in range(2):
        o, d = origins[i], directions[i]
        depth, k, _, _ = _nearest_hits(scenes, i, o, d)
        inv, c = scenes.inverse[i], scenes.centre[i]
        o_local = torch.einsum("kij,mkj->mki", inv, o[:, None, :] - c[None])
        d_local = torch.einsum("kij,mj->mki", inv, d)
        a = d_local.square().sum(-1)
        b = 2 * (o_local * d_local).sum(-1)
        disc = b.square() - 4 * a * (o_local.square().sum(-1) - 1)
        t = (-b - disc.clamp(min=0).sqrt()) / (2 * a)
        t = torch.where((disc > 0) & (t > 0) & scenes.active[i][None], t, math.inf)
        expected_depth, expected_k = t.min(dim=1)
        assert torch.equal(torch.isinf(depth), torch.isinf(expected_depth))
        hit = ~torch.isinf(depth)
        assert hit.float().mean() > 0.2  # the figure is in view
        # Rounding differs between the two forms; it only shows where a ray grazes an ellipsoid
        # (the root of a discriminant near 0 magnifies it) or two surfaces tie.
        off = (depth[hit] - expected_depth[hit]).abs() > 1e-4
        assert off.float().mean() < 0.005, off.float().mean()
        assert (depth[hit] - expected_depth[hit]).abs().median() < 1e-6
        assert (k[hit] == expected_k[hit]).float().mean() > 0.995


def test_demo_scenes_command_frames_with_a_teachers_focal_length(tmp_path, capsys):
    from PIL import Image

    argv = ["demo", "scenes", "--seeds", "3", "--yaws", "0", "--resolution", "32"]
    wide, tight = tmp_path / "wide.png", tmp_path / "tight.png"
    assert main([*argv, "--out", str(wide)]) == 0
    assert main([*argv, "--focal", "3.2", "--out", str(tight)]) == 0
    # demo-face's framing: the same figure fills more of the image, so fewer pixels are background.
    background = [(np.asarray(Image.open(p)).max(axis=2) < 8).mean() for p in (wide, tight)]
    assert background[1] < background[0] - 0.05
    capsys.readouterr()
    assert main([*argv, "--focal", "0", "--out", str(tight)]) == 2
    assert "focal must be a normalised focal length in [0.5, 20]" in capsys.readouterr().err
