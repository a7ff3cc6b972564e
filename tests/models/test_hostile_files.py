"""Hostile files: every loader refuses each one in one line, in bounded time and memory.

The corpus is built here: official-layout pickles whose memo shares containers or modules
exponentially, zip-bomb and over-declared tensor storages, checkpoint folders whose config.json
holds huge, float, bool, string, NaN or infinite sizes or is nested deeply, safetensors files with
truncated, oversized or disagreeing headers, and latent files with huge vectors or nesting. An
attacker controls whole files, so every edited checkpoint carries hashes that match its edits.

Bounds: each case is loaded in its own forked child (``hostile_runner.py``) whose address space
is capped at its size after importing torch plus ``HEADROOM`` (1 GiB) and which is killed after
``SECONDS`` (20 s). A case passes when the loader raises ``CheckpointError`` or ``ConfigError``
with a one-line message naming the problem; a hang, a crash, a raw exception or acceptance fails.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import math
import re
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "eg3d"))  # the official-pickle writer lives there

from official_pickle import (
    RECONSTRUCT_PERSISTENT_OBJ,
    Reduced,
    UpstreamLayout,
    legacy_storage_blob,
    official_pickle_bytes,
    write_official_pickle,
)

from distill3d.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_checkpoint
from distill3d.models.eg3d.generator import TriPlaneGenerator
from distill3d.models.load import init_generator

HEADROOM = 1 << 30  # bytes a child may map beyond what it holds after importing torch
SECONDS = 20  # wall-clock limit per case
RUNNER = Path(__file__).with_name("hostile_runner.py")
DEMO_STUDENT = Path(__file__).parents[2] / "models" / "weights" / "demo-student"
ONE_LINE_ERRORS = ("CheckpointError", "ConfigError")


# --- Running a case in a bounded child -----------------------------------------------------------


@pytest.fixture(scope="module")
def runner() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, str(RUNNER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    yield process
    assert process.stdin is not None
    process.stdin.close()
    process.wait(timeout=30)


def load_bounded(runner: subprocess.Popen[str], loader: str, path: Path) -> dict[str, Any]:
    """The runner's answer for loading ``path`` with ``loader`` ("pickle", "checkpoint", "latent")."""
    assert runner.stdin is not None and runner.stdout is not None
    request = {"loader": loader, "path": str(path), "headroom": HEADROOM, "seconds": SECONDS}
    runner.stdin.write(json.dumps(request) + "\n")
    runner.stdin.flush()
    return json.loads(runner.stdout.readline())


def assert_refused(answer: dict[str, Any], pattern: str) -> None:
    assert answer["outcome"] == "raised", answer
    assert answer["type"] in ONE_LINE_ERRORS, answer
    assert answer["lines"] == 1, answer
    assert re.search(pattern, answer["message"]), answer


# --- Pickles ---------------------------------------------------------------------------------------


def persistent(state_extra: dict[str, Any], modules: dict[str, Any] | None = None, **params: Any):
    """A persistent network with the given state entries, children and parameters."""
    state = {"training": False, "_parameters": params, "_buffers": {}, "_modules": modules or {}}
    state.update(state_extra)
    meta = {"type": "class", "version": 6, "module_src": "", "class_name": "Net", "state": state}
    return Reduced(RECONSTRUCT_PERSISTENT_OBJ, (meta,))


def doubling(depth: int, pair: Callable[[Any], Any]) -> Any:
    """A value nested ``depth`` deep whose every level holds the level below twice (via the memo)."""
    value: Any = 0
    for _ in range(depth):
        value = pair(value)
    return value


PLACEHOLDER = "hostile-payload-goes-here"


def with_payload(snapshot: dict[str, Any], payload: bytes) -> bytes:
    """Protocol-2 pickle of ``snapshot`` with the string ``PLACEHOLDER`` replaced by raw opcodes.

    For values python cannot build or pickle itself (a dict keyed by a 2**64-node tuple would
    have to be hashed to exist). The payload must push exactly one object; protocol 2 numbers its
    memo explicitly, so the payload's own memo slots (from 50000) cannot collide.
    """
    data = official_pickle_bytes(snapshot, protocol=2)
    text = PLACEHOLDER.encode()
    marker = b"X" + struct.pack("<I", len(text)) + text
    assert data.count(marker) == 1
    return data.replace(marker, payload)


