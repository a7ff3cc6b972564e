"""Each operator against a direct, slow definition of what it computes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill3d.models import ops


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _slow_upfirdn(x, f, up, down, pad, gain, flip_filter=False):
    """Zero insertion, padding (negative crops) and a true 2-D convolution, pixel by pixel."""
    n, c, h, w = x.shape
    up_x = torch.zeros(n, c, h * up, w * up, dtype=x.dtype)
    up_x[:, :, ::up, ::up] = x
    x0, x1, y0, y1 = pad
    padded = F.pad(up_x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    padded = padded[
        :,
        :,
        max(-y0, 0) : padded.shape[2] - max(-y1, 0),
        max(-x0, 0) : padded.shape[3] - max(-x1, 0),
    ]
    k = f * gain ** (f.ndim / 2)
    kh, kw = k.shape
    oh, ow = padded.shape[2] - kh + 1, padded.shape[3] - kw + 1
    out = torch.zeros(n, c, oh, ow, dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            patch = padded[:, :, i : i + kh, j : j + kw]
            # convolution: output(i, j) = sum_k patch(a, b) f(kh-1-a, kw-1-b)
            kern = k if flip_filter else k.flip([0, 1])
            out[:, :, i, j] = (patch * kern).sum(dim=(2, 3))
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize(
    "up,down,pad,gain",
    [
        (1, 1, [1, 2, 0, 1], 1.0),
        (2, 1, [2, 1, 2, 1], 4.0),
        (2, 1, [1, 2, 0, -1], 3.0),
        (1, 2, [1, 1, 1, 1], 1.0),
    ],
)
def test_upfirdn2d_matches_zero_insert_pad_convolve(up, down, pad, gain) -> None:
    x = _randn(2, 3, 5, 6)
    f = torch.tensor(
        [[1.0, 2.0, 0.5, 0.1], [0.3, 1.0, 3.0, 0.2]], dtype=torch.float64
    )  # asymmetric
    expected = _slow_upfirdn(x, f, up, down, pad, gain)
    got = ops.upfirdn2d(x, f, up=up, down=down, padding=pad, gain=gain)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_flip_filter_is_correlation() -> None:
    x = _randn(1, 2, 4, 4)
    f = _randn(3, 3, seed=1)
    expected = _slow_upfirdn(x, f, 1, 1, [1, 1, 1, 1], 1.0, flip_filter=True)
    torch.testing.assert_close(ops.upfirdn2d(x, f, padding=1, flip_filter=True), expected)


def test_setup_filter_is_normalised_binomial() -> None:
    f = ops.setup_filter([1, 3, 3, 1])
    expected = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
    torch.testing.assert_close(f, expected)


def test_upsample2d_preserves_constant_images() -> None:
    x = torch.full((1, 2, 6, 6), 0.7, dtype=torch.float64)
    y = ops.upsample2d(x, ops.setup_filter([1, 3, 3, 1]).double())
    assert y.shape == (1, 2, 12, 12)
    # Away from the zero-padded border the upsampled image keeps the value.
    torch.testing.assert_close(y[:, :, 2:-2, 2:-2], torch.full_like(y[:, :, 2:-2, 2:-2], 0.7))


@pytest.mark.parametrize("flip_weight", [True, False])
def test_conv2d_resample_up2_equals_upsample_then_conv(flip_weight) -> None:
    x = _randn(2, 3, 5, 5)
    w = _randn(4, 3, 3, 3, seed=2)
    f = ops.setup_filter([1, 3, 3, 1]).double()
    got = ops.conv2d_resample(x, w, f=f, up=2, padding=1, flip_weight=flip_weight)
    # Slow form: zero insertion, pad [3, 2, 3, 2], FIR with gain 4, then a valid convolution.
    up = _slow_upfirdn(x, f, 2, 1, [3, 2, 3, 2], 4.0)
    kernel = w if flip_weight else w.flip([2, 3])
    expected = F.conv2d(up, kernel)
    assert got.shape == (2, 4, 10, 10)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_conv2d_resample_grouped_up2_matches_per_group() -> None:
    x = _randn(1, 4, 4, 4)
    w = _randn(6, 2, 3, 3, seed=3)
    f = ops.setup_filter([1, 3, 3, 1]).double()
    got = ops.conv2d_resample(x, w, f=f, up=2, padding=1, groups=2, flip_weight=False)
    parts = [
        ops.conv2d_resample(
            x[:, 2 * g : 2 * g + 2], w[3 * g : 3 * g + 3], f=f, up=2, padding=1, flip_weight=False
        )
        for g in range(2)
    ]
    torch.testing.assert_close(got, torch.cat(parts, dim=1))


@pytest.mark.parametrize(
    "act", ["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"]
)
def test_bias_act_definition(act) -> None:
    x = _randn(3, 4, 2)
    b = _randn(4, seed=5)
    y = x + b.reshape(1, 4, 1)
    direct = {
        "linear": y,
        "relu": y.clamp_min(0) * math.sqrt(2),
        "lrelu": torch.where(y >= 0, y, 0.2 * y) * math.sqrt(2),
        "tanh": torch.tanh(y),
        "sigmoid": 1 / (1 + torch.exp(-y)),
        "elu": torch.where(y > 0, y, torch.exp(y) - 1),
        "selu": 1.0507009873554805 * torch.where(y > 0, y, 1.6732632423543772 * (torch.exp(y) - 1)),
        "softplus": torch.log1p(torch.exp(y)),
        "swish": y / (1 + torch.exp(-y)) * math.sqrt(2),
    }[act]
    torch.testing.assert_close(ops.bias_act(x, b, act=act), direct)
    # Explicit gain and clamp: gain replaces the default, clamp bounds both sides.
    torch.testing.assert_close(
        ops.bias_act(x, b, act=act, gain=0.5, clamp=0.3),
        (direct / ops.activation_gain(act) * 0.5).clamp(-0.3, 0.3),
    )


def test_bias_act_rejects_unknown_activation() -> None:
    with pytest.raises(ValueError, match="unknown activation"):
        ops.bias_act(torch.zeros(1, 1), act="gelu")


def _slow_modconv(x, weight, styles, noise, up, demodulate, f):
    """Per sample: scale the weight's input channels, demodulate, convolve one image at a time."""
    outs = []
    for i in range(x.shape[0]):
        w = weight * styles[i].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / torch.sqrt((w**2).sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        xi = x[i : i + 1]
        pad = weight.shape[-1] // 2
        if up == 2:
            xi = _slow_upfirdn(xi, f, 2, 1, [3, 2, 3, 2], 4.0)
            out = F.conv2d(xi, w.flip([2, 3]))
        else:
            out = F.conv2d(xi, w, padding=pad)
        outs.append(out)
    y = torch.cat(outs)
    return y + noise if noise is not None else y


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv2d_matches_per_sample_definition(fused, up, demodulate) -> None:
    x = _randn(3, 4, 6, 6)
    weight = _randn(5, 4, 3, 3, seed=1)
    styles = _randn(3, 4, seed=2)
    res = 6 * up
    noise = _randn(3, 1, res, res, seed=4) if demodulate else None
    f = ops.setup_filter([1, 3, 3, 1]).double()
    got = ops.modulated_conv2d(
        x,
        weight,
        styles,
        noise=noise,
        up=up,
        padding=1,
        resample_filter=f,
        demodulate=demodulate,
        flip_weight=(up == 1),
        fused=fused,
    )
    expected = _slow_modconv(x, weight, styles, noise, up, demodulate, f)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_fused_and_non_fused_agree_in_float32() -> None:
    x = _randn(4, 8, 8, 8).float()
    weight = _randn(8, 8, 3, 3, seed=1).float()
    styles = _randn(4, 8, seed=2).float()
    a = ops.modulated_conv2d(x, weight, styles, padding=1, fused=True)
    b = ops.modulated_conv2d(x, weight, styles, padding=1, fused=False)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fp16_prenormalisation_keeps_the_result() -> None:
    # Large styles would overflow fp16 products without upstream's pre-normalisation.
    x = _randn(2, 4, 5, 5).float()
    weight = _randn(3, 4, 3, 3, seed=1).float() * 100
    styles = _randn(2, 4, seed=2).float() * 300
    ref = ops.modulated_conv2d(x, weight, styles, padding=1, fused=False)
    half = ops.modulated_conv2d(x.half(), weight, styles, padding=1, fused=False)
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), ref, rtol=2e-2, atol=2e-2)


def test_normalize_2nd_moment() -> None:
    x = _randn(3, 7)
    y = ops.normalize_2nd_moment(x)
    torch.testing.assert_close(y.square().mean(dim=1), torch.ones(3, dtype=torch.float64))
