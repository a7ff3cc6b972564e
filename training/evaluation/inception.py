"""InceptionV3 as FID uses it ("pt_inception-2015-12-05"), in plain PyTorch, weights from disk.

FID numbers are only comparable when they come from the same network: the TensorFlow Inception
graph of 2015-12-05 that TTUR's reference FID uses. pytorch-fid ported its weights to a PyTorch
state dict, ``pt_inception-2015-12-05-6726825d.pth``, laid out like torchvision's
``inception_v3`` with a 1008-way classifier. That port needs four changes to torchvision's
blocks to match the TensorFlow graph, reproduced here:

- every average pool inside the Inception blocks excludes padding (``count_include_pad=False``);
- the last block (``Mixed_7c``) pools its pool branch with a 3x3 max pool, not an average pool.

The input is resized to 299x299 (bilinear, ``align_corners=False``) and mapped from [0, 1] to
[-1, 1]; the features are the 2048 channels after the final global average pool ("pool3").

torchvision is not used (its wheels do not load with the CPU build of torch here) and nothing is
downloaded: the weights are read from a local file with ``weights_only=True`` or safetensors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ...models.errors import ConfigError

ENV_VAR = "DISTILL3D_INCEPTION"
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILENAME
)
FEATURE_DIM = 2048
INPUT_SIZE = 299

_Size = int | tuple[int, int]


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (TensorFlow's epsilon 1e-3), ReLU."""

    def __init__(
        self, cin: int, cout: int, kernel_size: _Size, stride: int = 1, padding: _Size = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    """The pool branch's 3x3 average, padding excluded from the mean as in TensorFlow."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], dim=1)


class InceptionC(nn.Module):
    """Factorised 7x7 convolutions at 17x17."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], dim=1)


class InceptionE(nn.Module):
    """Expanded filter bank at 8x8; ``max_pool_branch`` is the TensorFlow graph's last block."""

    def __init__(self, cin: int, max_pool_branch: bool = False) -> None:
        super().__init__()
        self.max_pool_branch = max_pool_branch
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], dim=1)
        if self.max_pool_branch:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], dim=1)


class FIDInceptionV3(nn.Module):
    """Images in [0, 1], [N, 3, H, W] of any size -> pool3 features [N, 2048].

    Module names are torchvision's, so ``pt_inception-2015-12-05-6726825d.pth`` loads strictly
    (its classifier ``fc.*`` is not needed for features and is left out).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool_branch=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
        x = F.interpolate(
            images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
        )
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return x.mean(dim=(2, 3))


def find_inception_weights(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The weights file: ``path``, else ``$DISTILL3D_INCEPTION``, else torch's hub cache (where
    pytorch-fid's download lands). An explicit location that is not a file is an error rather
    than a silent fallback; None only when nothing was asked for and nothing was found."""
    explicit = path if path is not None else os.environ.get(ENV_VAR) or None
    if explicit is not None:
        where = Path(explicit).expanduser()
        if where.is_dir():
            where = where / WEIGHTS_FILENAME
        if not where.is_file():
            source = "path" if path is not None else f"${ENV_VAR}"
            raise ConfigError(
                f"no Inception weights at {explicit} (given as {source}): {where} does not "
                f"exist. {_how_to_get()}"
            )
        return where
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME
    return cached if cached.is_file() else None


def load_inception(
    path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> FIDInceptionV3:
    """The FID Inception network with local weights, frozen and in eval mode, on ``device``."""
    found = find_inception_weights(path)
    if found is None:
        hub = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME
        raise ConfigError(
            f"Inception weights for FID/KID not found: ${ENV_VAR} is not set and {hub} does not "
            f"exist. {_how_to_get()}"
        )
    model = FIDInceptionV3()
    state = _read_state(found)
    expected = model.state_dict()
    state = {
        k: v
        for k, v in state.items()
        if not k.startswith(("fc.", "AuxLogits.")) and not k.endswith("num_batches_tracked")
    }
    _check_layout(expected, state, found)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            state[key] = value  # a training counter, irrelevant in eval mode
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False)
    return model.to(device).eval()


def _how_to_get() -> str:
    return (
        f"Download pytorch-fid's {WEIGHTS_FILENAME} once ({WEIGHTS_URL}) and pass it with "
        f"--inception PATH or {ENV_VAR}=PATH, or copy it into torch's hub cache "
        f"({Path(torch.hub.get_dir()) / 'checkpoints'}); or leave FID/KID out (no --fid-real)."
    )


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise ConfigError(f"cannot read Inception weights {path} ({e})") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refusals, truncated files, not-a-zip, ...
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(
            f"cannot read Inception weights {path} as a tensors-only state dict "
            f"({type(e).__name__}: {first}); {_how_to_get()}"
        ) from e
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ConfigError(f"Inception weights {path} do not hold a state dict of tensors")
    return dict(obj)


def _check_layout(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], path: Path
) -> None:
    wanted = {k for k in expected if not k.endswith("num_batches_tracked")}
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - wanted)
    wrong = sorted(k for k in wanted & set(state) if state[k].shape != expected[k].shape)
    problems = [
        f"{label} {names[:4]}{' ...' if len(names) > 4 else ''}"
        for label, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        )
        if names
    ]
    if problems:
        raise ConfigError(
            f"Inception weights {path} do not match the FID InceptionV3 layout: "
            f"{'; '.join(problems)}. {_how_to_get()}"
        )
