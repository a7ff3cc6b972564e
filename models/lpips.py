"""LPIPS perceptual distance (Zhang et al. 2018, "vgg" network, version 0.1) in plain PyTorch.

The distillation loss compares the student's images with the teacher's in VGG16 feature space.
The reference implementation (the ``lpips`` pip package) imports torchvision and downloads weights
at run time; this module needs neither. It computes the same numbers from two files the user
already has or fetches once:

- torchvision's ImageNet VGG16 weights, ``vgg16-397923af.pth`` (keys ``features.N.weight``), and
- lpips' learnt linear layers, ``weights/v0.1/vgg.pth`` (keys ``linK.model.1.weight``),

or from one ``.safetensors`` file that :func:`save_lpips_weights` writes from a loaded model.
Everything is read with ``weights_only=True`` or safetensors, so loading never runs code.
"""

from __future__ import annotations

import importlib.util
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ConfigError

ENV_VAR = "DISTILL3D_LPIPS"
VGG16_FILENAME = "vgg16-397923af.pth"
LIN_FILENAMES = ("vgg.pth", "lpips_vgg.pth")
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"

# torchvision's VGG16 "D" configuration: conv widths, "M" = 2x2 max pool.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip
# Indices (in torchvision's ``features``) of relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3.
TAP_INDICES = (3, 8, 15, 22, 29)
TAP_CHANNELS = (64, 128, 256, 512, 512)

_LIN_KEY = re.compile(r"^(lin[0-4])\.model\.\d+\.weight$")  # lpips' name -> "linK.weight"


class VGG16Features(nn.Module):
    """The convolutional trunk of torchvision's VGG16, returning the five LPIPS taps.

    Layers are registered under their index in torchvision's ``vgg16().features`` (``0`` conv,
    ``1`` ReLU, ``4`` pool, ...), so the state dict keys are exactly torchvision's with the
    ``features.`` prefix stripped and the ImageNet weights load strictly. The final max pool
    (index 30) has no parameters and no LPIPS tap after it, so it is left out.
    """

    def __init__(self) -> None:
        super().__init__()
        in_channels = 3
        index = 0
        for item in _VGG16_CFG:
            if item == "M":
                self.add_module(str(index), nn.MaxPool2d(kernel_size=2, stride=2))
                index += 1
            else:
                out_channels = int(item)
                self.add_module(str(index), nn.Conv2d(in_channels, out_channels, 3, padding=1))
                # Not in-place (torchvision's is): the conv output must survive for autograd.
                self.add_module(str(index + 1), nn.ReLU(inplace=False))
                in_channels = out_channels
                index += 2

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run ``x`` (already shifted and scaled, [N, 3, H, W]) and return the five ReLU taps."""
        taps = []
        for index, layer in enumerate(self.children()):
            x = layer(x)
            if index in TAP_INDICES:
                taps.append(x)
        return taps


class LPIPS(nn.Module):
    """LPIPS "vgg" v0.1 distance between two image batches in [-1, 1]; frozen, input-differentiable.

    For every tap: unit-normalise the features over channels, take the squared difference, weight
    the channels with a non-negative 1x1 linear layer and average over space; then sum the taps.
    A fresh module has random VGG weights and all-ones linear weights (the unlearned "baseline"
    variant of the paper); use :func:`load_lpips` to get the real metric.
    """

    def __init__(self) -> None:
        super().__init__()
        # ImageNet statistics expressed for [-1, 1] inputs; constants, so not in the state dict.
        shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
        scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.net = VGG16Features()
        # lpips wraps each conv in Sequential(Dropout, Conv) ("linK.model.1.weight"); dropout is
        # a no-op in eval, so a bare 1x1 conv ("linK.weight") computes the same thing.
        for k, channels in enumerate(TAP_CHANNELS):
            lin = nn.Conv2d(channels, 1, kernel_size=1, bias=False)
            nn.init.ones_(lin.weight)
            self.add_module(f"lin{k}", lin)
        self.requires_grad_(False)
        self.eval()

    def lins(self) -> list[nn.Conv2d]:
        return [getattr(self, f"lin{k}") for k in range(len(TAP_CHANNELS))]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance per image: ``x`` and ``y`` are [N, 3, H, W] in [-1, 1]; returns [N]."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS needs two [N, 3, H, W] batches of the same shape, got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        n = x.shape[0]
        # One pass over both batches: half the kernel launches of two separate passes.
        both = (torch.cat([x, y]) - self.shift) / self.scale
        total = x.new_zeros(n)
        for tap, lin in zip(self.net(both), self.lins(), strict=True):
            diff = (_unit_normalize(tap[:n]) - _unit_normalize(tap[n:])) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


def _unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``f / (|f| + eps)`` over channels, as lpips does.

    ``vector_norm`` gives the same values as lpips' ``sqrt(sum(f**2))`` but a zero (not NaN)
    gradient where every channel is zero, which happens after ReLU.
    """
    norm = torch.linalg.vector_norm(features, dim=1, keepdim=True)
    return features / (norm + eps)


