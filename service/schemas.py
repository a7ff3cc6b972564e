"""Request bodies and query parameters of the API, validated by pydantic.

Every limit that does not depend on the loaded models is declared here, so that it is in the
OpenAPI schema too (clients and fuzzers see what is valid): finite numbers of bounded size, fixed
vector lengths, frame/fps/quality ranges, enums, and radius/field-of-view ranges that make a
camera at all. Rules that depend on the loaded models (z/w lengths, num_ws, each model's pose
range) or on settings (max_frames, max_fps) are given in the field descriptions, checked by the
service and answered with the same 422 shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BackendChoice = Literal["auto", "student", "volumetric"]
ImageFormat = Literal["png", "jpeg", "webp"]
VideoFormatName = Literal["mp4", "webm", "gif"]

LIST_FIELDS = ("z", "w", "camera", "conditioning_camera")
NESTED_FIELDS = ("mix", "interpolate")  # query names mix_seed, interpolate_t, ...
IDENTITY_FIELDS = ("seed", "z", "w", "ws")

# Latent and camera-label entries: finite and bounded, so that float32 arithmetic on them cannot
# overflow to inf/NaN (a latent is ~N(0, 1), a camera label holds a rotation, a translation of
# about the radius and normalised intrinsics).
LatentNumber = Annotated[float, Field(ge=-1e4, le=1e4)]
LabelNumber = Annotated[float, Field(ge=-1e4, le=1e4)]
MAX_LATENT_LENGTH = 4096  # z_dim / w_dim of any model served (EG3D: 512)
MAX_NUM_WS = 64  # synthesis layers (EG3D at 512 px: 14)
# Cameras: the distance must leave the camera off the pivot and the field of view must give a
# finite focal length (1 / (2 tan(fov / 2))); each model accepts a narrower range around its
# training camera (GET /v1/models, pose_range).
MIN_RADIUS, MAX_RADIUS = 1e-3, 1e3
MIN_FOV_DEG, MAX_FOV_DEG = 0.1, 179.0
# Ceilings of the max_frames / max_fps settings; the service's own limits are those settings.
FRAMES_CEILING, FPS_CEILING = 10_000, 240

LatentVector = Annotated[list[LatentNumber], Field(min_length=1, max_length=MAX_LATENT_LENGTH)]
CameraLabel = Annotated[list[LabelNumber], Field(min_length=25, max_length=25)]
PerLayer = Annotated[list[LatentVector], Field(min_length=1, max_length=MAX_NUM_WS)]
RADIUS_DOC = (
    f"camera distance from the pivot, {MIN_RADIUS:g}..{MAX_RADIUS:g}; default the model's. Each "
    "model accepts +-10% of its training radius (GET /v1/models)"
)
FOV_DOC = (
    f"horizontal field of view in degrees, {MIN_FOV_DEG:g}..{MAX_FOV_DEG:g}; default the "
    "model's. Each model accepts -25% / +33% of its training field of view (GET /v1/models)"
)


def _no_booleans(values: Any) -> Any:
    """No field here is a boolean, but pydantic's lax mode reads true/false as 1/0 (and so as a
    seed or an angle): a JSON boolean where a number belongs is refused, in lists too."""
    if not isinstance(values, dict):
        return values
    for name, value in values.items():
        items = value if isinstance(value, list) else [value]
        items = [x for item in items for x in (item if isinstance(item, list) else [item])]
        if any(isinstance(x, bool) for x in items):
            raise ValueError(f"{name}: true/false is not a number")
    return values


class _Request(BaseModel):
    """Shared rules: unknown fields and non-finite numbers are errors, booleans are no numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _refuse_booleans(cls, values: Any) -> Any:
        return _no_booleans(values)


def _exactly_one_identity(model: BaseModel) -> None:
    given = [name for name in IDENTITY_FIELDS if getattr(model, name) is not None]
    if len(given) != 1:
        raise ValueError(
            f"give exactly one of seed, z, w or ws (got {', '.join(given) if given else 'none'})"
        )


class OtherLatent(_Request):
    """A second identity for style mixing or interpolation: one of seed, z, w or ws."""

    seed: int | None = Field(None, ge=0, lt=2**32)
    z: LatentVector | None = Field(None, description="z_dim numbers (the model's; /v1/models)")
    w: LatentVector | None = Field(None, description="w_dim numbers (the model's; /v1/models)")
    ws: PerLayer | None = Field(None, description="per-layer w, [num_ws][w_dim]")

    @model_validator(mode="after")
    def _one_latent(self) -> OtherLatent:
        _exactly_one_identity(self)
        return self


class MixSpec(OtherLatent):
    """Style mixing: layers [0, cutoff) from the main latent, [cutoff, num_ws) from this one."""

    cutoff: int = Field(
        ...,
        ge=0,
        le=MAX_NUM_WS,
        description="first layer taken from this latent; at most the model's num_ws",
    )


class InterpolateSpec(OtherLatent):
    """Interpolation in W: (1 - t) x main + t x this latent."""

    t: float = Field(..., ge=0.0, le=1.0)


