"""The official-pickle loader: exact tensors, plain metadata, and refusal of anything that runs code.

Pickles are written by ``official_pickle.py`` in the layout of EG3D's training loop (no official
file is available here); its list of globals is checked against the one upstream writes.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from official_pickle import (
    RECONSTRUCT_PERSISTENT_OBJ,
    EasyDict,
    Reduced,
    UpstreamLayout,
    legacy_storage_blob,
    official_pickle_bytes,
    tiny_discriminator_layout,
    tiny_triplane_layout,
    write_official_pickle,
)

from distill3d.models.eg3d.official import RestrictedUnpickler, load_official_pickle
from distill3d.models.errors import CheckpointError

NUMPY_MODULES = ["numpy._core.multiarray", "numpy.core.multiarray"]  # numpy 2.x and 1.x names

# Every global in a pickle written by upstream's code (G, D, G_ema, augment_pipe), except that the
# numpy scalar module depends on the numpy version that wrote it.
UPSTREAM_GLOBALS = {
    "collections.OrderedDict",
    "dnnlib.util.EasyDict",
    "numpy.dtype",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_tensor_v2",
    "torch.nn.modules.activation.Softplus",
    "torch.nn.modules.container.Sequential",
    "torch.storage._load_from_bytes",
    "torch_utils.persistence._reconstruct_persistent_obj",
    "training.triplane.OSGDecoder",
    "training.volumetric_rendering.ray_marcher.MipRayMarcher2",
    "training.volumetric_rendering.ray_sampler.RaySampler",
    "training.volumetric_rendering.renderer.ImportanceRenderer",
}


def marker_source(marker: Path) -> str:
    """Module text that leaves ``marker`` behind if anything ever executes it."""
    return (
        '"""Stands in for EG3D\'s training/triplane.py."""\n'
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('module_src was executed')\n\n"
        "class TriPlaneGenerator:\n    pass\n"
    )


def probed_layout() -> UpstreamLayout:
    """The tiny generator plus awkward tensors (fp16, int64, 0-d, a strided view) and numpy values."""
    layout = tiny_triplane_layout()
    block = layout.module.backbone.synthesis.b4
    block.register_buffer("half_probe", torch.randn(5).half())
    block.register_buffer("long_probe", torch.arange(-3, 4))
    block.register_buffer("view_probe", torch.randn(4, 6).t()[1:])  # offset and strides
    layout.attributes = {
        "": {"np_probe": [np.float64(0.1), np.int64(7), np.bool_(True), np.float32(0.5)]}
    }
    return layout


def write(tmp_path: Path, layout: UpstreamLayout | None = None, **options: Any) -> Path:
    path = tmp_path / "network-snapshot.pkl"
    write_official_pickle(path, layout or probed_layout(), **options)
    return path


