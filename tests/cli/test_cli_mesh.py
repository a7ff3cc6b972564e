"""``distill3d mesh`` and ``render --depth-out`` on the shipped demo teacher (coarse grids: fast)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from distill3d.cli import main
from distill3d.models.depth import decode_depth_png

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("skimage")


def test_mesh_writes_a_coloured_mesh_and_a_preview(tmp_path, capsys) -> None:
    out, preview = tmp_path / "figure.ply", tmp_path / "figure.png"
    args = ["mesh", "--seed", "4", "--resolution", "24", "--out", str(out)]
    assert main([*args, "--preview-out", str(preview), "--yaw", "30"]) == 0
    said = capsys.readouterr().out
    loaded = trimesh.load(out, process=False)
    assert f"{len(loaded.vertices)} vertices" in said and loaded.visual.kind == "vertex"
    assert np.asarray(Image.open(preview)).shape == (256, 768, 3)


def test_mesh_errors_are_one_line_before_any_work(tmp_path, capsys) -> None:
    out = str(tmp_path / "figure.glb")
    assert main(["mesh", "--resolution", "1024", "--out", out]) == 2
    assert "between 16 and 512" in capsys.readouterr().err
    assert main(["mesh", "--out", str(tmp_path / "figure.stl")]) == 2
    assert "must end in one of" in capsys.readouterr().err
    assert main(["mesh", "--model", "default-student", "--resolution", "16", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "student has no geometry" in err and "teacher" in err


def test_render_depth_png_is_16_bit_ray_distance(tmp_path) -> None:
    depth = tmp_path / "depth.png"
    args = ["render", "--seed", "4", "--out", str(tmp_path / "x.png"), "--depth-out", str(depth)]
    assert main(args) == 0
    distances = decode_depth_png(depth.read_bytes())
    figure = distances[~np.isnan(distances)]
    # The demo cameras sit 2.7 units from the origin; the figure is within half a unit of it.
    assert figure.size > 100 and figure.min() > 2.1 and figure.max() < 3.2
