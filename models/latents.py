"""Latent codes: from seeds, as EG3D's scripts make them, and fitted latents saved to files."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


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
        """Parse a latent file's contents; every problem raises ValueError naming the field."""
        if not isinstance(body, dict) or body.get("format") != LATENT_FORMAT:
            raise ValueError(f"{where} is not a distill3d latent file (format {LATENT_FORMAT!r})")
        if body.get("version") != LATENT_VERSION:
            raise ValueError(
                f"{where}: latent file version {body.get('version')!r} is not supported "
                f"(this distill3d reads version {LATENT_VERSION})"
            )
        num_ws = body.get("num_ws")
        if not isinstance(num_ws, int) or num_ws < 1:
            raise ValueError(f"{where}: num_ws must be a positive integer")
        if "w" in body:
            ws = _finite_matrix([body["w"]], where, "w").expand(num_ws, -1).clone()
        elif "ws" in body:
            ws = _finite_matrix(body["ws"], where, "ws")
            if ws.shape[0] != num_ws:
                raise ValueError(f"{where}: ws has {ws.shape[0]} rows, num_ws says {num_ws}")
        else:
            raise ValueError(f"{where} holds neither 'w' nor 'ws'")
        camera = body.get("camera")
        if camera is not None:
            camera = _finite_matrix([camera], where, "camera")[0].tolist()
            if len(camera) != 25:
                raise ValueError(f"{where}: camera must be a 25-number label")
        yaw, pitch = body.get("yaw", 0.0), body.get("pitch", 0.0)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (yaw, pitch)):
            raise ValueError(f"{where}: yaw and pitch must be finite numbers of degrees")
        return cls(
            ws=ws,
            yaw_deg=float(yaw),
            pitch_deg=float(pitch),
            camera_label=camera,
            space=str(body.get("space", "w")),
            metadata=dict(body.get("metadata") or {}),
        )


def _finite_matrix(rows: Any, where: str, name: str) -> torch.Tensor:
    try:
        matrix = torch.tensor(rows, dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {name} must be a list of numbers") from exc
    if matrix.ndim != 2 or matrix.shape[1] == 0 or not torch.isfinite(matrix).all():
        raise ValueError(f"{where}: {name} must be finite numbers of equal length")
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
    try:
        body = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from exc
    return FittedLatent.from_json(body, str(path))
