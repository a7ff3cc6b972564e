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
import pickletools
import sys
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

# Bounds on what a file may make the loader do. An official G_ema has ~300 modules nested 6 deep,
# init kwargs of a few dozen values and tensors of at most ~10 MB; the memo lets a tiny file refer
# to one object many times, so each bound counts what a naive walk would visit, not file bytes.
MAX_HASHED_NODES = 10_000_000  # tuple nodes hashed as dict keys / set members, whole file
MAX_PLAIN_VALUES = 100_000  # values in one recorded setting once shared references are expanded
MAX_NESTING = 32  # containers inside containers in one recorded setting
MAX_MODULES = 100_000  # modules in the walked network
MAX_MODULE_DEPTH = 32  # modules inside modules
MAX_STORAGE_BYTES = 1 << 30  # one tensor storage
MAX_TOTAL_STORAGE_BYTES = 8 << 30  # all tensor storages of one file (G, D and G_ema together)
_MAX_TEXT_LINE = 1 << 20  # a text-protocol opcode argument (module names, old INT/STRING)

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

    def __setstate__(self, state: object) -> None:
        # Upstream reduces these to a call with no state, so a BUILD could only swap the checked
        # state for an unchecked one.
        raise CheckpointError(f"persistent {self.class_name} is given extra state; EG3D's never is")


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
                f"numpy dtype {_short(name)} is refused: only plain numbers and bools occur in EG3D files"
            )
        if align:
            raise CheckpointError("aligned (structured) numpy dtypes are refused")
        self.name = name
        self.byteorder = "="

    def __setstate__(self, state: object) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)):
            raise CheckpointError(f"unexpected numpy dtype state {_short(state)}")
        if state[1] not in ("<", ">", "|", "=") or any(part is not None for part in state[2:5]):
            raise CheckpointError(f"numpy dtype state {_short(state)} is not a plain number type")
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
            f"persistent object of type {_short(meta.get('type'))}; EG3D files only hold type 'class'"
        )
    version = meta.get("version")
    if type(version) is not int:
        raise CheckpointError(f"persistent-object version must be an int, got {_short(version)}")
    class_name = meta.get("class_name")
    if (
        not isinstance(class_name, str)
        or not class_name.isidentifier()
        or keyword.iskeyword(class_name)
    ):
        raise CheckpointError(
            f"persistent-object class_name must be an identifier: {_short(class_name)}"
        )
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

    The blob is a legacy-format ``torch.save`` of one storage (five small pickles, then the raw
    bytes). It is parsed here rather than by ``torch.load``, because torch allocates the size a
    blob declares before reading any data, and would also inflate a zip archive's compressed
    records: here the declared size is checked against the bytes present and a cap first. The
    storage is always built on the CPU (EG3D leaves ``renderer.plane_axes`` on ``cuda:0``).
    """
    if not isinstance(blob, bytes):
        raise CheckpointError(f"tensor storage must be bytes, got {type(blob).__name__}")
    if blob.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            "a tensor storage is a zip archive (whose records may be compressed); EG3D writes "
            "storages in torch's legacy format, so the file is not an official checkpoint"
        )
    header = _LegacyStorageHeader.read(io.BytesIO(blob))
    data = memoryview(blob)[header.data_start :]
    if header.nbytes == 0:
        raw = torch.empty(0, dtype=torch.uint8)
    else:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return TypedStorage(wrap_storage=raw.untyped_storage(), dtype=header.dtype, _internal=True)


# Storage classes a legacy blob names (``torch.FloatStorage``, ``torch.cuda.HalfStorage`` …).
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION


@dataclass(frozen=True)
class _StorageClass:
    """What a storage-class global resolves to inside a blob: just its dtype."""

    dtype: torch.dtype


class _BlobUnpickler(pickle.Unpickler):
    """Reads the small pickles at the head of a legacy storage blob; knows only storage classes."""

    storage_id: object = None

    def find_class(self, module: str, name: str) -> Any:
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageClass(_STORAGE_DTYPES[name])
        raise CheckpointError(f"a tensor storage names {module}.{name}; only storage types may")

    def persistent_load(self, pid: object) -> object:
        if self.storage_id is not None:
            raise CheckpointError("a tensor storage blob holds more than one storage")
        self.storage_id = pid
        return _BlobUnpickler


@dataclass(frozen=True)
class _LegacyStorageHeader:
    """The checked head of a legacy storage blob: dtype, element count, where the bytes start."""

    dtype: torch.dtype
    numel: int
    data_start: int

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @classmethod
    def read(cls, file: io.BytesIO) -> _LegacyStorageHeader:
        """Magic, protocol, sys_info, the storage's persistent id and its key list, then a size."""
        if _blob_pickle(file) != _LEGACY_MAGIC or _blob_pickle(file) != _LEGACY_PROTOCOL:
            raise CheckpointError("a tensor storage is not in torch's legacy format")
        sys_info = _blob_pickle(file)
        little = sys.byteorder == "little"
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not little:
            raise CheckpointError("a tensor storage was written with another byte order")
        unpickler = _blob_unpickler(file)
        if unpickler.load() is not _BlobUnpickler:
            raise CheckpointError("a tensor storage blob holds something besides one storage")
        kind, storage_class, key, location, numel, view = _storage_id(unpickler.storage_id)
        del kind, location  # location is ignored: every storage is built on the CPU
        if view is not None:
            raise CheckpointError("tensor storage views (torch < 1.0 files) are refused")
        if _blob_pickle(file) != [key]:
            raise CheckpointError("a tensor storage's key list does not match its storage")
        header = cls(storage_class.dtype, numel, file.tell() + 8)
        present = len(file.getbuffer()) - header.data_start
        if present != header.nbytes:
            raise CheckpointError(
                f"a tensor storage declares {numel} elements ({header.nbytes} bytes) but holds "
                f"{max(present, 0)} bytes of data: the file is damaged or crafted"
            )
        if int.from_bytes(file.read(8), "little", signed=True) != numel:
            raise CheckpointError(f"a tensor storage declares {numel} elements twice, differently")
        if header.nbytes > MAX_STORAGE_BYTES:
            raise CheckpointError(
                f"a tensor storage declares {numel} elements ({header.nbytes} bytes), over the "
                f"limit of {MAX_STORAGE_BYTES} bytes per storage"
            )
        return header


