"""Reading a YAML or JSON settings file into a dict: the one loader behind ``--config`` files.

Training configs and the service's settings file are both small mappings of names to values that
a person wrote by hand, so both want the same things: a size bound (a wrong path to a dataset or
a checkpoint should fail at once, not be parsed), the parser's own message with the file's name
when the text is malformed, and a clear error when the document is not a mapping.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # a hand-written settings file is a few kB
YAML_SUFFIXES = (".yaml", ".yml")
JSON_SUFFIXES = (".json",)


def read_config_file(
    path: str | os.PathLike[str],
    what: str = "config file",
    max_bytes: int = MAX_CONFIG_BYTES,
) -> dict[str, Any]:
    """The mapping held by the ``.yaml``/``.yml``/``.json`` file ``path`` (an empty file is ``{}``).

    ``what`` names the file in errors ("training config", "settings file"). Every failure is a
    ``ConfigError`` saying which file and what is wrong: missing, too large, not UTF-8, an
    unknown suffix, a parse error (with the parser's position), or not a mapping.
    """
    path = Path(path)
    text = _read_text(path, what, max_bytes)
    data = _parse(path, text, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} {path} must hold a mapping of names to values, got {type(data).__name__}"
        )
    return data


def _read_text(path: Path, what: str, max_bytes: int) -> str:
    """The file's text, refusing what cannot be a hand-written settings file."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found")
    size = path.stat().st_size
    if size > max_bytes:
        raise ConfigError(
            f"{what} {path} is {size} bytes; a settings file is at most {max_bytes} bytes "
            "(is this the right path?)"
        )
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text: {exc}") from exc


def _parse(path: Path, text: str, what: str) -> Any:
    """JSON for ``.json``, YAML (safe loader: plain data only) for ``.yaml``/``.yml``."""
    suffix = path.suffix.lower()
    if suffix not in YAML_SUFFIXES + JSON_SUFFIXES:
        known = ", ".join(YAML_SUFFIXES + JSON_SUFFIXES)
        raise ConfigError(f"{what} {path}: unknown file type {suffix!r}; use one of {known}")
    try:
        if suffix in JSON_SUFFIXES:
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError / JSONDecodeError: report the parser's message
        raise ConfigError(f"cannot parse {what} {path}: {exc}") from exc
