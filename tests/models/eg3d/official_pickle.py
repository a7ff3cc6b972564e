"""Write pickles laid out like the network snapshots of NVIDIA's EG3D training loop.

No official checkpoint is available to the tests, so this writes the same structure:

- a top-level dict ``training_set_kwargs, G, D, G_ema, augment_pipe`` (``augment_pipe=None``);
- every persistent class reduced to the global ``torch_utils.persistence._reconstruct_persistent_obj``
  with one ``meta`` dict argument (``type='class'``, ``version=6``, ``module_src``, ``class_name``,
  ``state`` = the module's ``__dict__``, with ``_init_args``/``_init_kwargs`` added);
- the non-persistent classes (OSGDecoder, ImportanceRenderer, …) as ordinary globals: NEWOBJ + BUILD;
- tensors through torch's own pickle reduction (``_rebuild_tensor_v2`` / ``_rebuild_parameter`` over
  ``torch.storage._load_from_bytes`` blobs); numpy scalars as ``numpy(._)core.multiarray.scalar``;
  ``EasyDict`` as ``dnnlib.util.EasyDict``.

Upstream names without upstream code: while ``pickle.dumps`` runs, throw-away modules named like
upstream's (``torch_utils.persistence``, ``dnnlib.util``, ``training.triplane``, …) sit in
``sys.modules`` holding stand-ins, so the ordinary pickler writes exactly those globals; afterwards
they are removed and anything they shadowed is put back. A network is given as an ``nn.Module`` plus
a map from module path to upstream class (:class:`UpstreamLayout`), so any module tree, the
project's own generator included, can be written in the official layout.
"""

from __future__ import annotations

import contextlib
import copy
import io
import pickle
import re
import struct
import sys
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

PERSISTENCE_VERSION = 6  # what upstream's torch_utils/persistence.py writes
DEFAULT_MODULE_SRC = '"""Stands in for the module source EG3D embeds in its pickles."""\n'
DEFAULT_TRAINING_SET_KWARGS = {
    "class_name": "training.dataset.ImageFolderDataset",
    "path": "datasets/ffhq-512.zip",
    "use_labels": True,
    "max_size": 70000,
    "xflip": True,
    "resolution": 512,
    "random_seed": 0,
}


class EasyDict(dict):
    """A dict that is pickled as ``dnnlib.util.EasyDict`` (upstream's ``_init_kwargs`` sub-dicts)."""


class Reduced:
    """Pickles as the call ``func(*args)``: puts any global (even a hostile one) into a test pickle."""

    def __init__(self, func: Callable[..., Any], args: tuple) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple]:
        return self.func, self.args

    def __deepcopy__(self, memo: dict[int, Any]) -> Reduced:
        # copy.deepcopy would otherwise rebuild the object by calling func, i.e. run the payload.
        return Reduced(self.func, copy.deepcopy(self.args, memo))


@dataclass
class UpstreamLayout:
    """How one ``nn.Module`` tree is pickled as an upstream EG3D network.

    ``class_names`` maps a module path ("" is the root, "decoder.net.0", …) to either a bare class
    name, pickled as a persistent class ("TriPlaneGenerator"), or a dotted global, pickled as an
    ordinary class ("training.triplane.OSGDecoder"). ``torch.nn`` modules need no entry: they pickle
    as themselves, as ``Sequential`` and ``Softplus`` do upstream.
    """

    module: nn.Module
    class_names: Mapping[str, str]
    init_args: Mapping[str, tuple] = field(default_factory=dict)  # persistent path -> _init_args
    init_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # -> _init_kwargs
    attributes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # path -> extra state
    storage_locations: Mapping[str, str] = field(default_factory=dict)  # tensor path -> "cuda:0"
    storage_module: str = (
        "torch"  # storage class module in relocated blobs ("torch.cuda" also seen)
    )


# --- Writing -------------------------------------------------------------------------------------


