"""EG3D's camera-conditioned dual discriminator, and the losses it is trained with.

The student is trained adversarially as EG3D was: the discriminator sees the final image and the
low-resolution "raw" image (upsampled and stacked as 6 channels, so it can penalise a raw render
and a super-resolved image that disagree), and is conditioned on the camera label by a projection
of a mapped camera embedding (Miyato & Koyama), so it can reject an image rendered from a pose
that does not match its label.

Architecture, as ``DualDiscriminator`` in NVlabs/eg3d ``training/dual_discriminator.py`` on
StyleGAN2's "resnet" discriminator: one block per resolution R, R/2, ..., 8 (each halves the side)
and an epilogue at 4x4 with minibatch standard deviation. Module, parameter and buffer names follow
upstream so its state dicts map by name. Everything runs in the input's dtype (no per-block fp16)
and every op has a double backward, which the R1 penalty needs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import ops
from ..models.camera import LABEL_SIZE
from ..models.errors import ConfigError
from ..models.stylegan2 import FullyConnectedLayer, MappingNetwork

IMG_CHANNELS = 3  # per image; the network's input stacks image + upsampled raw image (6 channels)
RESAMPLE_TAPS = (1, 3, 3, 1)  # StyleGAN2's binomial low-pass filter for 2x downsampling


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Architecture of ``DualDiscriminator``; defaults are EG3D's FFHQ-512 settings."""

    img_resolution: int = 512  # side of the final image, pixels; the raw image may be smaller
    c_dim: int = LABEL_SIZE  # conditioning label size; 0 = unconditional
    # Channels at resolution r: min(channel_base // r, channel_max).
    channel_base: int = 32768
    channel_max: int = 512
    cmap_dim: int | None = None  # size of the mapped label; None = the 4x4 block's channels
    mbstd_group_size: int | None = 4  # samples per minibatch-std group; None = whole batch
    mbstd_num_channels: int = 1  # minibatch-std feature maps appended at 4x4; 0 disables
    mapping_layers: int = 8  # layers of the label mapping (upstream's MappingNetwork default)
    conv_clamp: float | None = None  # clamp conv outputs to +-X (EG3D: 256 only with fp16)

    def __post_init__(self) -> None:
        res = self.img_resolution
        if isinstance(res, bool) or res < 8 or 2 ** int(math.log2(res)) != res:
            raise ConfigError(
                f"img_resolution must be a power of two >= 8 (the first block halves it into "
                f"the 4x4 epilogue), got {res}"
            )
        if self.c_dim < 0:
            raise ConfigError(f"c_dim must be >= 0 (0 = unconditional), got {self.c_dim}")
        if self.channel_base < 1 or self.channel_max < 1:
            raise ConfigError(
                f"channel_base and channel_max must be positive, got {self.channel_base} "
                f"and {self.channel_max}"
            )
        if self.channel_base // res < 1:
            raise ConfigError(
                f"channel_base {self.channel_base} gives 0 channels at {res} px; use a "
                f"channel_base of at least {res}"
            )
        if self.cmap_dim is not None and self.cmap_dim < 1:
            raise ConfigError(f"cmap_dim must be positive or None, got {self.cmap_dim}")
        if self.mbstd_group_size is not None and self.mbstd_group_size < 1:
            raise ConfigError(
                f"mbstd_group_size must be >= 1 or None (whole batch), got {self.mbstd_group_size}"
            )
        if self.mbstd_num_channels < 0:
            raise ConfigError(f"mbstd_num_channels must be >= 0, got {self.mbstd_num_channels}")
        if self.mbstd_num_channels > 0 and self.channels(4) % self.mbstd_num_channels != 0:
            raise ConfigError(
                f"the 4x4 block's {self.channels(4)} channels must split evenly into "
                f"mbstd_num_channels={self.mbstd_num_channels} groups; change one of them"
            )
        if self.c_dim > 0 and self.mapping_layers < 1:
            raise ConfigError(f"mapping_layers must be >= 1, got {self.mapping_layers}")
        if self.conv_clamp is not None and self.conv_clamp <= 0:
            raise ConfigError(f"conv_clamp must be positive or None, got {self.conv_clamp}")

    def channels(self, resolution: int) -> int:
        """Feature channels at ``resolution``."""
        return min(self.channel_base // resolution, self.channel_max)

    @property
    def block_resolutions(self) -> list[int]:
        """Input side of each downsampling block: R, R/2, ..., 8."""
        return [2**i for i in range(int(math.log2(self.img_resolution)), 2, -1)]

    @property
    def resolved_cmap_dim(self) -> int:
        """The mapped label's size: 0 when unconditional, else cmap_dim or the 4x4 channels."""
        if self.c_dim == 0:
            return 0
        return self.cmap_dim if self.cmap_dim is not None else self.channels(4)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiscriminatorConfig:
        """Inverse of ``to_dict``; unknown keys are an error so typos do not pass silently."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown DiscriminatorConfig field(s) {unknown}; known fields: {sorted(names)}"
            )
        return cls(**data)


def _check_shape(x: torch.Tensor, shape: list[int | None], name: str) -> None:
    if x.ndim != len(shape) or any(
        s is not None and s != d for s, d in zip(shape, x.shape, strict=True)
    ):
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(x.shape)}")


def conv2d_down2(
    x: torch.Tensor, w: torch.Tensor, f: torch.Tensor, padding: int = 0
) -> torch.Tensor:
    """Convolution with 2x downsampling: low-pass ``f`` first, so the stride does not alias.

    Same arithmetic as StyleGAN2's ``conv2d_resample(down=2)``: the filter's padding is set so
    that the output is exactly half the input. A 1x1 kernel is cheaper after subsampling; larger
    kernels run as a stride-2 convolution on the filtered input.
    x: [N, I, H, W], w: [O, I, k, k] -> [N, O, H/2, W/2].
    """
    fh, fw = f.shape
    kh, kw = w.shape[2:]
    pad = [
        padding + (fw - 1) // 2,
        padding + (fw - 2) // 2,
        padding + (fh - 1) // 2,
        padding + (fh - 2) // 2,
    ]
    if kh == 1 and kw == 1:
        x = ops.upfirdn2d(x, f, down=2, padding=pad)  # [N, I, H/2, W/2]
        return F.conv2d(x, w)
    x = ops.upfirdn2d(x, f, padding=pad)  # [N, I, H + 2p - 1, W + 2p - 1] (4-tap f)
    return F.conv2d(x, w, stride=2)


def filtered_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize [N, C, H, W] to [N, C, size, size]: bilinear, antialiased when shrinking.

    EG3D's ``filtered_resizing`` in its default 'antialiased' mode. The discriminator upsamples
    the raw image with it; use it too to make a real image's raw counterpart (real images have
    none), as EG3D's loss does, so real and generated pairs differ only in content.
    """
    return F.interpolate(
        image, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


class Conv2dLayer(nn.Module):
    """Equalised-learning-rate convolution (+ optional 2x downsampling), bias and activation.

    Weights are stored as N(0, 1) and scaled by 1/sqrt(fan_in) at run time, so every layer learns
    at the same rate under Adam. The activation is followed by its gain (sqrt(2) for lrelu) times
    the caller's ``gain`` (the resnet branches pass sqrt(0.5)), then the optional clamp.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        down: int = 1,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        if down not in (1, 2):
            raise ValueError(f"Conv2dLayer supports down=1 or 2, got {down}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.down = down
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = ops.activation_gain(activation)
        self.register_buffer("resample_filter", ops.setup_filter(RESAMPLE_TAPS))
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        )
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        if self.down == 2:
            x = conv2d_down2(x, w, self.resample_filter, self.padding)
        else:
            x = F.conv2d(x, w, padding=self.padding)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, act={self.activation}, "
            f"down={self.down}"
        )


class DiscriminatorBlock(nn.Module):
    """One resnet block: [fromRGB] -> conv0 -> conv1 (2x down), plus a 1x1 downsampled skip.

    Both branches are scaled by sqrt(0.5) so their sum keeps unit variance. Only the first block
    (``in_channels == 0``) reads the image, through a 1x1 fromRGB layer.
    """

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        if in_channels not in (0, tmp_channels):
            raise ValueError(f"in_channels must be 0 or {tmp_channels}, got {in_channels}")
        self.in_channels = in_channels
        self.tmp_channels = tmp_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.register_buffer("resample_filter", ops.setup_filter(RESAMPLE_TAPS))
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(
                img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp
            )
        self.conv0 = Conv2dLayer(
            tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp
        )
        self.conv1 = Conv2dLayer(
            tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp
        )
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in_channels or img_channels, r, r] -> [N, out_channels, r/2, r/2]."""
        if self.in_channels == 0:
            _check_shape(x, [None, self.img_channels, self.resolution, self.resolution], "image")
            x = self.fromrgb(x)  # [N, tmp, r, r]
        else:
            _check_shape(x, [None, self.in_channels, self.resolution, self.resolution], "x")
        y = self.skip(x, gain=math.sqrt(0.5))  # [N, out, r/2, r/2]
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))  # [N, out, r/2, r/2]
        return y + x

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}"