def _storage_id(pid: object) -> tuple[str, _StorageClass, str, str, int, object]:
    """``('storage', class, key, location, numel, view_metadata)``, each part checked."""
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
        raise CheckpointError(f"a tensor storage has a malformed persistent id {_short(pid)}")
    _, storage_class, key, location, numel, _ = pid
    if not isinstance(storage_class, _StorageClass) or not isinstance(key, str):
        raise CheckpointError("a tensor storage's persistent id lacks its class or key")
    if not isinstance(location, str) or type(numel) is not int or numel < 0:
        raise CheckpointError(
            f"a tensor storage has location {_short(location)}, size {_short(numel)}"
        )
    return pid  # type: ignore[return-value]


def _blob_unpickler(file: io.BytesIO) -> _BlobUnpickler:
    """An unpickler for the next pickle in ``file``, after the scan has bounded its work."""
    start = file.tell()
    _scan_pickle(file, len(file.getbuffer()))
    file.seek(start)
    return _BlobUnpickler(file)


def _blob_pickle(file: io.BytesIO) -> object:
    return _blob_unpickler(file).load()


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
        raise CheckpointError(
            f"tensor storage offset must be an int >= 0, got {_short(storage_offset)}"
        )
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
        raise CheckpointError(f"tensor {what} must be a tuple of ints >= 0, got {_short(value)}")
    return value


def _check_flag_and_hooks(requires_grad: object, backward_hooks: object) -> None:
    """Hooks would be callables, which EG3D files never hold; requires_grad is a plain bool."""
    if not isinstance(requires_grad, bool):
        raise CheckpointError(f"requires_grad must be a bool, got {_short(requires_grad)}")
    if not isinstance(backward_hooks, dict) or backward_hooks:
        raise CheckpointError("tensors with backward hooks are refused")


def _attribute_dict(state: object, owner: str) -> dict[str, Any]:
    """An object's pickled ``__dict__``: a dict keyed by strings."""
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        raise CheckpointError(
            f"{owner}: expected its __dict__ as state, got {type(state).__name__}"
        )
    return dict(state)


