"""The one config-file reader (models.config_files.read_config_file) and training's use of it."""

from __future__ import annotations

import pytest

from distill3d.models.config_files import read_config_file
from distill3d.models.errors import ConfigError
from distill3d.training.config import TrainConfig, load_config_file


def test_yaml_yml_and_json_read_to_the_same_mapping(tmp_path):
    (tmp_path / "a.yaml").write_text("steps: 3\nloss:\n  hr_l1: 2.0\n")
    (tmp_path / "b.yml").write_text("steps: 3\nloss: {hr_l1: 2.0}\n")
    (tmp_path / "c.json").write_text('{"steps": 3, "loss": {"hr_l1": 2.0}}')
    read = [read_config_file(tmp_path / name) for name in ("a.yaml", "b.yml", "c.json")]
    assert read[0] == read[1] == read[2] == {"steps": 3, "loss": {"hr_l1": 2.0}}
    assert TrainConfig.from_dict(load_config_file(tmp_path / "a.yaml")).loss.hr_l1 == 2.0


def test_an_empty_file_is_an_empty_mapping(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert read_config_file(tmp_path / "empty.yaml") == {}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.yaml", "steps: [1, 2\n", "cannot parse training config"),
        ("bad.json", '{"steps": ', "cannot parse training config"),
        ("list.yaml", "- 1\n- 2\n", "must hold a mapping"),
        ("run.toml", "steps = 3\n", "unknown file type '.toml'"),
        ("big.yaml", "x: 1\n" * 300_000, "at most"),
    ],
)
def test_errors_name_the_file_and_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_config_file(path)
    assert str(path) in str(info.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(ConfigError, match=r"settings file .* not found"):
        read_config_file(tmp_path / "nope.yaml", what="settings file")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config_file(tmp_path / "bin.yaml")