def mbstd_group(group_size: int | None, batch: int) -> int:
    """The group size minibatch-std uses for ``batch`` samples.

    Upstream takes min(group_size, batch) and fails unless the batch is a multiple of it. Here it
    is the largest divisor of the batch not above that, which equals upstream's whenever upstream
    works and still runs otherwise (a batch of 6 with group 4 uses groups of 3). A prime batch
    above the group size degrades to groups of 1, whose std feature is a constant: train with
    batches divisible by the group size (e.g. ``drop_last=True``) to keep the feature useful.
    """
    if group_size is None:
        return batch
    g = min(group_size, batch)
    while batch % g != 0:
        g -= 1
    return g


class MinibatchStdLayer(nn.Module):
    """Append the standard deviation across a group of samples as extra feature maps.

    This lets the discriminator see a batch's diversity and so penalise mode collapse. Samples
    i, i + N/G, i + 2N/G, ... form a group (upstream's reshape order).
    """

    def __init__(self, group_size: int | None, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C + num_channels, H, W]."""
        n, c, h, w = x.shape
        g = mbstd_group(self.group_size, n)
        f = self.num_channels
        y = x.reshape(g, n // g, f, c // f, h, w)  # [G, n, F, c, H, W]
        y = y - y.mean(dim=0)  # deviation from the group mean
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [n, F, c, H, W] std over the group
        y = y.mean(dim=[2, 3, 4])  # [n, F] averaged over channels and pixels
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head: [minibatch std] -> conv -> fc -> out, projected onto the mapped label.

    With a label the output layer gives a cmap_dim vector whose dot product with the mapped label
    (scaled by 1/sqrt(cmap_dim)) is the logit; without one it gives the logit directly.
    """

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,
        resolution: int = 4,
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.mbstd = (
            MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
            if mbstd_num_channels > 0
            else None
        )
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels,
            in_channels,
            3,
            activation="lrelu",
            conv_clamp=conv_clamp,
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, cmap_dim if cmap_dim > 0 else 1)

    def forward(self, x: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:
        """x [N, C, 4, 4], cmap [N, cmap_dim] or None -> logits [N, 1]."""
        _check_shape(x, [None, self.in_channels, self.resolution, self.resolution], "x")
        if self.mbstd is not None:
            x = self.mbstd(x)  # [N, C + F, 4, 4]
        x = self.conv(x)  # [N, C, 4, 4]
        x = self.fc(x.flatten(1))  # [N, C]
        x = self.out(x)  # [N, cmap_dim or 1]
        if self.cmap_dim > 0:
            assert cmap is not None
            _check_shape(cmap, [x.shape[0], self.cmap_dim], "cmap")
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, cmap_dim={self.cmap_dim}"


class DualDiscriminator(nn.Module):
    """Camera-conditioned discriminator of (image, raw image) pairs: EG3D's ``DualDiscriminator``.

    ``forward({"image": [N, 3, R, R], "image_raw": [N, 3, r, r]}, c [N, c_dim]) -> [N, 1]`` logits
    (higher = more real). The raw image is resized to R with antialiased bilinear interpolation
    (upstream's default ``filter_mode='antialiased'``) and stacked with the image. Parameters are
    initialised from torch's global generator; seed it for a reproducible network.
    """

    def __init__(
        self,
        img_resolution: int,
        c_dim: int = LABEL_SIZE,
        channel_base: int = 32768,
        channel_max: int = 512,
        cmap_dim: int | None = None,
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        mapping_layers: int = 8,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        cfg = DiscriminatorConfig(
            img_resolution=img_resolution,
            c_dim=c_dim,
            channel_base=channel_base,
            channel_max=channel_max,
            cmap_dim=cmap_dim,
            mbstd_group_size=mbstd_group_size,
            mbstd_num_channels=mbstd_num_channels,
            mapping_layers=mapping_layers,
            conv_clamp=conv_clamp,
        )
        self.config = cfg
        self.img_resolution = img_resolution
        self.c_dim = c_dim
        self.img_channels = 2 * IMG_CHANNELS
        self.cmap_dim = cfg.resolved_cmap_dim
        self.block_resolutions = cfg.block_resolutions
        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                in_channels=cfg.channels(res) if res < img_resolution else 0,
                tmp_channels=cfg.channels(res),
                out_channels=cfg.channels(res // 2),
                resolution=res,
                img_channels=self.img_channels,
                conv_clamp=conv_clamp,
            )
            setattr(self, f"b{res}", block)
        if c_dim > 0:
            self.mapping = MappingNetwork(
                z_dim=0,
                c_dim=c_dim,
                w_dim=self.cmap_dim,
                num_ws=None,
                num_layers=mapping_layers,
                w_avg_beta=None,
            )
        self.b4 = DiscriminatorEpilogue(
            cfg.channels(4),
            self.cmap_dim,
            resolution=4,
            mbstd_group_size=mbstd_group_size,
            mbstd_num_channels=mbstd_num_channels,
            conv_clamp=conv_clamp,
        )
        # Unused with antialiased resizing; kept so upstream's state-dict keys all have a home.
        self.register_buffer("resample_filter", ops.setup_filter(RESAMPLE_TAPS))

    @classmethod
    def from_config(cls, cfg: DiscriminatorConfig) -> DualDiscriminator:
        return cls(**cfg.to_dict())

    def forward(
        self,
        img: dict[str, torch.Tensor],
        c: torch.Tensor,
        c_noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Logits [N, 1] for images ``img`` seen from cameras ``c`` [N, c_dim].

        ``c_noise`` > 0 adds Gaussian noise of std ``c_noise`` times the batch's per-column std
        to the label (EG3D's ``disc_c_noise``, a regulariser against over-trusting the pose; 0 at
        evaluation); ``generator`` makes that noise reproducible. ``c`` is never modified.
        """
        for key in ("image", "image_raw"):
            if key not in img:
                raise ValueError(
                    f"the discriminator needs img['{key}']; pass a dict with 'image' "
                    f"[N, 3, R, R] and 'image_raw' [N, 3, r, r], got keys {sorted(img)}"
                )
        image, raw = img["image"], img["image_raw"]
        res = self.img_resolution
        _check_shape(image, [None, IMG_CHANNELS, res, res], "img['image']")
        _check_shape(raw, [image.shape[0], IMG_CHANNELS, None, None], "img['image_raw']")
        if raw.shape[-1] != res or raw.shape[-2] != res:
            raw = filtered_resize(raw, res)  # [N, 3, R, R]
        x = torch.cat([image, raw.to(image.dtype)], dim=1)  # [N, 6, R, R]

        for r in self.block_resolutions:
            x = getattr(self, f"b{r}")(x)  # [N, C(r/2), r/2, r/2]

        cmap = None
        if self.c_dim > 0:
            _check_shape(c, [image.shape[0], self.c_dim], "c")
            c = c.to(torch.float32)
            if c_noise > 0:
                if c.shape[0] < 2:
                    raise ValueError(
                        "c_noise scales the noise by the batch's label std, which needs at least "
                        "2 samples; use a larger batch or c_noise=0"
                    )
                noise = torch.randn(c.shape, generator=generator, device=c.device, dtype=c.dtype)
                c = c + noise * c.std(dim=0) * c_noise
            cmap = self.mapping(c.new_zeros([c.shape[0], 0]), c)  # [N, cmap_dim]
        return self.b4(x, cmap)  # [N, 1]

    def extra_repr(self) -> str:
        return f"img_resolution={self.img_resolution}, c_dim={self.c_dim}, cmap_dim={self.cmap_dim}"


# ---------------------------------------------------------------------------- losses


def nonsaturating_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss, softplus(-D(fake)) averaged: -log sigmoid, which does not saturate."""
    return F.softplus(-fake_logits).mean()


def nonsaturating_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss, mean softplus(D(fake)) + mean softplus(-D(real)).

    Each term is averaged over its own batch, so real and fake batches may differ in size.
    """
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def requires_grad_images(img: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached copies of ``img``'s tensors that require grad, ready for ``r1_penalty``."""
    return {key: value.detach().requires_grad_(True) for key, value in img.items()}


def r1_penalty(real_logits: torch.Tensor, real_images: dict[str, torch.Tensor]) -> torch.Tensor:
    """R1: squared norm of D's gradient w.r.t. the real image and raw image, batch mean.

    EG3D penalises both inputs of the dual discriminator. The graph is kept (create_graph) so the
    penalty can be backpropagated into D's weights. The caller scales it by gamma / 2 (and by the
    lazy-regularisation interval). ``real_images`` must be the tensors ``real_logits`` were
    computed from, requiring grad (see ``requires_grad_images``).
    """
    inputs = [real_images["image"], real_images["image_raw"]]
    if not all(t.requires_grad for t in inputs):
        raise ValueError(
            "r1_penalty needs real images that require grad: run D on "
            "requires_grad_images(real_images) and pass that same dict here"
        )
    grads = torch.autograd.grad(
        outputs=[real_logits.sum()], inputs=inputs, create_graph=True, only_inputs=True
    )
    penalty = sum(g.square().sum(dim=[1, 2, 3]) for g in grads)  # [N]
    assert isinstance(penalty, torch.Tensor)
    return penalty.mean()
