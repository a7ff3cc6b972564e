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
NESTED_FIELDS = ("mix", "interpolate")  # query names mix_seed, interpolate_t, ...
IDENTITY_FIELDS = ("seed", "z", "w", "ws")


def _exactly_one_identity(model: BaseModel) -> None:
    given = [name for name in IDENTITY_FIELDS if getattr(model, name) is not None]
    if len(given) != 1:
        raise ValueError(
            f"give exactly one of seed, z, w or ws (got {', '.join(given) if given else 'none'})"
        )


class OtherLatent(BaseModel):
    """A second identity for style mixing or interpolation: one of seed, z, w or ws."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seed: int | None = Field(None, ge=0, lt=2**32)
    z: list[float] | None = None
    w: list[float] | None = None
    ws: list[list[float]] | None = Field(None, description="per-layer w, [num_ws][w_dim]")

    @model_validator(mode="after")
    def _one_latent(self) -> OtherLatent:
        _exactly_one_identity(self)
        return self


class MixSpec(OtherLatent):
    """Style mixing: layers [0, cutoff) from the main latent, [cutoff, num_ws) from this one."""

    cutoff: int = Field(..., ge=0, description="first layer taken from this latent")


class InterpolateSpec(OtherLatent):
    """Interpolation in W: (1 - t) x main + t x this latent."""

    t: float = Field(..., ge=0.0, le=1.0)


class LatentFields(BaseModel):
    """Exactly one of seed, z, w or ws names the identity; mix and interpolate edit it in W."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seed: int | None = Field(None, ge=0, lt=2**32, description="EG3D's seed -> z convention")
    z: list[float] | None = Field(None, description="latent z, z_dim numbers")
    w: list[float] | None = Field(None, description="latent w, w_dim numbers")
    ws: list[list[float]] | None = Field(
        None, description="per-layer w (a W+ latent from /invert), num_ws rows of w_dim"
    )
    mix: MixSpec | None = Field(None, description="style mixing with a second latent")
    interpolate: InterpolateSpec | None = Field(
        None, description="interpolation towards a second latent (applied before mix)"
    )
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
        _exactly_one_identity(self)
        return self

    def psi(self) -> float:
        """Truncation: as given, else 0.7 for seed/z and 1 (none) for a w or ws given as is."""
        if self.truncation is not None:
            return self.truncation
        return 1.0 if self.w is not None or self.ws is not None else 0.7


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
    """GET /orbit query (or POST /orbit body, for ws): a turntable of one identity."""

    frames: int = Field(48, ge=2, description="number of frames")
    fps: int = Field(24, ge=1, description="frames per second")
    yaw_amplitude: float = Field(30.0, ge=0, le=180, description="degrees either side of frontal")
    pitch_amplitude: float = Field(5.0, ge=0, lt=90, description="degrees up and down")
    radius: float | None = Field(None, gt=0)
    fov_deg: float | None = Field(None, gt=0, lt=180)
    format: VideoFormatName = "mp4"


def _numbers(text: str) -> list[str]:
    return [part for part in (p.strip() for p in text.strip().strip("[]").split(",")) if part]


def parse_query(params: dict[str, str]) -> dict[str, Any]:
    """Query strings -> field values: vectors are comma-separated numbers; ``mix_seed=3`` and
    ``interpolate_t=0.5`` fill the nested ``mix`` / ``interpolate`` objects."""
    values: dict[str, Any] = dict(params)
    for name in LIST_FIELDS:
        if name in values:
            values[name] = _numbers(values[name])
    for group in NESTED_FIELDS:
        prefix = f"{group}_"
        nested = {k[len(prefix) :]: values.pop(k) for k in list(values) if k.startswith(prefix)}
        for name in ("z", "w"):
            if name in nested:
                nested[name] = _numbers(nested[name])
        if nested:
            values[group] = nested
    return values


class InvertRequest(BaseModel):
    """POST /invert parameters (query string or form fields beside the image)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    yaw: float | None = Field(None, ge=-180, le=180, description="fix the camera (degrees)")
    pitch: float | None = Field(None, gt=-80, lt=80, description="with yaw; default 0")
    steps: int | None = Field(None, ge=1, description="optimisation steps (default: settings)")
    space: Literal["w", "w+"] = Field("w", description="one w, or one per synthesis layer")
    backend: BackendChoice = Field("auto", description="fit through the student (auto) or teacher")

    @model_validator(mode="after")
    def _yaw_with_pitch(self) -> InvertRequest:
        if self.pitch is not None and self.yaw is None:
            raise ValueError(
                "pitch without yaw: give yaw (and pitch) to fix the camera, or neither"
            )
        return self
