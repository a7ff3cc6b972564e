"""The distill3d command line, run in-process and as the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from distill3d.cli import main


def test_init_render_info(tmp_path, capsys) -> None:
    ckpt = tmp_path / "tiny"
    assert main(["init", "--preset", "tiny", "--seed", "1", "--out", str(ckpt)]) == 0
    out_png, depth_png, depth_npy = tmp_path / "a.png", tmp_path / "d.png", tmp_path / "d.npy"
    args = [
        "render",
        "--model",
        str(ckpt),
        "--seed",
        "3",
        "--yaw",
        "25",
        "--pitch",
        "-5",
        "--out",
        str(out_png),
    ]
    assert main([*args, "--depth-out", str(depth_png), "--raw-out", str(tmp_path / "raw.png")]) == 0
    assert main([*args[:-1], str(tmp_path / "b.png"), "--depth-out", str(depth_npy)]) == 0
    a = np.asarray(Image.open(out_png))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, np.asarray(Image.open(tmp_path / "b.png")))  # reproducible
    assert np.asarray(Image.open(depth_png)).shape == (16, 16)
    assert np.load(depth_npy).shape == (16, 16)
    assert np.asarray(Image.open(tmp_path / "raw.png")).shape == (16, 16, 3)
    capsys.readouterr()
    assert main(["info", str(ckpt)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["img_resolution"] == 64 and info["parameters"] > 0


def test_errors_are_one_line_with_status_2(tmp_path, capsys) -> None:
    assert (
        main(["render", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 2
    )
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err
    assert main(["render", "--pitch", "95", "--out", str(tmp_path / "x.png")]) == 2
    assert "pitch" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_console_script_renders_the_default_model(tmp_path) -> None:
    out = tmp_path / "default.png"
    proc = subprocess.run(
        [sys.executable, "-m", "distill3d", "render", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (128, 128)  # the shipped demo teacher
