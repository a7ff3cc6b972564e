"""FID/KID maths against closed forms, the FID Inception network's layout and loading, and
`distill3d eval --fid-real` on the tiny models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from distill3d.cli import main
from distill3d.models.checkpoint import save_checkpoint
from distill3d.models.errors import ConfigError
from distill3d.models.student import student_from_teacher, student_preset
from distill3d.training.evaluation.fid import (
    FeatureStats,
    features_of,
    fid,
    folder_batches,
    frechet_distance,
    image_files,
    kid,
)
from distill3d.training.evaluation.inception import (
    ENV_VAR,
    WEIGHTS_FILENAME,
    FIDInceptionV3,
    find_inception_weights,
    load_inception,
)


def _random_psd(dim: int, seed: int) -> torch.Tensor:
    a = torch.randn(
        dim, 2 * dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return a @ a.T / dim


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())  # 5 + 2
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected)


def test_frechet_distance_of_general_covariances_matches_the_eigenvalue_formula():
    s1, s2 = _random_psd(16, 0), _random_psd(16, 1)
    mu1, mu2 = torch.zeros(16), torch.full((16,), 0.5)
    # tr sqrt(S1 S2) = sum of square roots of the (real, non-negative) eigenvalues of S1 S2.
    eig = np.linalg.eigvals((s1 @ s2).numpy()).real.clip(min=0)
    expected = 16 * 0.25 + float(s1.trace() + s2.trace()) - 2 * np.sqrt(eig).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_fid_is_zero_for_the_same_set_and_grows_with_a_shift():
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    same = FeatureStats(x)
    assert fid(same, same) == pytest.approx(0.0, abs=1e-8)
    shifted = FeatureStats(x + 0.5)  # same covariance, mean moved by 0.5 in 8 dimensions
    assert fid(same, shifted) == pytest.approx(8 * 0.25, rel=1e-6)


def test_kid_is_the_unbiased_polynomial_mmd():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(12, 5, generator=gen, dtype=torch.float64) + 1.0

    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a @ b / 5 + 1) ** 3)

    m = 12
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    # A whole-set subset: the permutation does not change the MMD, so every subset agrees.
    value = kid(FeatureStats(x), FeatureStats(y), subsets=3)
    assert value.subset_size == 12 and value.subsets == 3
    assert value.mean == pytest.approx(xx + yy - 2 * xy, rel=1e-9)
    assert value.std == pytest.approx(0.0, abs=1e-9)


def test_kid_separates_distributions():
    gen = torch.Generator().manual_seed(1)
    a = FeatureStats(torch.randn(300, 16, generator=gen, dtype=torch.float64))
    b = FeatureStats(torch.randn(300, 16, generator=gen, dtype=torch.float64))
    c = FeatureStats(torch.randn(300, 16, generator=gen, dtype=torch.float64) * 1.5 + 0.3)
    same, different = kid(a, b, subsets=20, max_subset_size=100), kid(a, c, subsets=20)
    assert abs(same.mean) < 3 * same.std + 1e-3
    assert different.mean > 10 * max(abs(same.mean), same.std)


def test_inception_has_torchvisions_trunk_and_pool3_features():
    model = FIDInceptionV3().eval()
    # torchvision's inception_v3 has 27,161,264 parameters; without its 1000-way classifier
    # (2,049,000) and the auxiliary head (3,326,696) that leaves 21,785,568.
    assert sum(p.numel() for p in model.parameters()) == 21_785_568
    keys = set(model.state_dict())
    assert {"Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.bn.running_var"} <= keys
    assert not any(k.startswith(("fc.", "AuxLogits.")) for k in keys)
    with torch.no_grad():
        small, large = model(torch.rand(2, 3, 64, 64)), model(torch.rand(1, 3, 512, 300))
    assert small.shape == (2, 2048) and large.shape == (1, 2048)
    assert bool((small >= 0).all())  # the mean of ReLU outputs
    with pytest.raises(ValueError, match="N, 3, H, W"):
        model(torch.rand(2, 1, 64, 64))


def _torchvision_style_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict shaped like pytorch-fid's file: trunk + 1008-way fc + BN counters, He-init so
    features keep their scale through the random network."""
    torch.manual_seed(seed)
    model = FIDInceptionV3()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    state = dict(model.state_dict())
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.zeros(1008)
    return state


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / WEIGHTS_FILENAME
    torch.save(_torchvision_style_state(), path)
    return path


def test_inception_loads_pytorch_fid_layout_and_refuses_others(inception_file, tmp_path):
    model = load_inception(inception_file)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    expected = _torchvision_style_state()["Mixed_6b.branch7x7_2.conv.weight"]
    assert torch.equal(model.Mixed_6b.branch7x7_2.conv.weight, expected)
    assert load_inception(inception_file.parent) is not None  # a folder holding the file
    state = _torchvision_style_state()
    del state["Mixed_7c.branch1x1.conv.weight"]
    state["Mixed_5b.branch1x1.conv.weight"] = torch.zeros(1, 1, 1, 1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ConfigError, match=r"missing.*Mixed_7c.*wrong shape.*Mixed_5b"):
        load_inception(bad)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="tensors-only"):
        load_inception(tmp_path / "junk.pth")


def test_inception_weights_are_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert find_inception_weights() is None
    with pytest.raises(ConfigError, match=rf"not found.*{WEIGHTS_FILENAME}.*--inception"):
        load_inception()
    with pytest.raises(ConfigError, match="no Inception weights at"):
        find_inception_weights(tmp_path / "nowhere.pth")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "typo.pth"))
    with pytest.raises(ConfigError, match=rf"\${ENV_VAR}"):
        find_inception_weights()
    cached = tmp_path / "hub" / "checkpoints" / WEIGHTS_FILENAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    monkeypatch.delenv(ENV_VAR)
    assert find_inception_weights() == cached


def test_image_folders_are_read_resized_and_checked(tmp_path, inception_file):
    folder = tmp_path / "real"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "a.png")
    Image.new("L", (64, 64), 128).save(folder / "sub" / "b.jpg")
    (folder / "notes.txt").write_text("ignored")
    files = image_files(folder)
    assert [p.name for p in files] == ["a.png", "b.jpg"]
    (batch,) = list(folder_batches(files, batch_size=4))
    assert batch.shape == (2, 3, 299, 299)
    assert torch.allclose(batch[0, :, 100, 100], torch.tensor([1.0, -1.0, -1.0]))
    stats = features_of(load_inception(inception_file), [batch])
    assert stats.count == 2 and stats.features.dtype == torch.float64
    with pytest.raises(ConfigError, match="has no images"):
        image_files(_empty(tmp_path))
    (folder / "broken.png").write_bytes(b"\x89PNG nonsense")
    with pytest.raises(ConfigError, match=r"broken\.png"):
        list(folder_batches(image_files(folder), batch_size=4))


def _empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


@pytest.fixture()
def tiny_pair(tiny_generator, tmp_path):
    save_checkpoint(tiny_generator, tmp_path / "teacher")
    student = student_from_teacher(tiny_generator, student_preset("tiny"))
    save_checkpoint(student, tmp_path / "student")
    return ["--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student")]


def test_eval_with_fid_against_teacher_renders(tiny_pair, inception_file, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["eval", *tiny_pair, "--out", str(out), "--samples", "2", "--no-lpips"]
    argv += ["--fid-real", "teacher", "--fid-samples", "5", "--inception", str(inception_file)]
    assert main(argv) == 0
    assert "student vs teacher renders: FID" in capsys.readouterr().out
    d = json.loads((out / "report.json").read_text())["distribution"]
    assert d["reference"] == "teacher renders" and d["samples"] == d["reference_samples"] == 5
    assert "teacher" not in d  # the teacher is the reference here
    assert math.isfinite(d["student"]["fid"]) and d["student"]["fid"] > 0
    assert d["student"]["kid"]["subset_size"] == 5
    markdown = (out / "report.md").read_text()
    assert "## Distribution: FID and KID" in markdown and "| student |" in markdown


def test_eval_with_fid_against_a_real_folder(tiny_pair, inception_file, tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(real / f"{i}.png")
    out = tmp_path / "report"
    argv = ["eval", *tiny_pair, "--out", str(out), "--samples", "2", "--no-lpips"]
    argv += ["--fid-real", str(real), "--fid-samples", "4", "--inception", str(inception_file)]
    assert main(argv) == 0
    d = json.loads((out / "report.json").read_text())["distribution"]
    assert d["reference"] == str(real) and d["reference_samples"] == 6 and d["samples"] == 4
    for model in ("student", "teacher"):
        assert d[model]["fid"] > 0 and d[model]["kid"]["subset_size"] == 4
    assert "| teacher |" in (out / "report.md").read_text()


def test_eval_fid_errors_are_clear_and_early(tiny_pair, inception_file, tmp_path, capsys):
    out = tmp_path / "report"
    base = ["eval", *tiny_pair, "--out", str(out), "--samples", "2", "--no-lpips"]
    missing = ["--fid-real", "teacher", "--inception", str(tmp_path / "none.pth")]
    assert main([*base, *missing]) == 2
    assert "no Inception weights at" in capsys.readouterr().err
    empty = ["--fid-real", str(_empty(tmp_path)), "--inception", str(inception_file)]
    assert main([*base, *empty]) == 2
    assert "has no images" in capsys.readouterr().err
    assert not (out / "report.json").exists()  # nothing rendered or written