def doubling_tuple_ops(depth: int, slot: int = 50000) -> bytes:
    """Opcodes pushing the ``doubling`` tuple, each level memoized (and popped) then fetched twice."""

    def put(index: int) -> bytes:
        return b"r" + struct.pack("<I", index) + b"0"  # LONG_BINPUT, POP

    def get(index: int) -> bytes:
        return b"j" + struct.pack("<I", index)  # LONG_BINGET

    ops = b"K\x00" + put(slot)
    for level in range(depth):
        ops += get(slot + level) * 2 + b"\x86" + put(slot + level + 1)  # TUPLE2
    return ops + get(slot + depth)


def zip_bomb_blob(uncompressed: int) -> bytes:
    """A torch zip-format storage whose data record inflates to ``uncompressed`` bytes of zeros.

    The deflate stream repeats one fully flushed segment, so it is built without compressing
    the whole; the rest of the archive is what ``torch.save`` writes for a float storage.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        torch.save(torch.zeros(1).storage(), buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    segment_size = 16 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(bytes(segment_size)) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(bytes(segment_size)) + compressor.flush(zlib.Z_FULL_FLUSH)
    count = uncompressed // segment_size
    stream = first + repeated * (count - 1) + compressor.flush()
    crc = 0
    zeros = bytes(segment_size)
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    entries = []
    for info in source.infolist():
        data = source.read(info.filename)
        if info.filename.endswith("data.pkl"):  # declare the storage as big as the record
            data = data.replace(
                b"K\x01t", b"J" + struct.pack("<i", count * segment_size // 4) + b"t"
            )
        if info.filename.endswith("/data/0"):
            entries.append((info.filename, stream, 8, crc, count * segment_size))
        else:
            entries.append((info.filename, data, 0, zlib.crc32(data), len(data)))
    return _zip_archive(entries)


def _zip_archive(entries: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip of (name, stored bytes, method, crc, uncompressed size) entries, written by hand."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, data, method, crc, size in entries:
        offset = out.tell()
        encoded = name.encode()
        fields = (20, 0, method, 0, 0, crc, len(data), size, len(encoded))
        out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields, 0) + encoded + data)
        central.write(
            struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, 0, offset) + encoded
        )
    start = out.tell()
    out.write(central.getvalue())
    count = len(entries)
    out.write(
        struct.pack(
            "<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central.getvalue()), start, 0
        )
    )
    return out.getvalue()


def over_declared_blob(numel: int) -> bytes:
    """A legacy storage blob holding one float but declaring ``numel`` of them."""
    blob = legacy_storage_blob(torch.ones(1))
    declared = b"K\x01N"  # BININT1 1, NONE: the numel and view metadata of the persistent id
    assert blob.count(declared) == 1
    return blob.replace(declared, b"J" + struct.pack("<i", numel) + b"N")


def storage_tensor(blob: bytes) -> Reduced:
    storage = Reduced(torch.storage._load_from_bytes, (blob,))
    return Reduced(torch._utils._rebuild_tensor_v2, (storage, 0, (1,), (1,), False, OrderedDict()))


def shared_modules(depth: int) -> Reduced:
    """Modules whose two children are the same module, ``depth`` levels down: 2**depth paths."""
    module = persistent({}, w=torch.ones(1))
    for _ in range(depth):
        module = persistent({}, {"a": module, "b": module})
    return module


def module_chain(depth: int) -> Reduced:
    module = persistent({}, w=torch.ones(1))
    for _ in range(depth):
        module = persistent({}, {"c": module})
    return module


@functools.cache
def _convertible() -> UpstreamLayout:
    """test_convert's small generator dressed as upstream's G_ema: a file that converts."""
    from test_convert import _as_upstream, _small_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _as_upstream(TriPlaneGenerator(_small_config()))


def convertible_with(**changes: Any) -> UpstreamLayout:
    """That layout with init kwargs (``kw_`` names) or rendering_kwargs entries replaced."""
    layout = copy.deepcopy(_convertible())
    for key, value in changes.items():
        if key.startswith("kw_"):
            layout.init_kwargs[""][key[3:]] = value
        else:
            layout.attributes[""]["rendering_kwargs"][key] = value
    return layout


PICKLES: dict[str, tuple[Callable[[Path], None], str]] = {
    "memo tuple 64 deep in init kwargs": (
        lambda p: p.write_bytes(
            official_pickle_bytes(
                {"G_ema": persistent({"_init_kwargs": {"z_dim": doubling(64, lambda v: (v, v))}})}
            )
        ),
        r"_init_kwargs.*(shared|more than)",
    ),
    "memo tuple 24 deep in init kwargs (16 M nodes)": (
        lambda p: p.write_bytes(
            official_pickle_bytes(
                {"G_ema": persistent({"_init_kwargs": {"z_dim": doubling(24, lambda v: (v, v))}})}
            )
        ),
        r"_init_kwargs expands to more than 100000 values",
    ),
    "memo list 64 deep in an attribute": (
        lambda p: p.write_bytes(
            official_pickle_bytes(
                {"G_ema": persistent({"rendering_kwargs": doubling(64, lambda v: [v, v])})}
            )
        ),
        r"rendering_kwargs.*(shared|more than)",
    ),
    "memo dict 64 deep in init kwargs": (
        lambda p: p.write_bytes(
            official_pickle_bytes(
                {"G_ema": persistent({"_init_kwargs": doubling(64, lambda v: {"a": v, "b": v})})}
            )
        ),
        r"_init_kwargs.*(shared|more than)",
    ),
    "memo tuple 64 deep as a dict key": (
        lambda p: p.write_bytes(
            with_payload(
                {"G_ema": persistent({"rendering_kwargs": PLACEHOLDER})},
                b"}" + doubling_tuple_ops(64) + b"K\x01s",
            )
        ),
        r"hash",
    ),
    "list nested 100000 deep": (
        lambda p: p.write_bytes(
            with_payload(
                {"G_ema": persistent({"_init_kwargs": {"z_dim": PLACEHOLDER}})},
                b"]" * 100_000 + b"a" * 99_999,
            )
        ),
        r"nested",
    ),
    "modules sharing children 40 deep": (
        lambda p: p.write_bytes(official_pickle_bytes({"G_ema": shared_modules(40)})),
        r"appears twice|nested more than 32 modules deep",
    ),
    "modules sharing children 24 deep": (
        lambda p: p.write_bytes(official_pickle_bytes({"G_ema": shared_modules(24)})),
        r"appears twice",
    ),
    "one module under two names": (
        lambda p: p.write_bytes(official_pickle_bytes({"G_ema": shared_modules(1)})),
        r"appears twice",
    ),
    "module chain 100 deep": (
        lambda p: p.write_bytes(official_pickle_bytes({"G_ema": module_chain(100)})),
        r"nested more than",
    ),
    "zip-bomb storage (1.25 GiB inflated)": (
        lambda p: p.write_bytes(
            official_pickle_bytes(
                {"G_ema": persistent({}, w=storage_tensor(zip_bomb_blob(1280 << 20)))}
            )
        ),
        r"zip",
    ),
    "storage declaring 1.6 GB, holding 4 bytes": (
        lambda p: p.write_bytes(
            official_pickle_bytes(
                {"G_ema": persistent({}, w=storage_tensor(over_declared_blob(400_000_000)))}
            )
        ),
        r"declares 400000000 elements \(1600000000 bytes\) but holds 4 bytes",
    ),
    "z_dim 1e9 in init kwargs": (
        lambda p: write_official_pickle(p, convertible_with(kw_z_dim=10**9)),
        r"z_dim must be an integer in \[1, 4096\]",
    ),
    "NaN camera radius in rendering_kwargs": (
        lambda p: write_official_pickle(p, convertible_with(avg_camera_radius=math.nan)),
        r"avg_camera_radius must be a finite number",
    ),
    "float depth_resolution in rendering_kwargs": (
        lambda p: write_official_pickle(p, convertible_with(depth_resolution=4.5)),
        r"depth_resolution must be an integer",
    ),
    "list box_warp in rendering_kwargs": (
        lambda p: write_official_pickle(p, convertible_with(box_warp=[1])),
        r"box_warp must be a finite number",
    ),
    "unhashable superresolution_module": (
        lambda p: write_official_pickle(p, convertible_with(superresolution_module=["x"])),
        r"super-resolution module",
    ),
}


@pytest.mark.parametrize("case", list(PICKLES))
def test_hostile_pickles_are_refused(runner, tmp_path: Path, case: str) -> None:
    build, pattern = PICKLES[case]
    path = tmp_path / "hostile.pkl"
    build(path)
    assert_refused(load_bounded(runner, "pickle", path), pattern)


def test_the_tiny_official_layout_still_converts(runner, tmp_path: Path) -> None:
    """The control: the bounds leave an ordinary file alone."""
    path = tmp_path / "ok.pkl"
    write_official_pickle(path, convertible_with())
    assert load_bounded(runner, "pickle", path)["outcome"] == "accepted"


# --- Checkpoint folders ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(init_generator("tiny", 0), tmp_path_factory.mktemp("base") / "tiny")


def rehash(folder: Path, document: dict[str, Any]) -> None:
    """Write ``document`` with hashes that match the folder, as an attacker would."""
    digest = hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()
    document["weights_sha256"] = digest
    if "config_sha256" in document:
        from distill3d.models.checkpoint import config_sha256

        document["config_sha256"] = config_sha256(document)
    (folder / CONFIG_NAME).write_text(json.dumps(document))


def edited(base: Path, folder: Path, field: str, value: Any) -> Path:
    """A copy of ``base`` with config field ``field`` ("rendering.box_warp") set to ``value``."""
    shutil.copytree(base, folder)
    document = json.loads((folder / CONFIG_NAME).read_text())
    *parents, name = field.split(".")
    section = document["config"]
    for parent in parents:
        section = section[parent]
    section[name] = value
    rehash(folder, document)
    return folder


CONFIG_EDITS: list[tuple[str, Any, str]] = [
    ("channel_max", 10**9, r"channel_max must be an integer in \[1, 4096\], got 1000000000"),
    ("z_dim", 10**9, r"z_dim must be an integer in \[1, 4096\]"),
    ("rendering.depth_resolution", 10**9, r"depth_resolution must be an integer in \[2, 1024\]"),
    ("plane_resolution", 2**20, r"plane_resolution must be a power of two in \[4, 4096\]"),
    ("plane_channels", 8.0, r"plane_channels must be an integer .*got 8\.0"),
    ("z_dim", True, r"z_dim must be an integer .*got True"),
    ("z_dim", "32", r"z_dim must be an integer .*got '32'"),
    ("decoder_hidden", -1, r"decoder_hidden must be an integer in \[1, "),
    ("rendering.avg_camera_radius", math.nan, r"avg_camera_radius must be a finite number"),
    ("rendering.box_warp", math.inf, r"box_warp must be a finite number"),
    ("rendering.avg_camera_pivot", [0, 0, "x"], r"avg_camera_pivot"),
    ("superresolution.block_channels", [32, 10**9], r"block_channels"),
    ("superresolution.use_fp16", "no", r"use_fp16 must be true or false"),
    ("channel_base", 8, r"channel_base .*plane_resolution"),
]


@pytest.mark.parametrize(("field", "value", "pattern"), CONFIG_EDITS)
def test_hostile_config_values_are_refused(
    runner, tmp_path: Path, tiny_checkpoint: Path, field: str, value: Any, pattern: str
) -> None:
    folder = edited(tiny_checkpoint, tmp_path / "ckpt", field, value)
    assert_refused(load_bounded(runner, "checkpoint", folder), pattern)


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("channel_max", 10**9, r"student\.channel_max must be an integer in \[1, 4096\]"),
        ("mapping_layers", True, r"student\.mapping_layers must be an integer"),
        ("mapping_lr_multiplier", math.nan, r"mapping_lr_multiplier must be a finite number"),
    ],
)
def test_hostile_student_config_values_are_refused(
    runner, tmp_path: Path, field: str, value: Any, pattern: str
) -> None:
    folder = edited(DEMO_STUDENT, tmp_path / "student", field, value)
    assert_refused(load_bounded(runner, "checkpoint", folder), pattern)


def nested_json(depth: int, inner: str = "0") -> str:
    return "[" * depth + inner + "]" * depth


def test_deeply_nested_or_huge_config_json_is_refused(
    runner, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    folder = shutil.copytree(tiny_checkpoint, tmp_path / "nested")
    document = (folder / CONFIG_NAME).read_text()
    nested = document.replace(
        '"metadata": {', '"deep": ' + nested_json(100_000) + ', "metadata": {'
    )
    (folder / CONFIG_NAME).write_text(nested)
    assert_refused(load_bounded(runner, "checkpoint", folder), r"nested more than")
    padded = json.loads(document)
    padded["metadata"]["padding"] = "x" * (2 << 20)
    (folder / CONFIG_NAME).write_text(json.dumps(padded))
    assert_refused(load_bounded(runner, "checkpoint", folder), r"larger than")


def replaced_weights(base: Path, folder: Path, weights: bytes) -> Path:
    shutil.copytree(base, folder)
    (folder / WEIGHTS_NAME).write_bytes(weights)
    rehash(folder, json.loads((folder / CONFIG_NAME).read_text()))
    return folder


def safetensors_bytes(header: dict[str, Any] | str, data: bytes = b"") -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    return struct.pack("<Q", len(text)) + text.encode() + data


def test_hostile_safetensors_headers_are_refused(
    runner, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    real = (tiny_checkpoint / WEIGHTS_NAME).read_bytes()
    name = "backbone.mapping.fc0.weight"
    cases = {
        "truncated": (real[:100], r"header"),
        "shorter than its length field": (b"\x01\x02", r"header"),
        "header length 2**40": (struct.pack("<Q", 1 << 40) + b"{}", r"header"),
        "header nested 100000 deep": (safetensors_bytes(nested_json(100_000)), r"header"),
        "huge shape, no data": (
            safetensors_bytes(
                {name: {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 4]}}
            ),
            r"header",
        ),
    }
    for index, (weights, pattern) in enumerate(cases.values()):
        folder = replaced_weights(tiny_checkpoint, tmp_path / f"w{index}", weights)
        assert_refused(load_bounded(runner, "checkpoint", folder), pattern)


def test_header_shapes_that_disagree_with_the_config_are_refused(
    runner, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    """A consistent file whose fc0 is 4x larger than config.json implies: refused by name."""
    from safetensors.torch import load_file, save

    state = load_file(str(tiny_checkpoint / WEIGHTS_NAME))
    state["backbone.mapping.fc0.weight"] = torch.zeros(128, 64)
    folder = replaced_weights(tiny_checkpoint, tmp_path / "disagree", save(state))
    answer = load_bounded(runner, "checkpoint", folder)
    assert_refused(answer, r"wrong shape: backbone\.mapping\.fc0\.weight: file \[128, 64\]")


def test_ordinary_checkpoints_still_load(runner, tiny_checkpoint: Path) -> None:
    """The controls: a fresh checkpoint and the shipped student (written before config hashes)."""
    assert load_bounded(runner, "checkpoint", tiny_checkpoint)["outcome"] == "accepted"
    assert load_bounded(runner, "checkpoint", DEMO_STUDENT)["outcome"] == "accepted"


def test_a_config_edited_behind_its_hash_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """The config hash binds config.json to the weights: a plausible edit is caught."""
    from distill3d.models.checkpoint import load_checkpoint
    from distill3d.models.errors import CheckpointError

    folder = shutil.copytree(tiny_checkpoint, tmp_path / "edited")
    document = json.loads((folder / CONFIG_NAME).read_text())
    document["config"]["rendering"]["avg_camera_radius"] = 3.0
    (folder / CONFIG_NAME).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="config_sha256"):
        load_checkpoint(folder)


# --- Latent files ----------------------------------------------------------------------------------


def latent_text(**fields: Any) -> str:
    body = {"format": "distill3d-latent", "version": 1, "num_ws": 2, "w": [0.5] * 8}
    body.update(fields)
    return json.dumps(body)


LATENTS: dict[str, tuple[Callable[[], str], str]] = {
    "w nested 100000 deep": (
        lambda: latent_text(w="NESTED").replace('"NESTED"', nested_json(100_000)),
        r"nested more than",
    ),
    "metadata nested 100000 deep": (
        lambda: latent_text(metadata="NESTED").replace('"NESTED"', nested_json(100_000)),
        r"nested more than",
    ),
    "num_ws 1e9": (lambda: latent_text(num_ws=10**9), r"num_ws must be an integer in \[1, "),
    "num_ws true": (lambda: latent_text(num_ws=True), r"num_ws must be an integer"),
    "w of 100000 numbers": (lambda: latent_text(w=[0.5] * 100_000), r"w .*at most 4096"),
    "a 20 MB file": (lambda: latent_text(w=[0.123456789] * 1_500_000), r"larger than"),
    "NaN yaw": (lambda: latent_text(yaw=math.nan), r"yaw"),
}


@pytest.mark.parametrize("case", list(LATENTS))
def test_hostile_latent_files_are_refused(runner, tmp_path: Path, case: str) -> None:
    text, pattern = LATENTS[case]
    path = tmp_path / "latent.json"
    path.write_text(text())
    assert_refused(load_bounded(runner, "latent", path), pattern)


def test_an_ordinary_latent_still_loads(runner, tmp_path: Path) -> None:
    path = tmp_path / "latent.json"
    path.write_text(latent_text())
    assert load_bounded(runner, "latent", path)["outcome"] == "accepted"