class LatentFields(_Request):
    """Exactly one of seed, z, w or ws names the identity; mix and interpolate edit it in W."""

    seed: int | None = Field(None, ge=0, lt=2**32, description="EG3D's seed -> z convention")
    z: LatentVector | None = Field(
        None, description="latent z: the model's z_dim numbers (GET /v1/models, latent)"
    )
    w: LatentVector | None = Field(
        None, description="latent w: the model's w_dim numbers (GET /v1/models, latent)"
    )
    ws: PerLayer | None = Field(
        None,
        description="per-layer w (a W+ latent from /invert): the model's num_ws rows of w_dim",
    )
    mix: MixSpec | None = Field(None, description="style mixing with a second latent")
    interpolate: InterpolateSpec | None = Field(
        None, description="interpolation towards a second latent (applied before mix)"
    )
    truncation: float | None = Field(
        None, ge=-1.0, le=2.0, description="psi; default 0.7 for seed/z, 1 (none) for w"
    )
    conditioning_camera: CameraLabel | None = Field(
        None,
        description="camera label (25 numbers: 4x4 cam-to-world, 3x3 normalised intrinsics) "
        "that conditions the mapping (fixes identity); default frontal; seed or z only",
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

    yaw: float = Field(
        0.0,
        ge=-180,
        le=180,
        description="degrees; positive moves the camera to +x. Each model accepts its own range "
        "(GET /v1/models, pose_range; the teacher |yaw| <= 90); outside the student's, "
        "backend=auto renders with the teacher",
    )
    pitch: float = Field(
        0.0,
        gt=-90,
        lt=90,
        description="degrees of elevation; each model's range as for yaw (the teacher "
        "|pitch| <= 45)",
    )
    radius: float | None = Field(None, ge=MIN_RADIUS, le=MAX_RADIUS, description=RADIUS_DOC)
    fov_deg: float | None = Field(None, ge=MIN_FOV_DEG, le=MAX_FOV_DEG, description=FOV_DOC)
    camera: CameraLabel | None = Field(
        None, description="raw 25-number label instead of yaw/pitch (poses checked as for yaw)"
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

    frames: int = Field(
        48,
        ge=2,
        le=FRAMES_CEILING,
        description="number of frames; at most the service's max_frames (default 240)",
    )
    fps: int = Field(
        24,
        ge=1,
        le=FPS_CEILING,
        description="frames per second; at most the service's max_fps (default 60)",
    )
    yaw_amplitude: float = Field(
        30.0,
        ge=0,
        le=180,
        description="degrees either side of frontal; the frames' poses must lie in a loaded "
        "model's range (GET /v1/models, pose_range)",
    )
    pitch_amplitude: float = Field(5.0, ge=0, lt=90, description="degrees up and down")
    pitch_center: float = Field(
        0.0,
        ge=-89,
        le=89,
        description="the pitch the orbit swings around, in degrees: a latent file's fitted "
        "'pitch', as `distill3d orbit --latent` uses it (0 for seeds); frames are clipped to "
        "+-89 degrees",
    )
    radius: float | None = Field(None, ge=MIN_RADIUS, le=MAX_RADIUS, description=RADIUS_DOC)
    fov_deg: float | None = Field(None, ge=MIN_FOV_DEG, le=MAX_FOV_DEG, description=FOV_DOC)
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


class InvertRequest(_Request):
    """POST /invert parameters (query string or form fields beside the image)."""

    yaw: float | None = Field(None, ge=-180, le=180, description="fix the camera (degrees)")
    pitch: float | None = Field(None, gt=-80, lt=80, description="with yaw; default 0")
    steps: int | None = Field(
        None,
        ge=1,
        description="optimisation steps; default the service's invert_steps (200), at most "
        "its max_invert_steps (1000)",
    )
    space: Literal["w", "w+"] = Field("w", description="one w, or one per synthesis layer")
    backend: BackendChoice = Field("auto", description="fit through the student (auto) or teacher")

    @model_validator(mode="after")
    def _yaw_with_pitch(self) -> InvertRequest:
        if self.pitch is not None and self.yaw is None:
            raise ValueError(
                "pitch without yaw: give yaw (and pitch) to fix the camera, or neither"
            )
        return self


# -- The teacher's geometry: depth maps and meshes (GET/POST /depth, GET/POST /mesh) ---------

DepthFormat = Literal["png16", "npy"]
MeshFormat = Literal["glb", "ply", "obj"]
# The API's mesh grid: models/mesh.py allows 512, but a 512^3 grid is ~1 GiB of work memory and
# minutes on a CPU; a request's cost must stay small next to the service's other work.
MIN_API_MESH_RESOLUTION, MAX_API_MESH_RESOLUTION = 16, 256
DEFAULT_API_MESH_RESOLUTION = 128


class DepthRequest(RenderRequest):
    """GET /depth query (or POST /depth body): the teacher's depth map of one latent seen from
    one camera, with the same latent, edit and camera fields as /render."""

    format: DepthFormat = Field(  # type: ignore[assignment]
        "png16",
        description="png16: 16-bit greyscale, ray distance = value x 0.0001 world units, 0 = no "
        "surface (opacity < 0.5); npy: float32 [H, W] ray distances in world units, every pixel",
    )
    quality: int = Field(90, ge=1, le=100, description="not used: both depth formats are lossless")


class MeshRequest(LatentFields):
    """GET /mesh query (or POST /mesh body): the teacher's surface of one latent as a coloured
    triangle mesh. A student has no geometry: the teacher extracts it whatever ``backend`` says
    (the answer's ``X-Backend-Note`` says so when the student was asked for)."""

    resolution: int | None = Field(
        None,
        ge=MIN_API_MESH_RESOLUTION,
        le=MAX_API_MESH_RESOLUTION,
        description="grid cells a side over the teacher's box, at most the service's "
        "mesh_max_resolution (256 unless lowered); default 128 or that limit if lower. Work "
        "and memory grow as its cube",
    )
    level: float = Field(
        10.0, ge=-1e4, le=1e4, description="raw sigma level of the surface (EG3D's 10)"
    )
    format: MeshFormat = Field(
        "glb", description="glb (binary glTF, COLOR_0), ply (binary, vertex colours) or obj"
    )