@dataclass(frozen=True)
class LPIPSWeightFiles:
    """Where LPIPS weights were found: one combined ``.safetensors`` file, or a VGG16 + lin pair."""

    combined: Path | None = None
    vgg: Path | None = None
    lin: Path | None = None

    def describe(self) -> str:
        if self.combined is not None:
            return str(self.combined)
        return f"{self.vgg} + {self.lin}"


def find_lpips_weights(path: str | os.PathLike[str] | None = None) -> LPIPSWeightFiles | None:
    """Locate LPIPS weights on disk without downloading anything; None when there are none.

    ``path`` (or else ``$DISTILL3D_LPIPS``) may be a ``.safetensors`` file or a folder with
    ``vgg16*.pth`` and ``vgg.pth``; an explicit location that holds no weights raises
    :class:`ConfigError` instead of falling back, so a typo is never silently ignored. Without
    either, torch's hub cache (``$TORCH_HOME/hub/checkpoints``) is searched. In folders, a
    missing ``vgg.pth`` is taken from an installed ``lpips`` package when there is one.
    """
    explicit = path if path is not None else os.environ.get(ENV_VAR) or None
    if explicit is not None:
        source = "path" if path is not None else f"${ENV_VAR}"
        where = Path(explicit).expanduser()
        found = _weights_at(where)
        if found is None:
            raise ConfigError(
                f"no LPIPS weights at {explicit} (given as {source}): {_why_not(where)}. Expected "
                "a .safetensors file written by save_lpips_weights, or a folder with torchvision's "
                f"{VGG16_FILENAME} and lpips' weights/v0.1/vgg.pth; fix the path, or train "
                "without the perceptual loss with --no-lpips"
            )
        return found
    return _weights_in_folder(_hub_checkpoints_dir())


