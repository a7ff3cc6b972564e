"""distill3d invert, render --latent and orbit: the latent file ties the three together."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from distill3d.cli import main
from distill3d.models.latents import load_latent
from distill3d.models.video import decode_video


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    assert main(["init", "--preset", "tiny", "--seed", "1", "--out", str(folder / "t")]) == 0
    assert (
        main(["init", "--preset", "tiny", "--seed", "1", "--student", "--out", str(folder / "s")])
        == 0
    )
    return folder


def test_invert_writes_a_latent_that_render_and_orbit_take(tiny, tmp_path, capsys):
    student = str(tiny / "s")
    target = tmp_path / "target.png"
    assert (
        main(["render", "--model", student, "--seed", "4", "--yaw", "15", "--out", str(target)])
        == 0
    )
    out = tmp_path / "fit"
    argv = ["invert", str(target), "--model", student, "--camera", "15,0", "--steps", "4"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "camera (given) yaw 15.0" in printed
    latent = load_latent(out / "latent.json")
    assert (latent.yaw_deg, latent.pitch_deg) == (15.0, 0.0) and latent.ws.shape == (8, 32)
    assert latent.metadata["fit"]["steps"] == 4 and latent.metadata["model"] == student
    for name in ("target.png", "fit.png"):
        assert np.asarray(Image.open(out / name)).shape == (64, 64, 3)
    assert np.asarray(Image.open(out / "comparison.png")).shape == (64, 128, 3)
    # render --latent draws the fit at its fitted camera: the same pixels as fit.png
    again = tmp_path / "again.png"
    assert (
        main(
            [
                "render",
                "--model",
                student,
                "--latent",
                str(out / "latent.json"),
                "--out",
                str(again),
            ]
        )
        == 0
    )
    diff = np.abs(
        np.asarray(Image.open(again), np.int16) - np.asarray(Image.open(out / "fit.png"), np.int16)
    )
    assert diff.max() <= 1
    video = tmp_path / "orbit.gif"
    argv = ["orbit", "--model", student, "--latent", str(out / "latent.json"), "--frames", "6"]
    assert main([*argv, "--out", str(video)]) == 0
    assert decode_video(video.read_bytes())[0] == 6


def test_w_plus_estimated_camera_and_pivotal_tuning_through_the_teacher(tiny, tmp_path, capsys):
    teacher = str(tiny / "t")
    target = tmp_path / "target.png"
    assert main(["render", "--model", teacher, "--seed", "2", "--out", str(target)]) == 0
    out = tmp_path / "fit"
    argv = ["invert", str(target), "--model", teacher, "--space", "w+", "--steps", "2"]
    assert main([*argv, "--tune-steps", "2", "--out", str(out), "--quiet"]) == 0
    body = json.loads((out / "latent.json").read_text())
    assert (
        body["space"] == "w+"
        and len(body["ws"]) == 8
        and body["metadata"]["fit"]["camera_estimated"]
    )
    assert (
        "tuned_psnr_db" in body["metadata"]["fit"]
        and (out / "tuned-model" / "model.safetensors").is_file()
    )
    assert "after tuning" in capsys.readouterr().out


def test_bad_invert_and_orbit_input_is_one_line_errors(tiny, tmp_path, capsys):
    (tmp_path / "not.png").write_text("text")
    assert (
        main(
            [
                "invert",
                str(tmp_path / "not.png"),
                "--model",
                str(tiny / "s"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "not an image" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert (
        main(["invert", str(tmp_path / "a.png"), "--camera", "1", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "yaw,pitch" in capsys.readouterr().err
    assert main(["orbit", "--model", str(tiny / "s"), "--out", str(tmp_path / "o.avi")]) == 2
    assert ".mp4, .webm or .gif" in capsys.readouterr().err
    (tmp_path / "l.json").write_text(
        json.dumps({"format": "distill3d-latent", "version": 1, "num_ws": 3, "w": [0.0] * 5})
    )
    argv = ["render", "--model", str(tiny / "s"), "--latent", str(tmp_path / "l.json")]
    assert main([*argv, "--out", str(tmp_path / "x.png")]) == 2
    assert "fitted to another model" in capsys.readouterr().err


def test_render_edits_mix_and_interpolate_reach_both_ends(tiny, tmp_path, capsys):
    student = str(tiny / "s")

    def draw(name: str, *flags: str) -> np.ndarray:
        out = tmp_path / f"{name}.png"
        assert main(["render", "--model", student, *flags, "--yaw", "10", "--out", str(out)]) == 0
        return np.asarray(Image.open(out), np.int16)

    one, two = draw("one", "--seed", "1"), draw("two", "--seed", "2")
    assert np.abs(one - two).max() > 10
    assert (
        np.abs(
            draw("t0", "--seed", "1", "--interpolate-seed", "2", "--interpolate-t", "0") - one
        ).max()
        <= 1
    )
    assert (
        np.abs(
            draw("t1", "--seed", "1", "--interpolate-seed", "2", "--interpolate-t", "1") - two
        ).max()
        <= 1
    )
    assert (
        np.abs(draw("m0", "--seed", "1", "--mix-seed", "2", "--mix-cutoff", "0") - two).max() <= 1
    )
    assert (
        np.abs(draw("m8", "--seed", "1", "--mix-seed", "2", "--mix-cutoff", "8") - one).max() <= 1
    )
    half = draw("m4", "--seed", "1", "--mix-seed", "2", "--mix-cutoff", "4", "--truncation", "0.7")
    assert half.shape == (64, 64, 3)
    assert "layers 4+ from seed 2" in capsys.readouterr().out
    argv = ["render", "--model", student, "--mix-seed", "2", "--out", str(tmp_path / "x.png")]
    assert main(argv) == 2 and "both --mix-seed and --mix-cutoff" in capsys.readouterr().err
    assert main([*argv, "--mix-cutoff", "99"]) == 2 and "between 0 and 8" in capsys.readouterr().err