def _empty_ordered_dict(*args: object, **kwargs: object) -> collections.OrderedDict:
    """``OrderedDict()`` as pickles create it (items follow via SETITEMS, where they are counted).

    Built from arguments it would hash keys the pre-scan does not see being hashed.
    """
    if args or kwargs:
        raise CheckpointError(
            "an OrderedDict built from arguments is refused; pickle never does so"
        )
    return collections.OrderedDict()


# The complete allow-list: (module, name) as the pickle spells it -> what it resolves to here.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
    ("collections", "OrderedDict"): _empty_ordered_dict,
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
    """An unpickler that resolves only :data:`_ALLOWED_GLOBALS` and imports nothing.

    It also counts the bytes of every tensor storage it reads against one cap for the file.
    """

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self._storage_bytes = 0

    def find_class(self, module: str, name: str) -> Any:
        """Look the global up in the allow-list; refuse everything else by name."""
        try:
            target = _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refusing global {module[:100]}.{name[:100]}: the file is not an EG3D "
                "checkpoint or contains code we refuse to run"
            ) from None
        return self._counted_storage if target is _load_storage else target

    def _counted_storage(self, blob: object) -> TypedStorage:
        storage = _load_storage(blob)
        self._storage_bytes += storage.nbytes()
        if self._storage_bytes > MAX_TOTAL_STORAGE_BYTES:
            raise CheckpointError(
                f"the file's tensor storages exceed {MAX_TOTAL_STORAGE_BYTES} bytes in all"
            )
        return storage


# --- Bounding the work of unpickling -------------------------------------------------------------


class _BoundedReader:
    """A file view that never reads past ``size``, so a declared length cannot force a big read.

    ``exhausted`` tells a length that ran past the end (a truncated file) from a corrupt one.
    """

    def __init__(self, file: BinaryIO, size: int) -> None:
        self._file = file
        self._size = size
        self.exhausted = False

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._size - self._file.tell())
        if n < 0 or n > left:
            self.exhausted = n > left or n < 0
            n = left
        return self._file.read(n)

    def readline(self) -> bytes:
        line = self._file.readline(_MAX_TEXT_LINE)
        self.exhausted = not line.endswith(b"\n")
        return line

    def tell(self) -> int:
        return self._file.tell()


_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_TUPLES = frozenset({"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"})
_SAME_OBJECT = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})


def _scan_pickle(file: BinaryIO, size: int) -> None:
    """Follow one pickle's stack without building anything, to bound the hashing it causes.

    Loading hashes every dict key and set member, and hashing a tuple visits all its nodes; with
    the memo a few bytes can name a tuple of 2**64 nodes, whose hash would never finish inside
    the C unpickler. Each stack entry here is the node count of the value it stands for (tuples
    add up their items, everything else counts 1: other containers are unhashable, other objects
    hash in constant time), and the counts of hashed values are summed against a cap.
    """
    reader = _BoundedReader(file, size)
    scan = _StackScan()
    try:
        for opcode, arg, _ in pickletools.genops(reader):  # type: ignore[arg-type]
            if scan.step(opcode, arg):
                return
    except ValueError as exc:
        if reader.exhausted:
            raise EOFError(str(exc)) from exc
        raise


