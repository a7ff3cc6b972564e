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


def read_sidecar(path: str | os.PathLike[str], spec: SidecarSpec, missing: str) -> dict[str, Any]:
    """The JSON object in ``path``, checked for its kind and version.

    ``missing`` is the whole message for an absent file (callers word it for their folder).
    """
    path = Path(path)
    if not path.is_file():
        raise spec.error(missing)
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise spec.error(_refusal(path, spec, f"not valid JSON ({exc})")) from exc
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
