"""Request bodies and query parameters of the API, validated by pydantic.

Field-level rules live here (finite numbers, one latent, one way to give the camera); rules that
depend on the loaded models (vector lengths, pose ranges) are checked by the service and answered
with the same 422 shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BackendChoice = Literal["auto", "student", "volumetric"]
ImageFormat = Literal["png", "jpeg", "webp"]
VideoFormatName = Literal["mp4", "webm", "gif"]

LIST_FIELDS = ("z", "w", "camera", "conditioning_camera")


class LatentFields(BaseModel):
    """Exactly one of seed, z or w names the identity."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seed: int | None = Field(None, ge=0, lt=2**32, description="EG3D's seed -> z convention")
    z: list[float] | None = Field(None, description="latent z, z_dim numbers")
    w: list[float] | None = Field(None, description="latent w, w_dim numbers")
    truncation: float | None = Field(
        None, ge=-1.0, le=2.0, description="psi; default 0.7 for seed/z, 1 (none) for w"
    )
    conditioning_camera: list[float] | None = Field(
        None,
        min_length=25,
        max_length=25,
        description="camera label that conditions the mapping (fixes identity); default frontal",
    )
    backend: BackendChoice = "auto"

    @model_validator(mode="after")
    def _one_latent(self) -> LatentFields:
        given = [name for name in ("seed", "z", "w") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of seed, z or w (got {', '.join(given) if given else 'none'})"
            )
        return self

    def psi(self) -> float:
        if self.truncation is not None:
            return self.truncation
        return 1.0 if self.w is not None else 0.7


class RenderRequest(LatentFields):
    """POST /render body (GET /render takes the same fields as query parameters)."""

    yaw: float = Field(0.0, ge=-180, le=180, description="degrees; positive moves the camera to +x")
    pitch: float = Field(0.0, gt=-90, lt=90, description="degrees of elevation")
    radius: float | None = Field(None, gt=0, description="camera distance; default the model's")
    fov_deg: float | None = Field(None, gt=0, lt=180, description="horizontal field of view")
    camera: list[float] | None = Field(
        None, min_length=25, max_length=25, description="raw 25-number label instead of yaw/pitch"
    )
    format: ImageFormat = "png"
    quality: int = Field(90, ge=1, le=100, description="jpeg/webp quality")

    @model_validator(mode="after")
    def _one_camera(self) -> RenderRequest:
        if self.camera is not None:
            mixed = sorted({"yaw", "pitch", "radius", "fov_deg"} & self.model_fields_set)
            if mixed:
                raise ValueError(
                    f"give the camera either as 'camera' (25 numbers) or as yaw/pitch/radius/"
                    f"fov_deg, not both (got camera and {', '.join(mixed)})"
                )
        return self


class OrbitRequest(LatentFields):
    """GET /orbit query: a turntable of one identity."""

    frames: int = Field(48, ge=2, description="number of frames")
    fps: int = Field(24, ge=1, description="frames per second")
    yaw_amplitude: float = Field(30.0, ge=0, le=180, description="degrees either side of frontal")
    pitch_amplitude: float = Field(5.0, ge=0, lt=90, description="degrees up and down")
    radius: float | None = Field(None, gt=0)
    fov_deg: float | None = Field(None, gt=0, lt=180)
    format: VideoFormatName = "mp4"


def parse_query(params: dict[str, str]) -> dict[str, Any]:
    """Query strings -> field values: vectors are comma-separated numbers."""
    values: dict[str, Any] = dict(params)
    for name in LIST_FIELDS:
        if name in values:
            text = values[name].strip().strip("[]")
            values[name] = [part for part in (p.strip() for p in text.split(",")) if part]
    return values
