"""Latent codes: from seeds, as EG3D's scripts make them, and fitted latents saved to files."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .eg3d.config import MAX_LATENT_DIM, shown
from .errors import ConfigError
from .sidecar import loads_bounded


def z_from_seed(seed: int, z_dim: int) -> torch.Tensor:
    """z = numpy ``RandomState(seed).randn(1, z_dim)`` as float32 [1, z_dim].

    This is what ``gen_samples.py`` / ``gen_videos.py`` do, so a seed names the same identity in
    EG3D's tools and in ours.
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim)).to(torch.float32)


LATENT_FORMAT = "distill3d-latent"
LATENT_VERSION = 1
# A w+ latent of the largest model is ~30 rows of 512 numbers (~300 kB of JSON); the bounds
# leave room for bigger models and for metadata, and refuse files no inversion writes.
MAX_LATENT_BYTES = 16 << 20
MAX_NUM_WS = 256
MAX_LATENT_DEPTH = 32


@dataclass
class FittedLatent:
    """A latent fitted to an image (or written by hand) and the camera it was fitted at.

    ``ws`` is [num_ws, w_dim]: one row per synthesis layer. In "w" space all rows are equal and
    the file stores one ``w``; in "w+" space it stores every row.
    """

    ws: torch.Tensor
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    camera_label: list[float] | None = None
    space: str = "w"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def w(self) -> torch.Tensor | None:
        """The single w when every row is the same (W space), else None."""
        return self.ws[0] if bool((self.ws == self.ws[:1]).all()) else None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"format": LATENT_FORMAT, "version": LATENT_VERSION}
        w = self.w
        body["space"] = "w" if w is not None else "w+"
        body["num_ws"] = int(self.ws.shape[0])
        if w is not None:
            body["w"] = [float(v) for v in w.tolist()]
        else:
            body["ws"] = [[float(v) for v in row] for row in self.ws.tolist()]
        body["yaw"] = float(self.yaw_deg)
        body["pitch"] = float(self.pitch_deg)
        if self.camera_label is not None:
            body["camera"] = [float(v) for v in self.camera_label]
        body["metadata"] = self.metadata
        return body

    @classmethod
    def from_json(cls, body: Any, where: str = "latent") -> FittedLatent:
        """Parse a latent file's contents; every problem raises ConfigError naming the field."""
        if not isinstance(body, dict) or body.get("format") != LATENT_FORMAT:
            raise ConfigError(f"{where} is not a distill3d latent file (format {LATENT_FORMAT!r})")
        if body.get("version") != LATENT_VERSION:
            raise ConfigError(
                f"{where}: latent file version {body.get('version')!r} is not supported "
                f"(this distill3d reads version {LATENT_VERSION})"
            )
        num_ws = body.get("num_ws")
        if type(num_ws) is not int or not 1 <= num_ws <= MAX_NUM_WS:
            raise ConfigError(
                f"{where}: num_ws must be an integer in [1, {MAX_NUM_WS}], got {shown(num_ws)}"
            )
        if "w" in body:
            ws = _finite_matrix([body["w"]], where, "w").expand(num_ws, -1).clone()
        elif "ws" in body:
            ws = _finite_matrix(body["ws"], where, "ws")
            if ws.shape[0] != num_ws:
                raise ConfigError(f"{where}: ws has {ws.shape[0]} rows, num_ws says {num_ws}")
        else:
            raise ConfigError(f"{where} holds neither 'w' nor 'ws'")
        camera = body.get("camera")
        if camera is not None:
            camera = _finite_matrix([camera], where, "camera")[0].tolist()
            if len(camera) != 25:
                raise ConfigError(f"{where}: camera must be a 25-number label")
        yaw, pitch = body.get("yaw", 0.0), body.get("pitch", 0.0)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (yaw, pitch)):
            raise ConfigError(f"{where}: yaw and pitch must be finite numbers of degrees")
        return cls(
            ws=ws,
            yaw_deg=float(yaw),
            pitch_deg=float(pitch),
            camera_label=camera,
            space=str(body.get("space", "w")),
            metadata=_metadata(body.get("metadata"), where),
        )


def _metadata(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: metadata must be a JSON object, got {shown(value)}")
    return dict(value)


def _finite_matrix(rows: Any, where: str, name: str) -> torch.Tensor:
    """Rows of finite numbers, at most ``MAX_NUM_WS`` rows of at most ``MAX_LATENT_DIM``."""
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise ConfigError(f"{where}: {name} must be a list of numbers")
    if len(rows) > MAX_NUM_WS or any(len(row) > MAX_LATENT_DIM for row in rows):
        raise ConfigError(
            f"{where}: {name} must hold at most {MAX_NUM_WS} rows of at most {MAX_LATENT_DIM} "
            "numbers (the widest latent a model may have)"
        )
    try:
        matrix = torch.tensor(rows, dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {name} must be a list of numbers") from exc
    if matrix.ndim != 2 or matrix.shape[1] == 0 or not torch.isfinite(matrix).all():
        raise ConfigError(f"{where}: {name} must be finite numbers of equal length")
    return matrix


def save_latent(latent: FittedLatent, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(latent.to_json()) + "\n")
    return path


def load_latent(path: str | Path) -> FittedLatent:
    """Read a latent file written by ``distill3d invert`` (or by hand: see ``to_json``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latent file {path} does not exist")
    size = path.stat().st_size
    if size > MAX_LATENT_BYTES:
        raise ConfigError(
            f"{path} is larger than {MAX_LATENT_BYTES} bytes ({size}); latent files are a few "
            "hundred kB, so it is not one"
        )
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read latent file {path}: {exc}") from exc
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from None
    body = loads_bounded(text, str(path), MAX_LATENT_DEPTH, ConfigError)
    return FittedLatent.from_json(body, str(path))
