"""DualDiscriminator: shapes, conditioning, minibatch std, R1 double backward, config, losses."""

from __future__ import annotations

import math

import pytest
import torch

from distill3d.models.camera import Camera
from distill3d.models.errors import ConfigError
from distill3d.training.discriminator import (
    DiscriminatorConfig,
    DualDiscriminator,
    MinibatchStdLayer,
    conv2d_down2,
    filtered_resize,
    mbstd_group,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
    r1_penalty,
    requires_grad_images,
)

TINY = {"img_resolution": 32, "channel_base": 512, "channel_max": 32}


def _disc(seed: int = 0, **kwargs: object) -> DualDiscriminator:
    torch.manual_seed(seed)
    return DualDiscriminator(**{**TINY, **kwargs})  # type: ignore[arg-type]


def _inputs(n: int, seed: int = 1, raw: int = 16) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = {
        "image": torch.randn(n, 3, 32, 32, generator=g).clamp(-1, 1),
        "image_raw": torch.randn(n, 3, raw, raw, generator=g).clamp(-1, 1),
    }
    c = Camera.orbit(yaw_deg=torch.linspace(-40, 40, n).tolist(), pitch_deg=10.0).to_label()
    return img, c


def test_output_shape_and_architecture() -> None:
    d = _disc()
    img, c = _inputs(4)
    out = d(img, c)
    assert out.shape == (4, 1) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert d.block_resolutions == [32, 16, 8]
    assert d.b32.fromrgb.weight.shape == (16, 6, 1, 1)  # 512 // 32 = 16 channels, 6 = image + raw
    assert not hasattr(d.b16, "fromrgb")
    assert d.b8.conv1.weight.shape == (32, 32, 3, 3)  # channel_max caps 512 // 4 = 128
    assert d.cmap_dim == 32
    assert d.b4.conv.weight.shape == (32, 33, 3, 3)  # + 1 minibatch-std channel
    assert d.b4.out.weight.shape == (32, 32)


def test_raw_image_at_full_resolution_and_unconditional() -> None:
    img, c = _inputs(2, raw=32)
    assert _disc()(img, c).shape == (2, 1)
    d = _disc(c_dim=0)
    assert not hasattr(d, "mapping") and d.b4.out.weight.shape == (1, 32)
    assert d(img, c[:, :0]).shape == (2, 1)


def test_conditioning_changes_the_output() -> None:
    d = _disc()
    img, c = _inputs(4)
    out = d(img, c)
    assert not torch.allclose(out, d(img, c.flip(0)), atol=1e-6)
    assert not torch.allclose(out, d({**img, "image_raw": img["image_raw"].flip(0)}, c), atol=1e-6)


def test_c_noise_is_random_reproducible_and_leaves_c_alone() -> None:
    d = _disc()
    img, c = _inputs(4)
    c_before = c.clone()
    clean = d(img, c)
    a = d(img, c, c_noise=1.0, generator=torch.Generator().manual_seed(5))
    b = d(img, c, c_noise=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.allclose(a, clean)
    assert torch.equal(c, c_before)
    with pytest.raises(ValueError, match="at least 2"):
        d({k: v[:1] for k, v in img.items()}, c[:1], c_noise=1.0)


@pytest.mark.parametrize(
    ("group", "batch", "expected"),
    [(4, 8, 4), (4, 3, 3), (4, 6, 3), (4, 5, 1), (4, 1, 1), (None, 6, 6)],
)
def test_mbstd_group(group: int | None, batch: int, expected: int) -> None:
    assert mbstd_group(group, batch) == expected


@pytest.mark.parametrize("batch", [1, 3, 5, 6])
def test_batches_not_divisible_by_the_group(batch: int) -> None:
    img, c = _inputs(batch)
    assert _disc(mbstd_group_size=4)(img, c).shape == (batch, 1)


def test_mbstd_matches_a_direct_computation() -> None:
    x = torch.randn(6, 4, 2, 2, dtype=torch.float64)
    y = MinibatchStdLayer(group_size=3, num_channels=2)(x)
    assert y.shape == (6, 6, 2, 2) and torch.equal(y[:, :4], x)
    for i in range(6):
        members = x[[j for j in range(6) if j % 2 == i % 2]]  # groups are i, i + N/G, ...
        for f in range(2):
            chunk = members[:, 2 * f : 2 * f + 2]
            std = (chunk.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
            assert torch.allclose(y[i, 4 + f], std.expand(2, 2))


def test_downsampling_conv_halves_and_matches_filter_then_stride() -> None:
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    f = torch.tensor([1.0, 3, 3, 1], dtype=torch.float64).outer(torch.tensor([1.0, 3, 3, 1]))
    f = f / f.sum()
    w1 = torch.randn(5, 3, 1, 1, dtype=torch.float64)
    w3 = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    assert conv2d_down2(x, w1, f).shape == (2, 5, 4, 4)
    assert conv2d_down2(x, w3, f, padding=1).shape == (2, 5, 4, 4)
    # 1x1: blur (pad 1 each side) then take every other pixel, then the 1x1 conv
    blurred = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, [1, 1, 1, 1]), f[None, None].repeat(3, 1, 1, 1), groups=3
    )[:, :, ::2, ::2]
    assert torch.allclose(conv2d_down2(x, w1, f), torch.nn.functional.conv2d(blurred, w1))