@dataclass
class _StackScan:
    """The unpickler's stack, marks and memo, holding node counts instead of objects."""

    stack: list[int] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)
    memo: dict[int, int] = field(default_factory=dict)
    hashed: int = 0

    def step(self, opcode: pickletools.OpcodeInfo, arg: Any) -> bool:
        """Apply one opcode; True at STOP. Stack errors are ValueErrors, like a corrupt file's."""
        name = opcode.name
        if name == "MARK":
            self.marks.append(len(self.stack))
            return False
        if name == "POP" and self.marks and self.marks[-1] == len(self.stack):
            self.marks.pop()  # POP right after MARK discards the mark
            return False
        if name in _PUTS:  # PUT leaves the stack as it is
            if len(self.stack) <= (self.marks[-1] if self.marks else 0):
                raise ValueError(f"{name} finds nothing to memoize")
            self.memo[arg] = self.stack[-1]
            return False
        before, marked = self._pop(opcode)
        self.hashed += _hashed_nodes(name, before, marked)
        if self.hashed > MAX_HASHED_NODES:
            raise CheckpointError(
                f"dict keys or set members expand to more than {MAX_HASHED_NODES} values "
                "through shared references; hashing them would not finish (EG3D keys by name)"
            )
        if name == "STOP":
            return True
        self.stack.extend(self._pushed(name, arg, len(opcode.stack_after), before, marked))
        return False

    def _pop(self, opcode: pickletools.OpcodeInfo) -> tuple[list[int], list[int]]:
        """The entries an opcode consumes: those below its MARK (if any) and those above it."""
        wanted = opcode.stack_before
        marked: list[int] = []
        top = len(self.stack)
        if pickletools.markobject in wanted:
            if not self.marks:
                raise ValueError(f"{opcode.name} finds no MARK on the stack")
            top = self.marks.pop()
            marked = self.stack[top:]
            count = wanted.index(pickletools.markobject)
        else:
            count = len(wanted)
        floor = self.marks[-1] if self.marks else 0
        if top - count < floor:
            raise ValueError(f"{opcode.name} finds too few values on the stack")
        before = self.stack[top - count : top]
        del self.stack[top - count :]
        return before, marked

    def _pushed(
        self, name: str, arg: Any, count: int, before: list[int], marked: list[int]
    ) -> list[int]:
        """The entries an opcode leaves on the stack, with their node counts."""
        if name in _TUPLES:
            return [1 + sum(marked) + sum(before)]
        if name == "FROZENSET":
            return [1 + len(marked)]  # a frozenset caches its hash once computed
        if name in _GETS:
            if arg not in self.memo:
                raise ValueError(f"memo slot {arg} is read before it is written")
            return [self.memo[arg]]
        if name == "MEMOIZE":
            self.memo[len(self.memo)] = before[0]
            return before
        if name == "DUP":
            return before * 2
        if name in _SAME_OBJECT:
            return before[:1]
        return [1] * count


def _hashed_nodes(name: str, before: list[int], marked: list[int]) -> int:
    """Tuple nodes hashed by this opcode: dict keys, set members."""
    if name == "SETITEM":
        return before[1]
    if name in ("SETITEMS", "DICT"):
        return sum(marked[0::2])
    if name in ("ADDITEMS", "FROZENSET"):
        return sum(marked)
    return 0


def _short(value: object) -> str:
    """A bounded description of a value from the file, for error messages.

    ``repr`` of a memo-shared tuple is as exponential as its hash, and a huge int's is refused
    by python itself, so only short strings and numbers are shown as they are.
    """
    if isinstance(value, (str, bytes)):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**30 else f"an int of {value.bit_length()} bits"
    return f"a {type(value).__name__}"


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
        present = ", ".join(_short(name) for name in list(snapshot)[:12]) or "none"
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
    """Scan, then run the restricted unpickler, muting torch's TypedStorage deprecation notice."""
    _scan_pickle(file, os.fstat(file.fileno()).st_size)
    file.seek(0)
    with warnings.catch_warnings():
        # The legacy storage format is made of TypedStorages; the notice is about torch's API.
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        return RestrictedUnpickler(file).load()


# --- Turning the stand-ins into plain data -------------------------------------------------------


class _NotPlainError(Exception):
    """A value holds something other than numbers, strings and containers."""


class _TooLargeError(Exception):
    """A value nests or expands (through shared references) beyond the bounds."""


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _measure(value: Any, sizes: dict[int, int], active: set[int], depth: int = 0) -> int:
    """Nodes a tree copy of ``value`` would hold, visiting each distinct container once.

    ``sizes`` remembers containers already measured (by identity), so a memo-shared structure
    costs its distinct objects, while the count it returns is the expanded one, which caps.
    """
    if not isinstance(value, _CONTAINERS):
        return 1
    known = sizes.get(id(value))
    if known is not None:
        return known
    if depth >= MAX_NESTING:
        raise _TooLargeError(f"is nested more than {MAX_NESTING} levels deep")
    if id(value) in active:
        raise _TooLargeError("contains itself")
    active.add(id(value))
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    size = 1 + sum(_measure(item, sizes, active, depth + 1) for item in items)
    active.discard(id(value))
    if size > MAX_PLAIN_VALUES:
        raise _TooLargeError(
            f"expands to more than {MAX_PLAIN_VALUES} values (containers shared through the "
            "memo); EG3D records a few dozen"
        )
    sizes[id(value)] = size
    return size


