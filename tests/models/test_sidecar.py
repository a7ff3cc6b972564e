"""Every JSON sidecar (checkpoint config, export metadata, plan metadata) goes through one
bounded reader: oversized, too deeply nested or malformed files are refused in one line."""

from __future__ import annotations

import json

import pytest

from distill3d.models.runtime.errors import ExportError
from distill3d.models.runtime.export_files import METADATA_NAME, read_export
from distill3d.models.sidecar import MAX_SIDECAR_BYTES, MAX_SIDECAR_DEPTH


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message and len(message) < 600, message
    return message


def test_an_export_json_too_big_to_be_one_is_refused_before_parsing(tmp_path):
    (tmp_path / METADATA_NAME).write_text(" " * (MAX_SIDECAR_BYTES + 1) + "{}")
    with pytest.raises(ExportError) as exc:
        read_export(tmp_path)
    assert "larger than" in _one_line(exc)


@pytest.mark.parametrize("depth", [MAX_SIDECAR_DEPTH + 1, 200_000])
def test_deeply_nested_export_json_is_refused_in_one_line(tmp_path, depth):
    (tmp_path / METADATA_NAME).write_text('{"a": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(ExportError) as exc:
        read_export(tmp_path)
    assert "nested more than" in _one_line(exc)


def test_malformed_and_wrong_kind_are_refused_in_one_line(tmp_path):
    (tmp_path / METADATA_NAME).write_text("{not json")
    with pytest.raises(ExportError) as exc:
        read_export(tmp_path)
    assert "not valid JSON" in _one_line(exc)
    (tmp_path / METADATA_NAME).write_text(json.dumps({"format": "other", "format_version": 1}))
    with pytest.raises(ExportError) as exc:
        read_export(tmp_path)
    assert "expected" in _one_line(exc)