def test_r1_double_backward() -> None:
    d = _disc()
    img, c = _inputs(4)
    real = requires_grad_images(img)
    logits = d(real, c)
    penalty = r1_penalty(logits, real)
    assert penalty.ndim == 0 and torch.isfinite(penalty) and penalty > 0
    d.zero_grad()
    (penalty * 0.5).backward()
    grads = {n: p.grad for n, p in d.named_parameters()}
    assert grads["b32.fromrgb.weight"] is not None and grads["b32.fromrgb.weight"].abs().sum() > 0
    assert grads["mapping.fc0.weight"] is not None and grads["mapping.fc0.weight"].abs().sum() > 0
    # the raw image's gradient is part of the penalty
    only_image = torch.autograd.grad(d(real, c).sum(), [real["image"]])[0].square().sum([1, 2, 3])
    assert penalty > only_image.mean()


def test_r1_needs_grad_inputs() -> None:
    d = _disc()
    img, c = _inputs(2)
    with pytest.raises(ValueError, match="require grad"):
        r1_penalty(d(img, c), img)


def test_determinism() -> None:
    img, c = _inputs(4)
    a, b = _disc(seed=3), _disc(seed=3)
    assert all(
        torch.equal(p, q)
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert torch.equal(a(img, c), b(img, c))
    assert not torch.equal(a(img, c), _disc(seed=4)(img, c))


def test_losses() -> None:
    real = torch.tensor([[2.0], [-1.0]])
    fake = torch.tensor([[0.5], [-3.0], [1.0]])
    sp = torch.nn.functional.softplus
    assert torch.allclose(nonsaturating_g_loss(fake), sp(-fake).mean())
    assert torch.allclose(nonsaturating_d_loss(real, fake), sp(fake).mean() + sp(-real).mean())
    assert math.isclose(float(nonsaturating_g_loss(torch.zeros(3, 1))), math.log(2), rel_tol=1e-6)


def test_bad_inputs() -> None:
    d = _disc()
    img, c = _inputs(2)
    with pytest.raises(ValueError, match="image_raw"):
        d({"image": img["image"]}, c)
    with pytest.raises(ValueError, match=r"img\['image'\] must have shape \[N, 3, 32, 32\]"):
        d({**img, "image": img["image"][:, :, :16, :16]}, c)
    with pytest.raises(ValueError, match=r"c must have shape \[2, 25\]"):
        d(img, c[:, :16])


def test_config_round_trip_and_checks() -> None:
    cfg = DiscriminatorConfig(**TINY, cmap_dim=8, mbstd_group_size=None)
    assert DiscriminatorConfig.from_dict(cfg.to_dict()) == cfg
    d = DualDiscriminator.from_config(cfg)
    assert d.config == cfg and d.cmap_dim == 8
    with pytest.raises(ConfigError, match="unknown DiscriminatorConfig field"):
        DiscriminatorConfig.from_dict({**cfg.to_dict(), "resolution": 32})
    bad = [
        ({"img_resolution": 48}, "power of two"),
        ({"img_resolution": 4}, "power of two >= 8"),
        ({"c_dim": -1}, "c_dim"),
        ({"channel_base": 16}, "0 channels"),
        ({"cmap_dim": 0}, "cmap_dim"),
        ({"mbstd_group_size": 0}, "mbstd_group_size"),
        ({"mbstd_num_channels": 3}, "split evenly"),
        ({"mapping_layers": 0}, "mapping_layers"),
        ({"conv_clamp": 0.0}, "conv_clamp"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ConfigError, match=match):
            DiscriminatorConfig(**{**TINY, **kwargs})  # type: ignore[arg-type]


def test_ffhq512_layout() -> None:
    """Upstream's FFHQ-512 discriminator (cbase 32768, cmax 512): channels and cmap per block."""
    cfg = DiscriminatorConfig()
    assert cfg.block_resolutions == [512, 256, 128, 64, 32, 16, 8]
    assert [cfg.channels(r) for r in (512, 256, 128, 64, 4)] == [64, 128, 256, 512, 512]
    assert cfg.resolved_cmap_dim == 512


def test_conv_clamp_and_no_mbstd() -> None:
    img, c = _inputs(3)
    assert _disc(conv_clamp=0.5, mbstd_num_channels=0)(img, c).shape == (3, 1)


def test_real_images_get_a_raw_counterpart() -> None:
    img, c = _inputs(2)
    raw = filtered_resize(img["image"], 16)
    assert raw.shape == (2, 3, 16, 16)
    flat = torch.full((1, 3, 32, 32), 0.25)
    assert torch.allclose(filtered_resize(flat, 8), torch.full((1, 3, 8, 8), 0.25))
    assert _disc()({"image": img["image"], "image_raw": raw}, c).shape == (2, 1)
