"""Read NVIDIA's official EG3D network pickles (``ffhq512-128.pkl`` …) without running their code.

EG3D's training loop pickles ``dict(training_set_kwargs, G, D, G_ema, augment_pipe)``. Its
``torch_utils/persistence.py`` reduces every network class to
``torch_utils.persistence._reconstruct_persistent_obj(meta)``, where ``meta['module_src']`` is the
source text of the module that defined the class, and upstream ``exec``s that text on load. Loading
such a file with plain ``pickle`` therefore runs whatever code the file carries.

Here a restricted unpickler resolves only the handful of globals the official files use, each to an
inert stand-in or to a function that merely builds a tensor or a number; every other global is
refused. The embedded source is never read, and nothing is imported on the pickle's behalf. The
result is an :class:`OfficialNetwork`: class name, constructor arguments, attributes and tensors,
which a clean-room generator can consume.

Format notes: the "Checkpoint pickle format" section of the project's EG3D notes.
"""

from __future__ import annotations

import collections
import io
import keyword
import logging
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
import torch
import torch._utils
from torch.storage import TypedStorage

from distill3d.models.errors import CheckpointError

logger = logging.getLogger(__name__)

# Upstream's persistence module writes version 6; other versions may still load, so they only warn.
_KNOWN_PERSISTENCE_VERSION = 6

# nn.Module bookkeeping in a pickled __dict__; none of it is a model attribute.
_MODULE_INTERNALS = frozenset(
    {
        "training",
        "_parameters",
        "_buffers",
        "_non_persistent_buffers_set",
        "_modules",
        "_init_args",
        "_init_kwargs",
        "_compiled_call_impl",
    }
)


@dataclass
class OfficialNetwork:
    """One network (normally ``G_ema``) read from an official EG3D pickle, as plain data."""

    class_name: str  # upstream class, e.g. "TriPlaneGenerator" (from the persistence meta)
    init_args: tuple  # positional constructor arguments upstream recorded (usually empty)
    init_kwargs: dict[str, Any]  # constructor keyword arguments, plain python
    attributes: dict[str, Any]  # the object's own plain attributes, e.g. rendering_kwargs
    state_dict: dict[str, torch.Tensor] = field(repr=False)  # as nn.Module.state_dict() names them
    extra_tensors: dict[str, torch.Tensor] = field(repr=False)  # plain tensor attributes by path


# --- Stand-ins for the objects a checkpoint contains --------------------------------------------


@dataclass
class PersistentObject:
    """What ``_reconstruct_persistent_obj(meta)`` yields here: the recorded state, no class."""

    class_name: str
    version: int
    state: dict[str, Any]


class PlainObject:
    """Base of the stand-ins for upstream's non-persistent classes (pickled as NEWOBJ + BUILD).

    Upstream would instantiate the real class; here the object only keeps the ``__dict__`` that
    BUILD delivers, so a module tree can be walked without any upstream code.
    """

    class_name: ClassVar[str] = ""  # the upstream global, "module.Class"
    state: dict[str, Any]

    def __new__(cls, *args: object, **kwargs: object) -> PlainObject:
        # Upstream classes are re-created with no constructor arguments; anything else is not EG3D.
        if args or kwargs:
            raise CheckpointError(f"{cls.class_name} is created without arguments in EG3D files")
        obj = super().__new__(cls)
        obj.state = {}
        return obj

    def __setstate__(self, state: object) -> None:
        self.state = _attribute_dict(state, self.class_name)


def _plain_stand_in(qualified_name: str) -> type[PlainObject]:
    """A distinct stand-in class per upstream class, so its name survives into error messages."""
    short_name = qualified_name.rsplit(".", 1)[1]
    return type(short_name, (PlainObject,), {"class_name": qualified_name, "__module__": __name__})


