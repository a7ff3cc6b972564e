"""LPIPS: the torchvision + lpips file layouts load, the metric behaves, and the search is local.

Weights are random (nothing is downloaded); files are written in the exact key layouts of
torchvision's ``vgg16-397923af.pth`` and lpips' ``weights/v0.1/vgg.pth``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distill3d.models.errors import ConfigError
from distill3d.models.lpips import (
    LPIPS,
    TAP_CHANNELS,
    VGG16_FILENAME,
    VGG16Features,
    find_lpips_weights,
    load_lpips,
    save_lpips_weights,
)

# torchvision's vgg16().features conv indices and channel widths.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
CONV_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def torchvision_vgg16_state(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Random weights under torchvision's keys, classifier included (it must be ignored)."""
    gen = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    in_channels = 3
    for index, width in zip(CONV_INDICES, CONV_WIDTHS, strict=True):
        fan_in = in_channels * 9
        state[f"features.{index}.weight"] = (
            torch.randn(width, in_channels, 3, 3, generator=gen) * (2 / fan_in) ** 0.5
        )
        state[f"features.{index}.bias"] = 0.01 * torch.randn(width, generator=gen)
        in_channels = width
    # The real classifier is 4096x25088 etc.; small stand-ins are enough since they are skipped.
    state["classifier.0.weight"] = torch.randn(8, 16, generator=gen)
    state["classifier.0.bias"] = torch.randn(8, generator=gen)
    state["classifier.6.weight"] = torch.randn(10, 8, generator=gen)
    return state


def lpips_lin_state(seed: int = 1) -> OrderedDict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (f"lin{k}.model.1.weight", torch.rand(1, c, 1, 1, generator=gen))
        for k, c in enumerate(TAP_CHANNELS)
    )


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lpips_weights")
    torch.save(torchvision_vgg16_state(), folder / VGG16_FILENAME)
    torch.save(lpips_lin_state(), folder / "vgg.pth")
    return folder


@pytest.fixture(scope="module")
def model(weights_dir: Path) -> LPIPS:
    return load_lpips(weights_dir)


@pytest.fixture(autouse=True)
def _isolated_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """No real cache, env var or installed lpips package may leak into a test.

    An empty ``lpips`` package first on sys.path shadows any installed one.
    """
    monkeypatch.delenv("DISTILL3D_LPIPS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    shadow = tmp_path / "shadow_site"
    (shadow / "lpips").mkdir(parents=True)
    (shadow / "lpips" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(shadow))


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=gen) * 2 - 1


# --- architecture --------------------------------------------------------------------------------


def test_vgg16_features_keys_are_torchvision_keys() -> None:
    expected = {}
    for key, value in torchvision_vgg16_state().items():
        if key.startswith("features."):
            expected[key.removeprefix("features.")] = tuple(value.shape)
    state = VGG16Features().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_taps_have_lpips_channels_and_resolutions() -> None:
    taps = VGG16Features()(torch.zeros(1, 3, 32, 32))
    assert [t.shape[1] for t in taps] == [64, 128, 256, 512, 512]
    assert [t.shape[-1] for t in taps] == [32, 16, 8, 4, 2]


# --- loading -------------------------------------------------------------------------------------


def test_folder_load_maps_torchvision_and_lpips_keys(model: LPIPS) -> None:
    vgg = torchvision_vgg16_state()
    lin = lpips_lin_state()
    state = model.state_dict()
    for index in CONV_INDICES:
        assert torch.equal(state[f"net.{index}.weight"], vgg[f"features.{index}.weight"])
        assert torch.equal(state[f"net.{index}.bias"], vgg[f"features.{index}.bias"])
    for k in range(5):
        assert torch.equal(state[f"lin{k}.weight"], lin[f"lin{k}.model.1.weight"])
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


def test_safetensors_round_trip_gives_identical_model(model: LPIPS, tmp_path: Path) -> None:
    path = save_lpips_weights(model, tmp_path / "lpips_vgg.safetensors")
    again = load_lpips(path)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x, y = images(seed=1), images(seed=2)
    assert torch.equal(model(x, y), again(x, y))


def test_vgg16_file_found_by_pattern_and_lin_by_alternative_name(tmp_path: Path) -> None:
    torch.save(torchvision_vgg16_state(), tmp_path / "vgg16-other.pth")
    torch.save(lpips_lin_state(), tmp_path / "lpips_vgg.pth")
    found = find_lpips_weights(tmp_path)
    assert found is not None
    assert found.vgg == tmp_path / "vgg16-other.pth"
    assert found.lin == tmp_path / "lpips_vgg.pth"


# --- the metric ----------------------------------------------------------------------------------