def recorded_globals(data: bytes) -> set[str]:
    """Every global the loader is asked to resolve while reading ``data``."""
    seen: set[str] = set()

    class Recorder(RestrictedUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            seen.add(f"{module}.{name}")
            return super().find_class(module, name)

    Recorder(io.BytesIO(data)).load()
    return seen


def minimal_network(**parameters: Any) -> Reduced:
    """A persistent network holding only ``parameters``, pickled like upstream's."""
    state = {"training": False, "_parameters": parameters, "_buffers": {}, "_modules": {}}
    meta = {"type": "class", "version": 6, "module_src": "", "class_name": "Net", "state": state}
    return Reduced(RECONSTRUCT_PERSISTENT_OBJ, (meta,))


def raw_tensor(blob: bytes, size: tuple[int, ...], stride: tuple[int, ...], hooks: Any) -> Reduced:
    """A tensor reduction with arbitrary arguments, as a hostile file could hold."""
    storage = Reduced(torch.storage._load_from_bytes, (blob,))
    return Reduced(torch._utils._rebuild_tensor_v2, (storage, 0, size, stride, False, hooks))


def assert_bit_exact(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    assert type(got) is torch.Tensor, name  # not a Parameter
    assert got.dtype == want.dtype and got.shape == want.shape, name
    assert got.device.type == "cpu" and not got.requires_grad, name
    assert got.numpy().tobytes() == want.detach().numpy().tobytes(), name


# --- Round trip -----------------------------------------------------------------------------------


@pytest.mark.parametrize("numpy_module", NUMPY_MODULES)
def test_every_tensor_round_trips_bit_exactly(tmp_path: Path, numpy_module: str) -> None:
    layout = probed_layout()
    net = load_official_pickle(write(tmp_path, layout, numpy_scalar_module=numpy_module))

    want = layout.module.state_dict()
    assert list(net.state_dict) == list(want)  # same names, same order as nn.Module.state_dict()
    for name, tensor in want.items():
        assert_bit_exact(net.state_dict[name], tensor, name)
    assert "backbone.synthesis.b4.scratch" not in net.state_dict  # non-persistent buffer
    assert "decoder.net.2.unused" not in net.state_dict  # None parameter
    assert "decoder.net.0.weight" in net.state_dict  # inside the OSGDecoder / Sequential stand-ins
    assert net.class_name == "TriPlaneGenerator"


def test_plain_tensor_attributes_come_back_by_path(tmp_path: Path) -> None:
    layout = probed_layout()
    net = load_official_pickle(write(tmp_path, layout))
    assert set(net.extra_tensors) == {"renderer.plane_axes"}
    assert_bit_exact(
        net.extra_tensors["renderer.plane_axes"],
        layout.module.renderer.plane_axes,
        "plane_axes",
    )


@pytest.mark.parametrize("storage_module", ["torch", "torch.cuda"])
def test_tensor_saved_on_cuda_loads_on_cpu(tmp_path: Path, storage_module: str) -> None:
    layout = probed_layout()
    layout.storage_locations = {"renderer.plane_axes": "cuda:0", "dataset_label_std": "cuda:0"}
    layout.storage_module = storage_module
    path = write(tmp_path, layout)
    assert b"cuda:0" in path.read_bytes()

    net = load_official_pickle(path)
    assert_bit_exact(
        net.extra_tensors["renderer.plane_axes"], layout.module.renderer.plane_axes, "plane_axes"
    )
    assert_bit_exact(
        net.state_dict["dataset_label_std"], layout.module.dataset_label_std, "label_std"
    )


def test_other_networks_load_by_key(tmp_path: Path) -> None:
    D = tiny_discriminator_layout()
    path = tmp_path / "snapshot.pkl"
    write_official_pickle(path, probed_layout(), D=D)
    net = load_official_pickle(path, key="D")
    assert net.class_name == "DualDiscriminator"
    assert net.init_kwargs == {"c_dim": 25, "img_resolution": 8}
    assert list(net.state_dict) == list(D.module.state_dict())


# --- Metadata as plain python ---------------------------------------------------------------------


def assert_plain(value: Any) -> None:
    """Only builtin types: no EasyDict stand-in, OrderedDict or numpy scalar survives."""
    if isinstance(value, dict):
        assert type(value) is dict
        for key, item in value.items():
            assert_plain(key)
            assert_plain(item)
    elif isinstance(value, (list, tuple)):
        assert type(value) in (list, tuple)
        for item in value:
            assert_plain(item)
    else:
        assert value is None or type(value) in (bool, int, float, str), type(value)


@pytest.mark.parametrize("numpy_module", NUMPY_MODULES)
def test_metadata_is_plain_python(tmp_path: Path, numpy_module: str) -> None:
    layout = probed_layout()
    path = write(tmp_path, layout, numpy_scalar_module=numpy_module)
    data = path.read_bytes()
    other_module = next(name for name in NUMPY_MODULES if name != numpy_module)
    assert numpy_module.encode() in data and other_module.encode() not in data

    net = load_official_pickle(path)
    assert_plain(net.init_args)
    assert_plain(net.init_kwargs)
    assert_plain(net.attributes)
    assert net.init_args == ()
    assert net.init_kwargs["mapping_kwargs"] == {"num_layers": 2}
    assert net.init_kwargs["sr_kwargs"]["fused_modconv_default"] == "inference_only"
    assert net.init_kwargs["rendering_kwargs"]["ray_start"] == 2.25

    probe = net.attributes["np_probe"]
    assert probe == [0.1, 7, True, 0.5]
    assert [type(value) for value in probe] == [float, int, bool, float]
    assert net.attributes["neural_rendering_resolution"] == 16
    assert net.attributes["rendering_kwargs"]["avg_camera_pivot"] == [0, 0, 0.2]
    assert net.attributes["_last_planes"] is None
    for internal in ("training", "_parameters", "_modules", "_forward_hooks", "_init_kwargs"):
        assert internal not in net.attributes
    assert "renderer" not in net.attributes  # submodules are not attributes


@pytest.mark.parametrize("numpy_module", NUMPY_MODULES)
def test_fixture_uses_exactly_the_upstream_globals(tmp_path: Path, numpy_module: str) -> None:
    data = write(tmp_path, numpy_scalar_module=numpy_module).read_bytes()
    assert recorded_globals(data) == UPSTREAM_GLOBALS | {f"{numpy_module}.scalar"}


# --- Nothing from the file runs -------------------------------------------------------------------


def test_embedded_module_source_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = write(tmp_path, module_src=marker_source(marker))
    assert marker_source(marker).encode() in path.read_bytes()

    for key in ("G_ema", "G", "D"):
        load_official_pickle(path, key=key)
    assert not marker.exists()

    control = tmp_path / "control"  # the payload is live: running it does leave its marker
    exec(marker_source(control), {})
    assert control.exists()


def call_pickle(module: str, name: str, argument: str) -> bytes:
    """A protocol-0 pickle that calls ``module.name(argument)``, whatever that global is."""
    return f"c{module}\n{name}\n(V{argument}\ntR.".encode()


@pytest.mark.parametrize(
    "qualified_name",
    [
        "os.system",
        "posix.system",
        "builtins.eval",
        "builtins.exec",
        "subprocess.Popen",
        "torch_utils.persistence._src_to_module",
        "torch_utils.persistence.persistent_class",
        "training.networks_stylegan2.FullyConnectedLayer",
        "numpy.core.multiarray._reconstruct",
        "torch.load",
        "torch.nn.modules.linear.Linear",
    ],
)
def test_foreign_global_is_refused_by_name(tmp_path: Path, qualified_name: str) -> None:
    marker = tmp_path / "ran"
    module, name = qualified_name.rsplit(".", 1)
    path = tmp_path / "hostile.pkl"
    path.write_bytes(call_pickle(module, name, f"touch {marker}"))

    with pytest.raises(CheckpointError, match="not an EG3D checkpoint") as error:
        load_official_pickle(path)
    assert f"refusing global {qualified_name}:" in str(error.value)
    assert "code we refuse to run" in str(error.value)
    assert not marker.exists()


def test_foreign_global_inside_an_official_layout_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    layout = probed_layout()
    code = f"open({str(marker)!r}, 'w').close()"
    layout.attributes = {"decoder": {"hidden_dim": Reduced(builtins.eval, (code,))}}
    with pytest.raises(CheckpointError, match=r"refusing global builtins\.eval"):
        load_official_pickle(write(tmp_path, layout))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("not a dict", "meta must be a dict"),
        (
            {"type": "module", "version": 6, "class_name": "A", "state": {}},
            "only hold type 'class'",
        ),
        (
            {"type": "class", "version": "6", "class_name": "A", "state": {}},
            "version must be an int",
        ),
        ({"type": "class", "version": 6, "class_name": "os.system", "state": {}}, "identifier"),
        (
            {"type": "class", "version": 6, "class_name": "A", "state": None},
            "expected its __dict__",
        ),
        ({"type": "class", "version": 6, "class_name": "A", "state": {}}, "not an nn.Module"),
    ],
)
def test_malformed_persistent_object_is_refused(tmp_path: Path, meta: Any, message: str) -> None:
    marker = tmp_path / "executed"
    if isinstance(meta, dict):
        meta = {**meta, "module_src": marker_source(marker)}
    path = tmp_path / "meta.pkl"
    path.write_bytes(official_pickle_bytes({"G_ema": Reduced(RECONSTRUCT_PERSISTENT_OBJ, (meta,))}))
    with pytest.raises(CheckpointError, match=message):
        load_official_pickle(path)
    assert not marker.exists()