# Non-persistent classes that appear in official pickles (G_ema's renderer, decoder and helpers).
_PLAIN_CLASSES = {
    name: _plain_stand_in(name)
    for name in (
        "training.triplane.OSGDecoder",
        "training.volumetric_rendering.renderer.ImportanceRenderer",
        "training.volumetric_rendering.ray_marcher.MipRayMarcher2",
        "training.volumetric_rendering.ray_sampler.RaySampler",
        "torch.nn.modules.container.Sequential",
        "torch.nn.modules.activation.Softplus",
    )
}


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``, a dict with attribute access; read back as a dict."""

    def __setstate__(self, state: object) -> None:
        # EasyDict keeps everything in its items, so a real one never carries instance state.
        if state:
            raise CheckpointError("a dnnlib.util.EasyDict with instance attributes is not EG3D's")


# numpy dtypes an EG3D attribute can hold (np.float64 gains, numpy ints/bools); no objects/records.
_NUMPY_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})


class NumpyDtype:
    """Stand-in for ``numpy.dtype(name, align, copy)`` + BUILD, limited to plain numbers.

    Not the real ``np.dtype``: its ``__setstate__`` would happily build structured or object dtypes.
    """

    __slots__ = ("byteorder", "name")

    def __init__(self, name: object, align: object = False, copy: object = True) -> None:
        # `copy` only matters to numpy (it keeps BUILD off the shared dtype singletons).
        if not isinstance(name, str) or name not in _NUMPY_DTYPES:
            raise CheckpointError(
                f"numpy dtype {name!r} is refused: only plain numbers and bools occur in EG3D files"
            )
        if align:
            raise CheckpointError("aligned (structured) numpy dtypes are refused")
        self.name = name
        self.byteorder = "="

    def __setstate__(self, state: object) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)):
            raise CheckpointError(f"unexpected numpy dtype state {state!r}")
        if state[1] not in ("<", ">", "|", "=") or any(part is not None for part in state[2:5]):
            raise CheckpointError(f"numpy dtype state {state!r} is not a plain number type")
        if len(state) == 9 and state[8]:
            raise CheckpointError("numpy dtypes with metadata are refused")
        self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:
        """The real dtype, with the byte order the file recorded."""
        dtype = np.dtype(self.name)
        return dtype.newbyteorder(self.byteorder) if self.byteorder in ("<", ">") else dtype


# --- Functions the pickle may call -----------------------------------------------------------------


def _reconstruct_persistent(meta: object) -> PersistentObject:
    """Replace upstream's ``_reconstruct_persistent_obj``: keep the state, never touch the source."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"persistent-object meta must be a dict, got {type(meta).__name__}")
    if meta.get("type") != "class":
        raise CheckpointError(
            f"persistent object of type {meta.get('type')!r}; EG3D files only hold type 'class'"
        )
    version = meta.get("version")
    if type(version) is not int:
        raise CheckpointError(f"persistent-object version must be an int, got {version!r}")
    class_name = meta.get("class_name")
    if (
        not isinstance(class_name, str)
        or not class_name.isidentifier()
        or keyword.iskeyword(class_name)
    ):
        raise CheckpointError(f"persistent-object class_name must be an identifier: {class_name!r}")
    if version != _KNOWN_PERSISTENCE_VERSION:
        logger.warning(
            "%s was written by persistence version %d, this loader knows version %d",
            class_name,
            version,
            _KNOWN_PERSISTENCE_VERSION,
        )
    # meta["module_src"] is deliberately left unread: running it is exactly what we refuse to do.
    return PersistentObject(class_name, version, _attribute_dict(meta.get("state"), class_name))


def _load_storage(blob: object) -> TypedStorage:
    """Replace ``torch.storage._load_from_bytes``, which calls ``torch.load(weights_only=False)``.

    The blob is a legacy-format ``torch.save`` of one storage. ``weights_only=True`` parses it with
    torch's own restricted unpickler; ``map_location="cpu"`` lets storages saved from ``cuda:0``
    (EG3D leaves ``renderer.plane_axes`` on the GPU) load on machines without one.
    """
    if not isinstance(blob, bytes):
        raise CheckpointError(f"tensor storage must be bytes, got {type(blob).__name__}")
    try:
        storage = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises many types for a damaged blob; all mean the same here
        raise CheckpointError(f"a tensor storage could not be read ({exc})") from exc
    if not isinstance(storage, TypedStorage):
        raise CheckpointError(f"a tensor storage blob holds a {type(storage).__name__}")
    return storage


def _rebuild_tensor(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    metadata: object = None,
) -> torch.Tensor:
    """Replace ``torch._utils._rebuild_tensor_v2`` after checking what it does not.

    The real function views the storage without checking bounds, so a crafted size or stride would
    read memory outside it; the view is checked against the storage first.
    """
    if type(storage) is not TypedStorage:
        raise CheckpointError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
    shape = _int_tuple(size, "size")
    strides = _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise CheckpointError(f"tensor size {shape} and stride {strides} differ in length")
    if type(storage_offset) is not int or storage_offset < 0:
        raise CheckpointError(f"tensor storage offset must be an int >= 0, got {storage_offset!r}")
    _check_flag_and_hooks(requires_grad, backward_hooks)
    if metadata:
        raise CheckpointError("tensors with extra metadata (conjugate/negative bits) are refused")
    extent = storage_offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + 1
    if 0 not in shape and extent > storage.size():
        raise CheckpointError(
            f"tensor of size {shape}, stride {strides}, offset {storage_offset} needs {extent} "
            f"elements but its storage has {storage.size()}"
        )
    return torch._utils._rebuild_tensor_v2(
        storage, storage_offset, shape, strides, False, collections.OrderedDict()
    )


def _rebuild_parameter(data: object, requires_grad: object, backward_hooks: object) -> torch.Tensor:
    """Replace ``torch._utils._rebuild_parameter``; returns the plain tensor (no autograd needed)."""
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"a parameter's data is a {type(data).__name__}, not a tensor")
    _check_flag_and_hooks(requires_grad, backward_hooks)
    return data


def _rebuild_parameter_with_state(
    data: object, requires_grad: object, backward_hooks: object, state: object
) -> torch.Tensor:
    """Replace ``torch._utils._rebuild_parameter_with_state`` without its ``setattr`` loop.

    The state holds python attributes set on a Parameter; they carry no weights, so they are
    checked for shape and dropped instead of being set on anything.
    """
    dict_state, slots_state = (
        state if isinstance(state, tuple) and len(state) == 2 else (state, None)
    )
    if not all(part is None or isinstance(part, dict) for part in (dict_state, slots_state)):
        raise CheckpointError(f"unexpected parameter state of type {type(state).__name__}")
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _numpy_scalar(dtype: object, data: object) -> np.generic:
    """Replace ``numpy.core.multiarray.scalar`` (numpy 1.x) / ``numpy._core…`` (numpy 2.x)."""
    if not isinstance(dtype, NumpyDtype):
        raise CheckpointError("a numpy scalar without a plain numeric dtype is refused")
    real_dtype = dtype.to_numpy()
    if not isinstance(data, bytes) or len(data) != real_dtype.itemsize:
        raise CheckpointError(f"numpy {real_dtype} scalar needs {real_dtype.itemsize} bytes")
    return np.frombuffer(data, real_dtype)[0]


def _int_tuple(value: object, what: str) -> tuple[int, ...]:
    """Sizes and strides: a tuple (torch.Size pickles as one) of non-negative ints."""
    if not isinstance(value, tuple) or not all(type(n) is int and n >= 0 for n in value):
        raise CheckpointError(f"tensor {what} must be a tuple of ints >= 0, got {value!r}")
    return value


def _check_flag_and_hooks(requires_grad: object, backward_hooks: object) -> None:
    """Hooks would be callables, which EG3D files never hold; requires_grad is a plain bool."""
    if not isinstance(requires_grad, bool):
        raise CheckpointError(f"requires_grad must be a bool, got {requires_grad!r}")
    if not isinstance(backward_hooks, dict) or backward_hooks:
        raise CheckpointError("tensors with backward hooks are refused")


def _attribute_dict(state: object, owner: str) -> dict[str, Any]:
    """An object's pickled ``__dict__``: a dict keyed by strings."""
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        raise CheckpointError(
            f"{owner}: expected its __dict__ as state, got {type(state).__name__}"
        )
    return dict(state)


# The complete allow-list: (module, name) as the pickle spells it -> what it resolves to here.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): NumpyDtype,
    ("dnnlib.util", "EasyDict"): EasyDict,
    **{(name.rsplit(".", 1)[0], stub.__name__): stub for name, stub in _PLAIN_CLASSES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`_ALLOWED_GLOBALS` and imports nothing."""

    def find_class(self, module: str, name: str) -> Any:
        """Look the global up in the allow-list; refuse everything else by name."""
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refusing global {module}.{name}: the file is not an EG3D checkpoint or "
                "contains code we refuse to run"
            ) from None


# --- Reading a file ------------------------------------------------------------------------------


def load_official_pickle(path: str | os.PathLike[str], key: str = "G_ema") -> OfficialNetwork:
    """Read network ``key`` of an official EG3D pickle without executing anything in it.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated or not a pickle; it uses a
            global outside the allow-list; it lacks ``key``; or ``key`` is not an EG3D network.
    """
    path = Path(path)
    snapshot = _unpickle(path)
    if not isinstance(snapshot, dict):
        raise CheckpointError(
            f"{path}: expected the dict EG3D's training loop writes (training_set_kwargs, G, D, "
            f"G_ema, augment_pipe), found a {type(snapshot).__name__}"
        )
    if key not in snapshot:
        present = ", ".join(repr(name) for name in snapshot) or "none"
        raise CheckpointError(f"{path} has no {key!r} network; keys present: {present}")
    network = snapshot[key]
    if not isinstance(network, PersistentObject):
        raise CheckpointError(
            f"{path}: {key!r} is {_describe(network)}, expected a persistent EG3D network"
        )
    try:
        result = _network_from(network, key)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except RecursionError as exc:  # only a crafted file nests containers this deeply
        raise CheckpointError(f"{path}: {key!r} is nested too deeply to be EG3D's") from exc
    logger.info(
        "read %s %r from %s: %d tensors", result.class_name, key, path, len(result.state_dict)
    )
    return result


def _unpickle(path: Path) -> object:
    """Unpickle with the allow-list; turn every failure into a CheckpointError naming the file."""
    try:
        with path.open("rb") as file:
            return _load_quietly(file)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except FileNotFoundError as exc:
        raise CheckpointError(f"no such checkpoint file: {path}") from exc
    except IsADirectoryError as exc:
        raise CheckpointError(f"{path} is a directory, expected an EG3D .pkl file") from exc
    except OSError as exc:
        raise CheckpointError(f"could not read {path}: {exc}") from exc
    except EOFError as exc:
        raise CheckpointError(
            f"{path} ends too early: empty or truncated (an interrupted download?)"
        ) from exc
    except Exception as exc:  # a damaged pickle can raise almost any built-in exception
        raise CheckpointError(
            f"{path} is not a readable EG3D checkpoint (corrupt or not a pickle): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _load_quietly(file: BinaryIO) -> object:
    """Run the restricted unpickler, muting torch's TypedStorage deprecation notice."""
    with warnings.catch_warnings():
        # The legacy storage format is made of TypedStorages; the notice is about torch's API.
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        return RestrictedUnpickler(file).load()


# --- Turning the stand-ins into plain data -------------------------------------------------------


class _NotPlainError(Exception):
    """A value holds something other than numbers, strings and containers."""


def _to_plain(value: Any) -> Any:
    """EasyDict/OrderedDict -> dict, numpy scalars -> python numbers, containers recursively."""
    if isinstance(value, np.generic):  # before float: np.float64 subclasses it
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, dict):
        return {_to_plain(key): _to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_to_plain(item) for item in value)
    raise _NotPlainError(type(value).__name__)


def _network_from(root: PersistentObject, key: str) -> OfficialNetwork:
    """Split the root's state into constructor arguments, attributes and tensors."""
    state = root.state
    try:
        init_args = _to_plain(state.get("_init_args", ()))
        init_kwargs = _to_plain(state.get("_init_kwargs", {}))
    except _NotPlainError as exc:
        raise CheckpointError(f"{key} records a constructor argument of type {exc}") from exc
    if not isinstance(init_args, tuple) or not isinstance(init_kwargs, dict):
        raise CheckpointError(f"{key} has malformed _init_args/_init_kwargs")
    tensors = _TensorCollector()
    tensors.walk(root, prefix="", path=key)
    return OfficialNetwork(
        class_name=root.class_name,
        init_args=init_args,
        init_kwargs=init_kwargs,
        attributes=_plain_attributes(state),
        state_dict=tensors.state_dict,
        extra_tensors=tensors.extra_tensors,
    )


def _plain_attributes(state: Mapping[str, Any]) -> dict[str, Any]:
    """The object's own attributes, without nn.Module bookkeeping, tensors or submodules."""
    attributes = {}
    for name, value in state.items():
        if name in _MODULE_INTERNALS or "hook" in name:
            continue
        try:
            attributes[name] = _to_plain(value)
        except _NotPlainError:
            logger.debug("attribute %s holds a %s; not a plain attribute", name, type(value))
    return attributes


@dataclass
class _TensorCollector:
    """Walks pickled nn.Module states the way ``nn.Module.state_dict()`` walks modules."""

    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    _ancestors: set[int] = field(default_factory=set)

    def walk(self, module: PersistentObject | PlainObject, prefix: str, path: str) -> None:
        """Parameters, then persistent buffers, then children: state_dict()'s order."""
        state = module.state
        parameters = _named_entries(state, "_parameters", path)
        buffers = _named_entries(state, "_buffers", path)
        children = _named_entries(state, "_modules", path)
        transient = state.get("_non_persistent_buffers_set", set())
        if not isinstance(transient, (set, frozenset)):
            raise CheckpointError(f"{path}._non_persistent_buffers_set is not a set")

        for name, tensor in parameters.items():
            self._add(self.state_dict, prefix + name, tensor, path)
        for name, tensor in buffers.items():
            if name not in transient:
                self._add(self.state_dict, prefix + name, tensor, path)
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                self._add(self.extra_tensors, prefix + name, value, path)

        self._ancestors.add(id(module))
        for name, child in children.items():
            if child is None:
                continue
            if not isinstance(child, (PersistentObject, PlainObject)):
                raise CheckpointError(f"{path}.{name} is {_describe(child)}, not a network module")
            if id(child) in self._ancestors:
                raise CheckpointError(f"{path}.{name} contains itself")
            self.walk(child, prefix=f"{prefix}{name}.", path=f"{path}.{name}")
        self._ancestors.discard(id(module))

    @staticmethod
    def _add(into: dict[str, torch.Tensor], name: str, tensor: object, path: str) -> None:
        if tensor is None:  # nn.Module allows None parameters/buffers; state_dict() skips them
            return
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: {name} is {_describe(tensor)}, expected a tensor")
        into[name] = tensor.detach()


def _named_entries(state: Mapping[str, Any], attribute: str, path: str) -> dict[str, Any]:
    """``_parameters`` / ``_buffers`` / ``_modules``: names must be usable in dotted paths."""
    entries = state.get(attribute)
    if not isinstance(entries, dict):
        raise CheckpointError(f"{path} has no {attribute} dict; it is not an nn.Module")
    for name in entries:
        if not isinstance(name, str) or not name or "." in name:
            raise CheckpointError(f"{path}.{attribute} has an invalid entry name {name!r}")
    return entries


def _describe(value: object) -> str:
    """Name a stand-in by its upstream class, anything else by its python type."""
    if isinstance(value, PersistentObject):
        return f"a persistent {value.class_name}"
    if isinstance(value, PlainObject):
        return f"a {value.class_name}"
    return f"a {type(value).__name__}"
