"""distill3d demo inversion: the held-out study's numbers, grid and refusals (tiny models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from distill3d.cli import main
from distill3d.training.demo.inversion import InversionStudyConfig


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    assert main(["init", "--preset", "tiny", "--seed", "1", "--out", str(folder / "t")]) == 0
    argv = ["init", "--preset", "tiny", "--seed", "1", "--student", "--out", str(folder / "s")]
    assert main(argv) == 0
    return folder


def test_the_study_reports_every_view_and_model(tiny, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["demo", "inversion", "--model", f"s={tiny / 's'}", "--model", f"t={tiny / 't'}"]
    argv += ["--scenes", "2", "--steps", "2", "--novel-yaws=-30,30", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["views"] == ["input", "yaw -30", "yaw +30"]
    for name in ("s", "t"):
        result = report["models"][name]
        assert set(result["psnr_db"]) == set(report["views"])
        assert all(0 < v["mean"] < 60 for v in result["psnr_db"].values())
        assert result["seconds_per_inversion"]["mean"] > 0
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (3 * 64, 2 * 3 * 64, 3)  # truth, s, t rows; 2 scenes x 3 views
    text = (out / "report.md").read_text()
    assert "PSNR yaw +30 (dB)" in text and "| s |" in text and "| t |" in text
    assert "s per inversion" in capsys.readouterr().out


def test_bad_study_arguments_are_refused(tiny, tmp_path, capsys):
    argv = ["demo", "inversion", "--model", "nothing", "--out", str(tmp_path / "o")]
    assert main(argv) == 2 and "NAME=MODEL" in capsys.readouterr().err
    argv = ["demo", "inversion", "--model", f"s={tiny / 's'}", "--novel-yaws", "x"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(ValueError, match="at least one scene"):
        InversionStudyConfig(scenes=0)