def test_tensor_view_outside_its_storage_is_refused(tmp_path: Path) -> None:
    blob = legacy_storage_blob(torch.arange(4.0))
    path = tmp_path / "overread.pkl"
    bad = raw_tensor(blob, (100,), (1,), OrderedDict())
    path.write_bytes(official_pickle_bytes({"G_ema": minimal_network(weight=bad)}))
    with pytest.raises(CheckpointError, match="needs 100 elements but its storage has 4"):
        load_official_pickle(path)


def test_tensor_with_backward_hooks_is_refused(tmp_path: Path) -> None:
    blob = legacy_storage_blob(torch.arange(4.0))
    path = tmp_path / "hooks.pkl"
    hooked = raw_tensor(blob, (4,), (1,), OrderedDict(hook=1))
    path.write_bytes(official_pickle_bytes({"G_ema": minimal_network(weight=hooked)}))
    with pytest.raises(CheckpointError, match="backward hooks"):
        load_official_pickle(path)


def test_non_numeric_numpy_dtype_is_refused(tmp_path: Path) -> None:
    layout = probed_layout()
    layout.attributes = {"": {"dtype": Reduced(np.dtype, ("O8", False, True))}}
    with pytest.raises(CheckpointError, match="numpy dtype 'O8' is refused"):
        load_official_pickle(write(tmp_path, layout))