def test_matches_reference_formula(model: LPIPS) -> None:
    """Recompute LPIPS step by step from the raw file tensors with functional ops."""
    vgg = torchvision_vgg16_state()
    lin = lpips_lin_state()
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(img: torch.Tensor) -> list[torch.Tensor]:
        h = (img - shift) / scale
        out = []
        for block in ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28)):
            if out:
                h = F.max_pool2d(h, 2)
            for i in block:
                h = F.relu(
                    F.conv2d(h, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"], padding=1)
                )
            out.append(h)
        return out

    x, y = images(seed=3), images(seed=4)
    expected = torch.zeros(x.shape[0])
    for k, (fx, fy) in enumerate(zip(taps(x), taps(y), strict=True)):
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        d = ((nx - ny) ** 2 * lin[f"lin{k}.model.1.weight"]).sum(1)
        expected += d.mean(dim=(1, 2))
    torch.testing.assert_close(model(x, y), expected, rtol=1e-5, atol=1e-6)


def test_distance_properties(model: LPIPS) -> None:
    x, y = images(3, seed=5), images(3, seed=6)
    d = model(x, y)
    assert d.shape == (3,)
    assert torch.all(d > 0)
    torch.testing.assert_close(d, model(y, x))
    assert torch.equal(model(x, x), torch.zeros(3))


def test_gradients_reach_inputs_not_weights(model: LPIPS) -> None:
    x = images(seed=7).requires_grad_(True)
    model(x, images(seed=8)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_shape_mismatch_is_rejected(model: LPIPS) -> None:
    with pytest.raises(ValueError, match="same shape"):
        model(images(2), images(3))


# --- errors --------------------------------------------------------------------------------------


def test_nothing_found_says_where_it_looked_and_about_no_lpips(tmp_path: Path) -> None:
    assert find_lpips_weights() is None
    with pytest.raises(ConfigError) as info:
        load_lpips()
    message = str(info.value)
    assert "--no-lpips" in message
    assert "DISTILL3D_LPIPS" in message and "--lpips" in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / VGG16_FILENAME) in message
    assert "weights/v0.1/vgg.pth" in message


def test_explicit_path_without_weights_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist.*--no-lpips"):
        load_lpips(tmp_path / "nowhere")
    torch.save(torchvision_vgg16_state(), tmp_path / VGG16_FILENAME)
    with pytest.raises(ConfigError, match=r"no vgg\.pth"):
        load_lpips(tmp_path)
    with pytest.raises(ConfigError, match=r"not \.safetensors"):
        load_lpips(tmp_path / VGG16_FILENAME)


def test_wrong_shapes_name_file_and_key(weights_dir: Path, tmp_path: Path) -> None:
    (tmp_path / VGG16_FILENAME).symlink_to(weights_dir / VGG16_FILENAME)
    lin = lpips_lin_state()
    lin["lin3.model.1.weight"] = torch.rand(1, 256, 1, 1)
    torch.save(lin, tmp_path / "vgg.pth")
    with pytest.raises(ConfigError) as info:
        load_lpips(tmp_path)
    assert str(tmp_path / "vgg.pth") in str(info.value)
    assert "lin3.weight: file (1, 256, 1, 1), expected (1, 512, 1, 1)" in str(info.value)


def test_missing_vgg_key_and_bad_safetensors_are_reported(model: LPIPS, tmp_path: Path) -> None:
    vgg = torchvision_vgg16_state()
    del vgg["features.28.bias"]
    torch.save(vgg, tmp_path / VGG16_FILENAME)
    torch.save(lpips_lin_state(), tmp_path / "vgg.pth")
    with pytest.raises(ConfigError, match=r"missing keys \[28\.bias\]"):
        load_lpips(tmp_path)

    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["extra"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match=r"bad\.safetensors.*unexpected keys \[extra\]"):
        load_lpips(tmp_path / "bad.safetensors")


def test_negative_linear_weights_are_rejected(weights_dir: Path, tmp_path: Path) -> None:
    (tmp_path / VGG16_FILENAME).symlink_to(weights_dir / VGG16_FILENAME)
    lin = lpips_lin_state()
    lin["lin0.model.1.weight"][0, 0] = -1.0
    torch.save(lin, tmp_path / "vgg.pth")
    with pytest.raises(ConfigError, match="negative"):
        load_lpips(tmp_path)


class NotATensor:
    pass


def test_pickled_objects_are_refused(weights_dir: Path, tmp_path: Path) -> None:
    (tmp_path / VGG16_FILENAME).symlink_to(weights_dir / VGG16_FILENAME)
    torch.save({"lin0.model.1.weight": NotATensor()}, tmp_path / "vgg.pth")
    with pytest.raises(ConfigError, match="tensors-only"):
        load_lpips(tmp_path)


# --- search --------------------------------------------------------------------------------------


def test_env_var_file_and_folder(
    model: LPIPS, weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISTILL3D_LPIPS", str(weights_dir))
    assert find_lpips_weights() is not None
    assert find_lpips_weights().vgg == weights_dir / VGG16_FILENAME
    file = save_lpips_weights(model, tmp_path / "combined.safetensors")
    monkeypatch.setenv("DISTILL3D_LPIPS", str(file))
    assert find_lpips_weights().combined == file
    assert torch.equal(load_lpips()(images(), images(seed=9)), model(images(), images(seed=9)))
    monkeypatch.setenv("DISTILL3D_LPIPS", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"\$DISTILL3D_LPIPS"):
        load_lpips()


def test_torch_home_cache_is_searched(weights_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / VGG16_FILENAME).symlink_to(weights_dir / VGG16_FILENAME)
    assert find_lpips_weights() is None  # VGG16 alone is not enough
    (cache / "vgg.pth").symlink_to(weights_dir / "vgg.pth")
    found = find_lpips_weights()
    assert found is not None and found.vgg == cache / VGG16_FILENAME
    assert found.lin == cache / "vgg.pth"


def test_lin_weights_from_installed_lpips_package(
    weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / VGG16_FILENAME).symlink_to(weights_dir / VGG16_FILENAME)
    site = tmp_path / "fake_site"
    package_weights = site / "lpips" / "weights" / "v0.1"
    package_weights.mkdir(parents=True)
    (site / "lpips" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package_weights / "vgg.pth").symlink_to(weights_dir / "vgg.pth")
    monkeypatch.syspath_prepend(str(site))
    found = find_lpips_weights()
    assert found is not None and found.lin == package_weights / "vgg.pth"
    assert load_lpips().lin4.weight.shape == (1, 512, 1, 1)
