"""Our checkpoint format: round trip, atomic replacement, and clear errors on bad folders."""

from __future__ import annotations

import json

import pytest
import torch

from distill3d.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_checkpoint, save_checkpoint
from distill3d.models.errors import CheckpointError
from distill3d.models.load import default_model, init_generator, load_model


def test_round_trip_is_exact(tmp_path, tiny_generator) -> None:
    path = save_checkpoint(tiny_generator, tmp_path / "ckpt", metadata={"source": "test"})
    loaded = load_checkpoint(path)
    assert loaded.config == tiny_generator.config
    for (k, a), (k2, b) in zip(
        tiny_generator.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    doc = json.loads((path / CONFIG_NAME).read_text())
    assert doc["class"] == "eg3d" and doc["metadata"]["source"] == "test"


def test_replacing_a_checkpoint_and_refusing_other_folders(tmp_path, tiny_generator) -> None:
    path = tmp_path / "ckpt"
    save_checkpoint(init_generator("tiny", 1), path)
    save_checkpoint(tiny_generator, path)  # replaces
    assert torch.equal(
        load_checkpoint(path).backbone.mapping.w_avg, tiny_generator.backbone.mapping.w_avg
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary leftovers
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_checkpoint(tiny_generator, other)
    assert (other / "keep.txt").read_text() == "precious"


def test_corrupt_or_foreign_folders(tmp_path, tiny_generator) -> None:
    path = save_checkpoint(tiny_generator, tmp_path / "ckpt")
    weights = path / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the hash"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a distill3d checkpoint"):
        load_checkpoint(tmp_path)
    (path / CONFIG_NAME).write_text("{ nope")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_architecture_mismatch_names_the_tensors(tmp_path, tiny_generator) -> None:
    path = save_checkpoint(tiny_generator, tmp_path / "ckpt")
    doc = json.loads((path / CONFIG_NAME).read_text())
    doc["config"]["decoder_hidden"] = 24
    (path / CONFIG_NAME).write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"wrong shape: decoder\.net\.0\.bias"):
        load_checkpoint(path)
    doc["config"]["decoder_hiden"] = 24
    (path / CONFIG_NAME).write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="decoder_hiden"):
        load_checkpoint(path)


def test_load_model_dispatch(tmp_path) -> None:
    a, b = default_model(), load_model("default")
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing")
    weird = tmp_path / "model.bin"
    weird.write_bytes(b"123")
    with pytest.raises(CheckpointError, match="cannot tell"):
        load_model(weird)


def test_init_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = init_generator("tiny", 4), init_generator("tiny", 4), init_generator("tiny", 5)
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["backbone.mapping.fc0.weight"], sc["backbone.mapping.fc0.weight"])