def _to_plain(value: Any) -> Any:
    """EasyDict/OrderedDict -> dict, numpy scalars -> python numbers, containers recursively.

    Only for values :func:`_measure` has bounded: the copy is as large as its count.
    """
    if isinstance(value, np.generic):  # before float: np.float64 subclasses it
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, dict):
        return {_to_plain(key): _to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_to_plain(item) for item in value)
    raise _NotPlainError(type(value).__name__)


def _bounded_plain(value: Any, where: str) -> Any:
    """:func:`_to_plain` after checking nesting and expanded size; CheckpointError naming ``where``."""
    try:
        _measure(value, {}, set())
    except _TooLargeError as exc:
        raise CheckpointError(f"{where} {exc}") from None
    return _to_plain(value)


def _network_from(root: PersistentObject, key: str) -> OfficialNetwork:
    """Split the root's state into constructor arguments, attributes and tensors."""
    state = root.state
    try:
        init_args = _bounded_plain(state.get("_init_args", ()), f"{key}._init_args")
        init_kwargs = _bounded_plain(state.get("_init_kwargs", {}), f"{key}._init_kwargs")
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
        attributes=_plain_attributes(state, key),
        state_dict=tensors.state_dict,
        extra_tensors=tensors.extra_tensors,
    )


def _plain_attributes(state: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The object's own attributes, without nn.Module bookkeeping, tensors or submodules."""
    attributes = {}
    for name, value in state.items():
        if name in _MODULE_INTERNALS or "hook" in name:
            continue
        try:
            attributes[name] = _bounded_plain(value, f"{key}.{name}")
        except _NotPlainError:
            logger.debug("attribute %s holds a %s; not a plain attribute", name, type(value))
    return attributes


@dataclass
class _TensorCollector:
    """Walks pickled nn.Module states the way ``nn.Module.state_dict()`` walks modules.

    Each module is visited once: one reached a second time (a cycle, or a subtree shared by two
    parents, which the memo lets a small file repeat 2**depth times) is refused, as EG3D's
    networks share none; depth and module count are capped too.
    """

    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    _seen: dict[int, str] = field(default_factory=dict)  # id(module) -> where it was first met

    def walk(
        self, module: PersistentObject | PlainObject, prefix: str, path: str, depth: int = 0
    ) -> None:
        """Parameters, then persistent buffers, then children: state_dict()'s order."""
        self._visit(module, path, depth)
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

        for name, child in children.items():
            if child is None:
                continue
            if not isinstance(child, (PersistentObject, PlainObject)):
                raise CheckpointError(f"{path}.{name} is {_describe(child)}, not a network module")
            self.walk(child, prefix=f"{prefix}{name}.", path=f"{path}.{name}", depth=depth + 1)

    def _visit(self, module: PersistentObject | PlainObject, path: str, depth: int) -> None:
        first = self._seen.get(id(module))
        if first is not None:
            raise CheckpointError(
                f"{path} appears twice in the module tree (also at {first}); EG3D networks "
                "share no modules, so the file is not one"
            )
        if depth > MAX_MODULE_DEPTH:
            raise CheckpointError(f"{path} is nested more than {MAX_MODULE_DEPTH} modules deep")
        if len(self._seen) >= MAX_MODULES:
            raise CheckpointError(f"the network has more than {MAX_MODULES} modules")
        self._seen[id(module)] = path

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
            raise CheckpointError(f"{path}.{attribute} has an invalid entry name {_short(name)}")
    return entries


def _describe(value: object) -> str:
    """Name a stand-in by its upstream class, anything else by its python type."""
    if isinstance(value, PersistentObject):
        return f"a persistent {value.class_name}"
    if isinstance(value, PlainObject):
        return f"a {value.class_name}"
    return f"a {type(value).__name__}"