def write_official_pickle(
    path: str | Path,
    G_ema: UpstreamLayout,
    *,
    D: UpstreamLayout | None = None,
    training_set_kwargs: Mapping[str, Any] | None = None,
    module_src: str = DEFAULT_MODULE_SRC,
    numpy_scalar_module: str = "numpy._core.multiarray",
    protocol: int = 4,
) -> None:
    """Write the snapshot ``training_loop.py`` writes; G is a separate copy of G_ema, as upstream.

    ``numpy_scalar_module="numpy.core.multiarray"`` emulates a file written with numpy 1.x.
    """
    snapshot = {
        "training_set_kwargs": dict(training_set_kwargs or DEFAULT_TRAINING_SET_KWARGS),
        "G": _frozen_copy(G_ema),
        "D": _frozen_copy(D or tiny_discriminator_layout()),
        "G_ema": _frozen_copy(G_ema),
        "augment_pipe": None,
    }
    data = official_pickle_bytes(
        snapshot,
        module_src=module_src,
        numpy_scalar_module=numpy_scalar_module,
        protocol=protocol,
    )
    Path(path).write_bytes(data)


def official_pickle_bytes(
    snapshot: Mapping[str, Any],
    *,
    module_src: str = DEFAULT_MODULE_SRC,
    numpy_scalar_module: str = "numpy._core.multiarray",
    protocol: int = 4,
) -> bytes:
    """Pickle a top-level dict whose ``UpstreamLayout`` values become upstream-style networks.

    Other values are pickled as they are, except that ``EasyDict``s and numpy scalars get their
    upstream globals, so a test can build any variation of the official top level.
    """
    stand_ins = _StandIns(numpy_scalar_module)
    converter = _Converter(stand_ins, module_src)
    converted = {key: converter.top_level(key, value) for key, value in snapshot.items()}
    with stand_ins.registered():
        return pickle.dumps(converted, protocol=protocol)


def legacy_storage_blob(
    tensor: torch.Tensor, location: str = "cpu", storage_module: str = "torch"
) -> bytes:
    """The legacy ``torch.save`` blob of a tensor's storage, with its location rewritten.

    ``torch.storage._load_from_bytes`` reads these; an official file made on a GPU machine records
    ``cuda:0`` for tensors that stayed on the GPU.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        torch.save(tensor.storage(), buffer, _use_new_zipfile_serialization=False)
    blob = _replace_once(buffer.getvalue(), _binunicode("cpu"), _binunicode(location))
    if storage_module != "torch":
        old = re.search(rb"ctorch\n(\w+Storage)\n", blob)
        assert old is not None, "storage class global not found in the legacy blob"
        new = b"c" + storage_module.encode() + b"\n" + old.group(1) + b"\n"
        blob = _replace_once(blob, old.group(0), new)
    return blob


def _binunicode(text: str) -> bytes:
    """A protocol-2 BINUNICODE opcode, as torch's legacy format writes short strings."""
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _replace_once(blob: bytes, old: bytes, new: bytes) -> bytes:
    assert blob.count(old) == 1, f"expected exactly one {old!r} in the storage blob"
    return blob.replace(old, new)


def _frozen_copy(layout: UpstreamLayout) -> UpstreamLayout:
    """Upstream snapshots ``copy.deepcopy(module).eval().requires_grad_(False).cpu()``."""
    layout = copy.deepcopy(layout)
    layout.module.eval().requires_grad_(False)
    return layout


# --- Stand-ins for upstream globals ---------------------------------------------------------------


def _never_called(*args: object, **kwargs: object) -> None:
    raise AssertionError("a pickling stand-in was called; it only exists to be pickled by name")


def _stand_in_function(module: str, name: str) -> Callable[..., None]:
    func = types.FunctionType(_never_called.__code__, {}, name)
    func.__module__ = module
    func.__qualname__ = name
    return func


# Pickled by name as upstream's reconstruct function: ``Reduced(RECONSTRUCT_PERSISTENT_OBJ, (meta,))``
# in a snapshot given to official_pickle_bytes() writes a persistent object with any meta at all.
RECONSTRUCT_PERSISTENT_OBJ = _stand_in_function(
    "torch_utils.persistence", "_reconstruct_persistent_obj"
)
_UPSTREAM_EASYDICT = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})


class _StandIns:
    """The objects the pickler finds under upstream's module and class names."""

    def __init__(self, numpy_scalar_module: str) -> None:
        self.reconstruct = RECONSTRUCT_PERSISTENT_OBJ
        self.easydict = _UPSTREAM_EASYDICT
        real_scalar = np.float64(0).__reduce__()[0]
        if real_scalar.__module__ == numpy_scalar_module:
            self.scalar = real_scalar
        else:
            self.scalar = _stand_in_function(numpy_scalar_module, "scalar")
        self._plain: dict[str, type] = {}

    def plain_class(self, qualified_name: str) -> type:
        """A class that pickles as ``qualified_name``; torch.nn names resolve to the real class."""
        if qualified_name.startswith("torch."):
            module_name, name = qualified_name.rsplit(".", 1)
            cls = getattr(sys.modules[module_name], name)
            assert isinstance(cls, type) and issubclass(cls, nn.Module), qualified_name
            return cls
        if qualified_name not in self._plain:
            module_name, name = qualified_name.rsplit(".", 1)
            self._plain[qualified_name] = type(
                name, (), {"__module__": module_name, "__qualname__": name}
            )
        return self._plain[qualified_name]

    @contextlib.contextmanager
    def registered(self) -> Iterator[None]:
        """Put fake upstream modules into ``sys.modules`` for the duration of one dump."""
        fakes: dict[str, types.ModuleType] = {}
        for obj in (self.reconstruct, self.easydict, self.scalar, *self._plain.values()):
            real_module = sys.modules.get(obj.__module__)
            if getattr(real_module, obj.__qualname__, None) is obj:
                continue  # the real module already provides it (numpy's own scalar)
            module = fakes.setdefault(obj.__module__, types.ModuleType(obj.__module__))
            setattr(module, obj.__qualname__, obj)
        for name in list(fakes):  # the import system needs each parent package too
            parts = name.split(".")
            for depth in range(1, len(parts)):
                parent = ".".join(parts[:depth])
                if parent not in sys.modules and parent not in fakes:
                    fakes[parent] = types.ModuleType(parent)
                    fakes[parent].__path__ = []
        shadowed = {name: sys.modules.get(name) for name in fakes}
        sys.modules.update(fakes)
        try:
            yield
        finally:
            for name, previous in shadowed.items():
                if previous is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = previous


# --- Turning module trees into upstream-shaped objects --------------------------------------------


class _Converter:
    """Rebuilds values so that the ordinary pickler writes them the way upstream's files hold them."""

    def __init__(self, stand_ins: _StandIns, module_src: str) -> None:
        self.stand_ins = stand_ins
        self.module_src = module_src  # one string object, so the pickle memoizes it as upstream's
        self._memo: dict[int, tuple[Any, Any]] = {}  # id -> (original kept alive, converted)

    def top_level(self, key: str, value: Any) -> Any:
        if isinstance(value, UpstreamLayout):
            return self.module(value.module, value, "")
        return self.value(value, None, key)

    def module(self, module: nn.Module, layout: UpstreamLayout, path: str) -> Any:
        """A persistent class becomes ``_reconstruct_persistent_obj(meta)``; others NEWOBJ+BUILD."""
        if id(module) in self._memo:
            return self._memo[id(module)][1]
        class_name = layout.class_names.get(path)
        if class_name is None:
            if not type(module).__module__.startswith("torch.nn."):
                raise ValueError(f"no upstream class given for module {path!r} ({type(module)})")
            class_name = f"{type(module).__module__}.{type(module).__name__}"
        persistent = "." not in class_name
        state = dict(module.__dict__)
        state.update(layout.attributes.get(path, {}))
        if persistent:
            state["_init_args"] = layout.init_args.get(path, state.get("_init_args", ()))
            state["_init_kwargs"] = layout.init_kwargs.get(path, state.get("_init_kwargs", {}))
        state = self._state(state, layout, path)
        if persistent:
            meta = {
                "type": "class",
                "version": PERSISTENCE_VERSION,
                "module_src": self.module_src,
                "class_name": class_name,
                "state": state,
            }
            converted: Any = Reduced(self.stand_ins.reconstruct, (meta,))
        else:
            cls = self.stand_ins.plain_class(class_name)
            converted = cls.__new__(cls)
            converted.__dict__.update(state)
        self._memo[id(module)] = (module, converted)
        return converted

    def _state(self, state: dict[str, Any], layout: UpstreamLayout, path: str) -> dict[str, Any]:
        converted = {}
        for key, value in state.items():
            if key in ("_parameters", "_buffers"):
                converted[key] = {
                    name: self.value(tensor, layout, _join(path, name))
                    for name, tensor in value.items()
                }
            elif key == "_modules":
                converted[key] = {
                    name: None if child is None else self.module(child, layout, _join(path, name))
                    for name, child in value.items()
                }
            else:
                converted[key] = self.value(value, layout, _join(path, key))
        return converted

    def value(self, value: Any, layout: UpstreamLayout | None, path: str) -> Any:
        """Containers recursively; EasyDict and numpy scalars to their upstream globals."""
        if isinstance(value, torch.Tensor):
            location = layout.storage_locations.get(path) if layout else None
            if location is None:
                return value
            return _relocated(value, location, layout.storage_module if layout else "torch")
        if isinstance(value, np.generic):
            return Reduced(self.stand_ins.scalar, value.__reduce__()[1])
        if isinstance(value, nn.Module):
            raise ValueError(f"module at {path!r} outside _modules; upstream does not do that")
        if isinstance(value, EasyDict):
            result = self.stand_ins.easydict()
            result.update({k: self.value(v, layout, _join(path, k)) for k, v in value.items()})
            return result
        if isinstance(value, dict):
            items = {k: self.value(v, layout, _join(path, str(k))) for k, v in value.items()}
            return OrderedDict(items) if isinstance(value, OrderedDict) else items
        if isinstance(value, (list, tuple, set)):
            return type(value)(self.value(v, layout, path) for v in value)
        return value


def _relocated(tensor: torch.Tensor, location: str, storage_module: str) -> Reduced:
    """Torch's own tensor reduction, but with a storage blob that names ``location``."""
    storage = Reduced(
        torch.storage._load_from_bytes, (legacy_storage_blob(tensor, location, storage_module),)
    )
    rebuilt = Reduced(
        torch._utils._rebuild_tensor_v2,
        (
            storage,
            tensor.storage_offset(),
            tuple(tensor.size()),
            tensor.stride(),
            tensor.requires_grad,
            OrderedDict(),
        ),
    )
    if isinstance(tensor, nn.Parameter):
        return Reduced(
            torch._utils._rebuild_parameter, (rebuilt, tensor.requires_grad, OrderedDict())
        )
    return rebuilt


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# --- A tiny EG3D-like generator and discriminator -------------------------------------------------


def module_of(
    *,
    params: Mapping[str, torch.Tensor | None] | None = None,
    buffers: Mapping[str, torch.Tensor] | None = None,
    transient: Mapping[str, torch.Tensor] | None = None,
    children: Mapping[str, nn.Module | None] | None = None,
    **attributes: Any,
) -> nn.Module:
    """A bare ``nn.Module`` with the given parameters, (non-persistent) buffers, children, attrs."""
    module = nn.Module()
    for name, tensor in (params or {}).items():
        module.register_parameter(name, None if tensor is None else nn.Parameter(tensor))
    for name, tensor in (buffers or {}).items():
        module.register_buffer(name, tensor)
    for name, tensor in (transient or {}).items():
        module.register_buffer(name, tensor, persistent=False)
    for name, child in (children or {}).items():
        module.register_module(name, child)
    for name, value in attributes.items():
        setattr(module, name, value)  # a plain tensor stays a plain attribute, like plane_axes
    return module


class _TinyNets:
    """Seeded builders for StyleGAN2-style layers with upstream's names, at toy sizes."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator)

    def fc(self, in_features: int, out_features: int, *, bias: bool = True) -> nn.Module:
        return module_of(
            params={
                "weight": self.randn(out_features, in_features),
                "bias": self.randn(out_features) if bias else None,
            },
            in_features=in_features,
            out_features=out_features,
            activation="linear",
            lr_multiplier=1,
            weight_gain=np.float64(1 / np.sqrt(in_features)),
            bias_gain=1,
        )

    def filter(self) -> torch.Tensor:
        taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
        return torch.outer(taps, taps) / 64

    def layer(self, c_in: int, c_out: int, w_dim: int, resolution: int) -> nn.Module:
        """SynthesisLayer: modulated 3x3 conv with noise."""
        return module_of(
            params={
                "weight": self.randn(c_out, c_in, 3, 3),
                "noise_strength": torch.zeros([]),
                "bias": self.randn(c_out),
            },
            buffers={
                "resample_filter": self.filter(),
                "noise_const": self.randn(resolution, resolution),
            },
            children={"affine": self.fc(w_dim, c_in)},
            resolution=resolution,
            up=1,
            use_noise=True,
            activation="lrelu",
            conv_clamp=None,
            padding=1,
            act_gain=np.float64(np.sqrt(2)),
        )

    def torgb(self, c_in: int, c_out: int, w_dim: int) -> nn.Module:
        return module_of(
            params={"weight": self.randn(c_out, c_in, 1, 1), "bias": self.randn(c_out)},
            children={"affine": self.fc(w_dim, c_in)},
            conv_clamp=None,
            weight_gain=np.float64(1 / np.sqrt(c_in)),
        )


def tiny_triplane_layout(seed: int = 0) -> UpstreamLayout:
    """A toy TriPlaneGenerator with the upstream module names, classes and attribute kinds.

    Beyond upstream it holds a ``None`` parameter, a ``None`` child and a non-persistent buffer, so
    loaders must skip each as ``nn.Module.state_dict()`` does.
    """
    nets = _TinyNets(seed)
    w_dim, channels, planes = 8, 4, 6
    rendering_kwargs = {
        "image_resolution": 32,
        "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
        "c_gen_conditioning_zero": False,
        "c_scale": 1,
        "depth_resolution": 4,
        "depth_resolution_importance": 4,
        "ray_start": 2.25,
        "ray_end": 3.3,
        "box_warp": 1,
        "avg_camera_pivot": [0, 0, 0.2],
        "sr_antialias": True,
    }
    b4 = module_of(
        params={"const": nets.randn(channels, 4, 4)},
        buffers={"resample_filter": nets.filter()},
        transient={"scratch": nets.randn(2)},
        children={
            "conv1": nets.layer(channels, channels, w_dim, 4),
            "torgb": nets.torgb(channels, planes, w_dim),
        },
        resolution=4,
        architecture="skip",
    )
    b8 = module_of(
        buffers={"resample_filter": nets.filter()},
        children={
            "conv0": nets.layer(channels, channels, w_dim, 8),
            "conv1": nets.layer(channels, channels, w_dim, 8),
            "torgb": nets.torgb(channels, planes, w_dim),
            "skip": None,
        },
        resolution=8,
        architecture="skip",
    )
    mapping = module_of(
        buffers={"w_avg": nets.randn(w_dim)},
        children={
            "embed": nets.fc(25, w_dim),
            "fc0": nets.fc(2 * w_dim, w_dim),
            "fc1": nets.fc(w_dim, w_dim),
        },
        num_ws=4,
        w_avg_beta=0.998,
    )
    superresolution = module_of(
        children={
            "block0": module_of(
                buffers={"resample_filter": nets.filter()},
                children={
                    "conv0": nets.layer(planes // 3, channels, w_dim, 16),
                    "conv1": nets.layer(channels, channels, w_dim, 16),
                    "torgb": nets.torgb(channels, 3, w_dim),
                },
            )
        },
        input_resolution=8,
        sr_antialias=True,
    )
    decoder_net = nn.Sequential(nets.fc(planes // 3, 8), nn.Softplus(), nets.fc(8, 1 + 3))
    decoder_net[2].register_parameter("unused", None)
    root = module_of(
        buffers={"dataset_label_std": nets.randn(25).abs()},
        children={
            "renderer": module_of(
                children={"ray_marcher": module_of()},
                plane_axes=nets.randn(3, 3, 3),
            ),
            "ray_sampler": module_of(ray_origins_h=None, ray_directions=None, depths=None),
            "backbone": module_of(
                children={
                    "synthesis": module_of(children={"b4": b4, "b8": b8}, block_resolutions=[4, 8]),
                    "mapping": mapping,
                },
                z_dim=8,
                c_dim=25,
                w_dim=w_dim,
            ),
            "superresolution": superresolution,
            "decoder": module_of(children={"net": decoder_net}, hidden_dim=8),
        },
        z_dim=8,
        c_dim=25,
        w_dim=w_dim,
        img_resolution=32,
        img_channels=3,
        neural_rendering_resolution=16,
        rendering_kwargs=dict(rendering_kwargs),
        _last_planes=None,
    )
    class_names = {
        "": "TriPlaneGenerator",
        "renderer": "training.volumetric_rendering.renderer.ImportanceRenderer",
        "renderer.ray_marcher": "training.volumetric_rendering.ray_marcher.MipRayMarcher2",
        "ray_sampler": "training.volumetric_rendering.ray_sampler.RaySampler",
        "backbone": "Generator",
        "backbone.synthesis": "SynthesisNetwork",
        "backbone.mapping": "MappingNetwork",
        "superresolution": "SuperresolutionHybrid8XDC",
        "superresolution.block0": "SynthesisBlockNoUp",
        "decoder": "training.triplane.OSGDecoder",
        "decoder.net.0": "FullyConnectedLayer",
        "decoder.net.2": "FullyConnectedLayer",
    }
    for path, _ in root.named_modules(remove_duplicate=False):
        tail = path.rsplit(".", 1)[-1]
        if path in class_names or path.startswith("decoder.net"):
            continue
        if tail in ("b4", "b8"):
            class_names[path] = "SynthesisBlock"
        elif tail.startswith("conv"):
            class_names[path] = "SynthesisLayer"
        elif tail == "torgb":
            class_names[path] = "ToRGBLayer"
        else:
            class_names[path] = "FullyConnectedLayer"
    init_kwargs = {
        "": {
            "z_dim": 8,
            "w_dim": w_dim,
            "mapping_kwargs": EasyDict(num_layers=2),
            "channel_base": 32768,
            "channel_max": 512,
            "fused_modconv_default": "inference_only",
            "rendering_kwargs": EasyDict(rendering_kwargs),
            "num_fp16_res": 0,
            "sr_num_fp16_res": 4,
            "sr_kwargs": EasyDict(
                channel_base=32768, channel_max=512, fused_modconv_default="inference_only"
            ),
            "conv_clamp": None,
            "c_dim": 25,
            "img_resolution": 32,
            "img_channels": 3,
        }
    }
    return UpstreamLayout(root, class_names, init_kwargs=init_kwargs)


def tiny_discriminator_layout(seed: int = 1) -> UpstreamLayout:
    """A toy DualDiscriminator, so snapshots carry a D like the official ones."""
    nets = _TinyNets(seed)
    conv = module_of(
        params={"weight": nets.randn(4, 6, 3, 3), "bias": nets.randn(4)},
        buffers={"resample_filter": nets.filter()},
        weight_gain=np.float64(1 / np.sqrt(54)),
        act_gain=np.float64(np.sqrt(2)),
    )
    root = module_of(
        buffers={"resample_filter": nets.filter()},
        children={
            "b8": module_of(children={"conv0": conv}, resolution=8),
            "mapping": module_of(children={"embed": nets.fc(25, 8)}, num_ws=None),
            "b4": module_of(
                children={
                    "mbstd": module_of(group_size=4, num_channels=1),
                    "fc": nets.fc(64, 4),
                    "out": nets.fc(4, 8),
                }
            ),
        },
        c_dim=25,
        img_resolution=8,
    )
    class_names = {
        "": "DualDiscriminator",
        "b8": "DiscriminatorBlock",
        "b8.conv0": "Conv2dLayer",
        "mapping": "MappingNetwork",
        "mapping.embed": "FullyConnectedLayer",
        "b4": "DiscriminatorEpilogue",
        "b4.mbstd": "MinibatchStdLayer",
        "b4.fc": "FullyConnectedLayer",
        "b4.out": "FullyConnectedLayer",
    }
    return UpstreamLayout(root, class_names, init_kwargs={"": {"c_dim": 25, "img_resolution": 8}})
