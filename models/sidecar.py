"""One reader for the JSON files that describe an artifact beside it (a checkpoint's
``config.json``, an export's ``export.json``, a TensorRT plan's ``student.plan.json``).

Each of them names its kind and version; reading them in one place means every malformed
sidecar is refused the same way, with a one-line message that says which file, what is wrong
and how to fix it, before anything trusts its contents.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A sidecar is a few kB of flat JSON; anything far bigger or deeper is not one, and is refused
# before it is parsed (size) or trusted (depth) rather than ending in a traceback.
MAX_SIDECAR_BYTES = 1 << 20
MAX_SIDECAR_DEPTH = 32


@dataclass(frozen=True)
class SidecarSpec:
    """What a sidecar must say about itself, and how to word a refusal.

    ``what`` names the document in messages ("plan metadata"), ``fix`` says what to do about a
    bad one, ``error`` is the exception raised. ``format`` (when set) is the required value of
    the ``format`` field; ``versions`` are the readable values of ``format_version``.
    """

    what: str
    fix: str
    error: type[Exception]
    format: str | None = None
    versions: tuple[int, ...] = (1,)
    max_bytes: int = MAX_SIDECAR_BYTES
    max_depth: int = MAX_SIDECAR_DEPTH


def read_sidecar(path: str | os.PathLike[str], spec: SidecarSpec, missing: str) -> dict[str, Any]:
    """The JSON object in ``path``, checked for its kind and version.

    ``missing`` is the whole message for an absent file (callers word it for their folder).
    """
    path = Path(path)
    if not path.is_file():
        raise spec.error(missing)
    size = path.stat().st_size
    if size > spec.max_bytes:
        reason = f"it is larger than {spec.max_bytes} bytes ({size}), which no {spec.what} is"
        raise spec.error(_refusal(path, spec, reason))
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise spec.error(_refusal(path, spec, f"unreadable ({exc})")) from exc
    document = loads_bounded(text, str(path), spec.max_depth, spec.error)
    if not isinstance(document, dict):
        raise spec.error(_refusal(path, spec, "it must hold a JSON object"))
    if spec.format is not None and document.get("format") != spec.format:
        found = document.get("format")
        raise spec.error(_refusal(path, spec, f"format {found!r}, expected {spec.format!r}"))
    version = document.get("format_version")
    if version not in spec.versions:
        readable = ", ".join(str(v) for v in spec.versions)
        reason = f"format_version {version!r}, this distill3d reads {readable}"
        raise spec.error(_refusal(path, spec, reason))
    return document


def _refusal(path: Path, spec: SidecarSpec, reason: str) -> str:
    return f"{path} is not valid {spec.what}: {reason}; {spec.fix}"


def loads_bounded(text: str | bytes, where: str, max_depth: int, error: type[Exception]) -> Any:
    """``json.loads`` that refuses nesting beyond ``max_depth`` in one line, never a traceback.

    The parser recurses per level, so a file of brackets ends in RecursionError (or MemoryError)
    inside it; shallower but still silly nesting is caught by walking the result without
    recursion.
    """
    try:
        value = json.loads(text)
    except (RecursionError, MemoryError):
        raise error(f"{where} is nested more than {max_depth} levels deep") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{where} is not valid JSON: {exc}") from None
    if json_depth(value) > max_depth:
        raise error(f"{where} is nested more than {max_depth} levels deep")
    return value


def json_depth(value: Any) -> int:
    """How many arrays/objects deep ``value`` goes (0 for a number or string), iteratively."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest
