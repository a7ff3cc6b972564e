"""Pure-PyTorch versions of the StyleGAN2 / EG3D custom operators.

NVIDIA's code ships CUDA plugins for ``bias_act`` and ``upfirdn2d`` and a grouped-convolution
"fused" modulated convolution. Here each op is written once in plain PyTorch with the reference
semantics of ``torch_utils/ops`` (same operation order, so CPU results match upstream bit for bit),
runs on CPU and CUDA, under fp16/bf16 autocast, and exports to ONNX.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# (default alpha, default gain) per activation, as in StyleGAN2's bias_act.
_ACTIVATIONS: dict[str, tuple[float, float]] = {
    "linear": (0.0, 1.0),
    "relu": (0.0, math.sqrt(2)),
    "lrelu": (0.2, math.sqrt(2)),
    "tanh": (0.0, 1.0),
    "sigmoid": (0.0, 1.0),
    "elu": (0.0, 1.0),
    "selu": (0.0, 1.0),
    "softplus": (0.0, 1.0),
    "swish": (0.0, math.sqrt(2)),
}


def activation_gain(act: str) -> float:
    """The gain that keeps activations at unit variance for ``act`` (sqrt(2) for (l)relu)."""
    return _ACTIVATIONS[act][1]


def _apply_activation(x: torch.Tensor, act: str, alpha: float) -> torch.Tensor:
    if act == "linear":
        return x
    if act == "relu":
        return F.relu(x)
    if act == "lrelu":
        return F.leaky_relu(x, alpha)
    if act == "tanh":
        return torch.tanh(x)
    if act == "sigmoid":
        return torch.sigmoid(x)
    if act == "elu":
        return F.elu(x)
    if act == "selu":
        return F.selu(x)
    if act == "softplus":
        return F.softplus(x)
    if act == "swish":
        return torch.sigmoid(x) * x
    raise ValueError(f"unknown activation {act!r}; expected one of {sorted(_ACTIVATIONS)}")


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """Add a bias along ``dim``, apply ``act``, scale by ``gain``, clamp to ``[-clamp, clamp]``.

    ``alpha`` and ``gain`` default to the activation's own values (lrelu: 0.2 and sqrt(2)), so
    that a layer's output keeps unit variance; the clamp guards fp16 against overflow.
    """
    if act not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(_ACTIVATIONS)}")
    def_alpha, def_gain = _ACTIVATIONS[act]
    alpha = float(def_alpha if alpha is None else alpha)
    gain = float(def_gain if gain is None else gain)
    if b is not None:
        shape = [-1 if i == dim else 1 for i in range(x.ndim)]
        x = x + b.reshape(shape)
    x = _apply_activation(x, act, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def setup_filter(taps: Sequence[float], normalize: bool = True) -> torch.Tensor:
    """The separable 2-D FIR filter outer(taps, taps), normalised to sum to one.

    ``[1, 3, 3, 1]`` gives StyleGAN2's 4x4 binomial anti-aliasing filter.
    """
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim != 1 or f.numel() == 0:
        raise ValueError(
            f"filter taps must be a non-empty 1-D sequence, got shape {tuple(f.shape)}"
        )
    f = f.ger(f)
    if normalize:
        f = f / f.sum()
    return f


def _pad4(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        px, py = padding
        return px, px, py, py
    if len(padding) == 4:
        x0, x1, y0, y1 = padding
        return x0, x1, y0, y1
    raise ValueError(f"padding must be an int or 2 or 4 ints, got {padding!r}")


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative pads crop), FIR-filter, then downsample.

    Padding is ``[x0, x1, y0, y1]``. The filter is applied as a true convolution (flipped) unless
    ``flip_filter``, and scaled by ``gain ** (f.ndim / 2)`` so that ``gain=up**2`` preserves the
    signal's mean after zero insertion. The filter runs as a depthwise convolution whose group count
    is the channel count, so the graph has no batch-dependent shapes.
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects [N, C, H, W], got shape {tuple(x.shape)}")
    if f.ndim != 2:
        raise ValueError(f"upfirdn2d expects a 2-D filter, got shape {tuple(f.shape)}")
    n, c, h, w = x.shape
    x0, x1, y0, y1 = _pad4(padding)

    if up > 1:
        # Insert up-1 zeros after every pixel, in both directions.
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)

    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0) : x.shape[2] - max(-y1, 0), max(-x0, 0) : x.shape[3] - max(-x1, 0)]

    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip([0, 1])
    weight = f[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """Anti-aliased ``up``-fold upsampling with the FIR filter ``f`` (StyleGAN2's skip images)."""
    fh, fw = f.shape
    padding = [(fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=padding, gain=up * up)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    groups: int = 1,
    flip_weight: bool = True,
) -> torch.Tensor:
    """2-D convolution, optionally preceded by 2x FIR upsampling, as StyleGAN2 computes it.

    ``up=1`` is a plain convolution. ``up=2`` uses the same fast path as upstream: a stride-2
    transposed convolution followed by the FIR filter (pad 1, gain 4), which equals zero insertion
    + filtering + convolution but costs a quarter of the multiply-adds. ``flip_weight=False``
    (upstream's choice for ``up=2``) makes the transposed convolution a true convolution.
    """
    if up == 1:
        if not flip_weight:
            w = w.flip([2, 3])
        return F.conv2d(x, w, padding=padding, groups=groups)
    if up != 2 or f is None:
        raise ValueError(f"conv2d_resample supports up=1, or up=2 with a filter; got up={up}")
    out_channels, in_per_group, kh, kw = w.shape
    fh, fw = f.shape
    # Padding of the equivalent zero-insert + filter + conv formulation, then what remains of it
    # after the transposed convolution has done the upsampling.
    px0 = padding + (fw + up - 1) // 2 - (kw - 1)
    px1 = padding + (fw - up) // 2 - (kw - up)
    py0 = padding + (fh + up - 1) // 2 - (kh - 1)
    py1 = padding + (fh - up) // 2 - (kh - up)
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    # conv_transpose2d expects [in, out/groups, kh, kw].
    if groups == 1:
        w = w.transpose(0, 1)
    else:
        w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw)
        w = w.transpose(1, 2).reshape(groups * in_per_group, out_channels // groups, kh, kw)
    if flip_weight:
        # The transposed convolution already flips: undo it to get a correlation.
        w = w.flip([2, 3])
    x = F.conv_transpose2d(x, w, stride=up, padding=[pyt, pxt], groups=groups)
    return upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused: bool = False,
) -> torch.Tensor:
    """StyleGAN2's modulated convolution: scale input channels by ``styles``, convolve, demodulate.

    Two equivalent forms:
    - ``fused=True`` builds one weight per sample and runs a grouped convolution with
      ``groups=batch``. Upstream uses it at inference, so it reproduces upstream bit for bit, but
      its group count depends on the batch, which ONNX/TensorRT graphs cannot express.
    - ``fused=False`` scales the activations before and after a shared convolution. It exports with
      a dynamic batch axis and is what the student and the exporters use.
    Noise ([N|1, 1, H, W]) is added after demodulation in both forms.
    """
    batch = x.shape[0]
    _, in_channels, kh, kw = weight.shape
    if styles.shape[-1] != in_channels:
        raise ValueError(
            f"styles have {styles.shape[-1]} channels, the weight expects {in_channels}"
        )

    # fp16 overflows on the raw products: pre-normalise weight and styles (demodulation cancels
    # the scale up to its epsilon), as upstream does.
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (
            1
            / math.sqrt(in_channels * kh * kw)
            / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True)
        )
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = None
    dcoefs = None
    if demodulate or fused:
        w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        assert w is not None
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]

    if not fused:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample(
            x,
            weight.to(x.dtype),
            f=resample_filter,
            up=up,
            padding=padding,
            flip_weight=flip_weight,
        )
        if dcoefs is not None and noise is not None:
            x = torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(batch, -1, 1, 1))
        elif dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        elif noise is not None:
            x = x + noise.to(x.dtype)
        return x

    assert w is not None
    if dcoefs is not None:
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample(
        x,
        w.to(x.dtype),
        f=resample_filter,
        up=up,
        padding=padding,
        groups=batch,
        flip_weight=flip_weight,
    )
    x = x.reshape(batch, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale ``x`` to unit root-mean-square along ``dim`` (StyleGAN's input normalisation)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()