def load_lpips(
    path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> LPIPS:
    """Build the LPIPS metric from local weights (see :func:`find_lpips_weights`), frozen, on
    ``device``; raises :class:`ConfigError` saying where it looked when there are none."""
    found = find_lpips_weights(path)
    if found is None:
        raise ConfigError(_not_found_message())
    model = LPIPS()
    if found.combined is not None:
        state = _read_safetensors(found.combined)
        _load_checked(model, state, found.combined)
    else:
        assert found.vgg is not None and found.lin is not None
        _load_checked(model.net, _vgg_state(found.vgg), found.vgg)
        _load_checked_lin(model, _lin_state(found.lin), found.lin)
    return model.to(device).eval()


def save_lpips_weights(model: LPIPS, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s weights as one ``.safetensors`` file that :func:`load_lpips` reads.

    The file is written under a temporary name and renamed, so a crash never leaves half a file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"LPIPS weights file {path} must end in .safetensors; rename it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    try:
        save_file(state, str(tmp), metadata={"format": "pt", "content": "distill3d lpips vgg v0.1"})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --- searching ---------------------------------------------------------------------------------


def _hub_checkpoints_dir() -> Path:
    """Where torch.hub caches downloads: honours $TORCH_HOME and $XDG_CACHE_HOME like torch."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _weights_at(path: Path) -> LPIPSWeightFiles | None:
    if path.is_file():
        return LPIPSWeightFiles(combined=path) if path.suffix == ".safetensors" else None
    if path.is_dir():
        return _weights_in_folder(path)
    return None


def _why_not(path: Path) -> str:
    if not path.exists():
        return "it does not exist"
    if path.is_file():
        return "it is a file but not .safetensors (for .pth files, give their folder)"
    missing = []
    if _find_vgg16(path) is None:
        missing.append(f"{VGG16_FILENAME} (or another vgg16*.pth)")
    if _find_lin(path) is None:
        missing.append(" / ".join(LIN_FILENAMES) + " (and no installed lpips package has one)")
    return f"the folder has no {' and no '.join(missing)}"


def _weights_in_folder(folder: Path) -> LPIPSWeightFiles | None:
    vgg = _find_vgg16(folder)
    lin = _find_lin(folder)
    if vgg is None or lin is None:
        return None
    return LPIPSWeightFiles(vgg=vgg, lin=lin)


def _find_vgg16(folder: Path) -> Path | None:
    """torchvision's file by its usual name, else any plain (not batch-norm) ``vgg16*.pth``."""
    if (folder / VGG16_FILENAME).is_file():
        return folder / VGG16_FILENAME
    if not folder.is_dir():
        return None
    candidates = sorted(
        p for p in folder.glob("vgg16*.pth") if p.is_file() and not p.name.startswith("vgg16_bn")
    )
    return candidates[0] if candidates else None


def _find_lin(folder: Path) -> Path | None:
    for name in LIN_FILENAMES:
        if (folder / name).is_file():
            return folder / name
    return _installed_lpips_lin()


def _installed_lpips_lin() -> Path | None:
    """``weights/v0.1/vgg.pth`` inside an installed lpips package, found without importing it
    (importing lpips imports torchvision)."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "weights" / "v0.1" / "vgg.pth"
        if candidate.is_file():
            return candidate
    return None


def _not_found_message() -> str:
    hub = _hub_checkpoints_dir()
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        package = "the lpips package (not installed)"
    else:
        where = Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / "vgg.pth"
        package = f"the installed lpips package ({where}: missing)"
    return (
        "LPIPS weights not found. Searched: "
        f"${ENV_VAR} (not set); "
        f"{hub / VGG16_FILENAME} (or another vgg16*.pth there) together with "
        f"{' or '.join(str(hub / n) for n in LIN_FILENAMES)}; {package}. "
        f"Provide torchvision's {VGG16_FILENAME} ({VGG16_URL}) and lpips' weights/v0.1/vgg.pth "
        f"({LIN_URL}): put both in one folder and pass it with --lpips PATH or {ENV_VAR}=PATH, "
        f"or copy them into {hub}. Or train without the perceptual loss with --no-lpips."
    )


# --- reading and checking ------------------------------------------------------------------------


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load`` restricted to tensors and plain containers; anything else is a ConfigError."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refusals, truncated files, not-a-zip, ...
        raise ConfigError(
            f"cannot read LPIPS weights file {path} as a tensors-only PyTorch state dict "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); replace it with "
            "the original download"
        ) from e
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ConfigError(
            f"LPIPS weights file {path} does not hold a state dict of tensors; replace it with "
            "the original download"
        )
    return dict(obj)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise ConfigError(
            f"cannot read LPIPS weights file {path} ({e}); write it again with save_lpips_weights"
        ) from e


def _vgg_state(path: Path) -> dict[str, torch.Tensor]:
    """torchvision's keys ``features.N.*`` with the prefix stripped; classifier keys dropped."""
    state = _torch_load(path)
    return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}


def _lin_state(path: Path) -> dict[str, torch.Tensor]:
    """lpips' keys ``linK.model.1.weight`` renamed to our ``linK.weight``; other keys are kept so
    they are reported as unexpected."""
    renamed = {}
    for key, value in _torch_load(path).items():
        match = _LIN_KEY.match(key)
        renamed[f"{match.group(1)}.weight" if match else key] = value
    return renamed


def _load_checked_lin(model: LPIPS, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("lin")}
    _check_keys_and_shapes(expected, state, path)
    _check_lin_non_negative(state, path)
    for k, lin in enumerate(model.lins()):
        lin.load_state_dict({"weight": state[f"lin{k}.weight"]}, strict=True)


def _load_checked(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    _check_keys_and_shapes(module.state_dict(), state, path)
    if isinstance(module, LPIPS):
        _check_lin_non_negative(state, path)
    module.load_state_dict(state, strict=True)


def _check_keys_and_shapes(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], path: Path
) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_head(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_head(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_head(wrong)}")
    if problems:
        raise ConfigError(
            f"LPIPS weights file {path} does not match the VGG16 LPIPS v0.1 layout: "
            f"{'; '.join(problems)}. Use torchvision's {VGG16_FILENAME}, lpips' "
            "weights/v0.1/vgg.pth, or a file written by save_lpips_weights"
        )


def _check_lin_non_negative(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """lpips keeps its linear weights >= 0; a negative one would let the distance go below 0."""
    negative = sorted(k for k in state if k.startswith("lin") and bool((state[k] < 0).any()))
    if negative:
        raise ConfigError(
            f"LPIPS weights file {path} has negative linear weights in {negative}; LPIPS needs "
            "non-negative ones. Use lpips' weights/v0.1/vgg.pth"
        )


def _head(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"