def test_minimal_network_loads(tmp_path: Path) -> None:
    """The hand-built reductions above are valid when their arguments are."""
    blob = legacy_storage_blob(torch.arange(4.0))
    path = tmp_path / "ok.pkl"
    good = raw_tensor(blob, (2, 2), (2, 1), OrderedDict())
    # torch writes this form for a Parameter with python attributes; they are dropped, not set.
    with_state = Reduced(
        torch._utils._rebuild_parameter_with_state,
        (torch.ones(3), False, OrderedDict(), ({"note": "x"}, None)),
    )
    snapshot = {"G_ema": minimal_network(weight=good, gain=with_state)}
    path.write_bytes(official_pickle_bytes(snapshot))
    net = load_official_pickle(path)
    assert torch.equal(net.state_dict["weight"], torch.arange(4.0).view(2, 2))
    assert_bit_exact(net.state_dict["gain"], torch.ones(3), "gain")
    assert net.class_name == "Net"


# --- Damaged and wrong files ----------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0001, 0.01, 0.3, 0.5, 0.9, 0.9999])
def test_truncated_file_is_a_clear_error(tmp_path: Path, fraction: float) -> None:
    path = write(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    with pytest.raises(CheckpointError, match=r"truncated|corrupt") as error:
        load_official_pickle(path)
    assert str(path) in str(error.value)


def test_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.pkl"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        load_official_pickle(path)


@pytest.mark.parametrize(
    "data",
    [
        os.urandom(4096),
        b"\x80\x04" + os.urandom(4096),
        b"<!DOCTYPE html><html>404 Not Found</html>\n",
        b"PK\x03\x04" + bytes(100),  # a zip archive, e.g. a torch.save file
    ],
)
def test_garbage_is_a_clear_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "garbage.pkl"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"garbage\.pkl"):
        load_official_pickle(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_official_pickle(tmp_path / "absent.pkl")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_official_pickle(tmp_path)


def test_missing_key_names_the_keys_present(tmp_path: Path) -> None:
    path = tmp_path / "no_ema.pkl"
    snapshot = {"training_set_kwargs": {}, "G": tiny_triplane_layout(), "augment_pipe": None}
    path.write_bytes(official_pickle_bytes(snapshot))
    with pytest.raises(CheckpointError, match="no 'G_ema' network") as error:
        load_official_pickle(path)
    assert "'training_set_kwargs', 'G', 'augment_pipe'" in str(error.value)


@pytest.mark.parametrize(
    ("top_level", "message"),
    [
        ([1, 2, 3], "expected the dict EG3D's training loop writes"),
        ({"G_ema": None}, "'G_ema' is a NoneType"),
        ({"G_ema": EasyDict(z_dim=512)}, "'G_ema' is a EasyDict"),
    ],
)
def test_wrong_top_level_shapes(tmp_path: Path, top_level: Any, message: str) -> None:
    path = tmp_path / "wrong.pkl"
    if isinstance(top_level, dict):
        path.write_bytes(official_pickle_bytes(top_level))
    else:
        path.write_bytes(pickle.dumps(top_level))
    with pytest.raises(CheckpointError, match=message):
        load_official_pickle(path)
