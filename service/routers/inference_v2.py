"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST protocol) under /v2.

The same three models, with the same names, tensors, datatypes and shapes, as the Triton model
repository that ``distill3d export triton`` writes (``models.runtime.triton_names``):

- ``distill3d``: the student, ``w`` [-1, w_dim] and ``c`` [-1, 25] -> ``image`` [-1, 3, R, R];
- ``distill3d_mapping``: ``z`` [-1, z_dim] and ``truncation_psi`` [-1, 1] -> ``w`` [-1, w_dim],
  conditioned on the frontal camera as the exported graph is;
- ``distill3d_z``: the ensemble of the two, ``z``, ``truncation_psi`` and ``c`` -> ``image``.

Renders go through the service's batchers like every other route (so batching, queue limits,
deadlines, the pose-range check and the fallback to the teacher apply), and are limited as the
JSON routes are. ``image`` is FP32 NCHW in [-1, 1] as the graph's, but comes from the 8-bit
render every other route returns: each value is the centre of its 8-bit bin, so converting it
back to uint8 the way EG3D does gives the /render pixels exactly, and it is within 1/255 of
what the graph itself computes. ``image_raw`` (the low-resolution render) is not served: the
batchers return final images only.

Errors are the protocol's ``{"error": "..."}``: 400 for a bad request, 404 for an unknown model
or version, 429 (queue full) and 503 (loading, or the model failed) with Retry-After, 504 past
the request deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ... import __version__
from ...models.camera import Camera
from ...models.runtime.triton_names import (
    CAMERA_LABEL_SIZE,
    DATATYPE,
    IMAGE,
    MODEL_VERSION,
    TRUNCATION_PSI,
    C,
    W,
    Z,
    model_names,
)
from ..dependencies import Service
from ..engine import BackendFailed, ClientDisconnected, DeadlineExceeded, QueueFull
from ..errors import Busy, NotReady, RequestError
from ..oip import (
    EXTENSIONS,
    HEADER_LENGTH,
    InferenceRequest,
    ModelMetadata,
    OutputChoice,
    ProtocolError,
    ServerMetadata,
    decode_inputs,
    decompress,
    encode_response,
    inline_schema,
    parse_request,
    requested_outputs,
)
from ..render_service import Identity, RenderService, label

router = APIRouter(prefix="/v2", tags=["inference (v2)"])

NAMES = model_names()
SERVER_NAME = "distill3d"
# The JSON routes' bounds (service/schemas.py): latents and camera labels stay small enough that
# float32 arithmetic on them cannot overflow; truncation as /render takes it.
MAX_ABS = 1e4
PSI_RANGE = (-1.0, 2.0)
LOADING_RETRY_S = 5


@dataclass(frozen=True)
class ProtocolModel:
    """One model as the protocol describes it; dims exclude the batch axis."""

    name: str
    platform: str
    inputs: dict[str, list[int]]
    outputs: dict[str, list[int]]

    def metadata(self) -> ModelMetadata:
        def tensors(spec: dict[str, list[int]]) -> list[dict[str, Any]]:
            return [{"name": k, "datatype": DATATYPE, "shape": [-1, *v]} for k, v in spec.items()]

        return ModelMetadata.model_validate(
            {
                "name": self.name,
                "versions": [MODEL_VERSION],
                "platform": self.platform,
                "inputs": tensors(self.inputs),
                "outputs": tensors(self.outputs),
            }
        )


def protocol_models(service: RenderService) -> dict[str, ProtocolModel]:
    """The three models of the loaded service (503 while it loads)."""
    if not service.ready or service.models is None or not service.batchers:
        raise ProtocolError("models are still loading", 503, LOADING_RETRY_S)
    m = service.models
    role = "student" if "student" in service.batchers else "volumetric"
    backend = service.batchers[role].backend
    res = backend.img_resolution
    image = {IMAGE: [3, res, res]}
    return {
        NAMES.student: ProtocolModel(
            NAMES.student,
            f"distill3d_{backend.name}",
            {W: [m.w_dim], C: [CAMERA_LABEL_SIZE]},
            image,
        ),
        NAMES.mapping: ProtocolModel(
            NAMES.mapping, "distill3d_mapping", {Z: [m.z_dim], TRUNCATION_PSI: [1]}, {W: [m.w_dim]}
        ),
        NAMES.pipeline: ProtocolModel(
            NAMES.pipeline,
            "ensemble",
            {Z: [m.z_dim], TRUNCATION_PSI: [1], C: [CAMERA_LABEL_SIZE]},
            image,
        ),
    }


def find_model(service: RenderService, name: str, version: str | None) -> ProtocolModel:
    models = protocol_models(service)
    if name not in models:
        raise ProtocolError(f"unknown model {name!r}; this server has {', '.join(models)}", 404)
    if version is not None and version != MODEL_VERSION:
        raise ProtocolError(
            f"unknown version {version!r} of model {name!r}; it has {MODEL_VERSION}", 404
        )
    return models[name]


def error_response(exc: ProtocolError) -> JSONResponse:
    headers = {} if exc.retry_after_s is None else {"Retry-After": str(exc.retry_after_s)}
    return JSONResponse({"error": str(exc)}, exc.status, headers=headers)


async def answer(work: Callable[[], Awaitable[Response]]) -> Response:
    """``work``'s response, or the protocol's error body for every error the service types
    (the app-wide handlers answer ``{"detail": ...}``, which protocol clients do not read)."""
    try:
        return await work()
    except ProtocolError as exc:
        return error_response(exc)
    except RequestError as exc:  # the service's own checks (pose range, lengths)
        return error_response(ProtocolError(f"{exc.field}: {exc}", 400))
    except (QueueFull, Busy) as exc:
        return error_response(ProtocolError(str(exc), 429, exc.retry_after_s))
    except NotReady:
        return error_response(ProtocolError("models are still loading", 503, LOADING_RETRY_S))
    except BackendFailed as exc:
        return error_response(ProtocolError(f"rendering failed: {exc}", 503, LOADING_RETRY_S))
    except DeadlineExceeded as exc:
        message = f"render timed out ({exc}); the service is overloaded, retry later"
        return error_response(ProtocolError(message, 504, LOADING_RETRY_S))
    except ClientDisconnected:
        return Response(status_code=499)


# -- server and model metadata, health --------------------------------------------------------


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> dict[str, Any]:
    """Server metadata: name, version and the protocol extensions supported."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


@router.get("/health/live")
async def server_live() -> dict[str, bool]:
    """Live: the process answers (open without an API key, like /healthz)."""
    return {"live": True}


@router.get("/health/ready")
async def server_ready(service: Service) -> JSONResponse:
    """Ready: models loaded and warm (open without an API key, like /readyz); 503 before."""
    if not service.ready:
        return JSONResponse({"ready": False}, 503, headers={"Retry-After": str(LOADING_RETRY_S)})
    return JSONResponse({"ready": True})


async def _metadata(service: RenderService, name: str, version: str | None) -> Response:
    async def work() -> Response:
        model = find_model(service, name, version)
        return JSONResponse(model.metadata().model_dump())

    return await answer(work)


async def _model_ready(service: RenderService, name: str, version: str | None) -> Response:
    async def work() -> Response:
        find_model(service, name, version)
        return JSONResponse({"name": name, "ready": True})

    return await answer(work)


@router.get("/models/{model_name}", response_model=ModelMetadata)
async def model_metadata(service: Service, model_name: str) -> Response:
    """Model metadata: versions, platform, and each input's and output's name, datatype and
    shape (-1 for the batch axis), as in the exported Triton repository."""
    return await _metadata(service, model_name, None)


@router.get("/models/{model_name}/versions/{model_version}", response_model=ModelMetadata)
async def model_version_metadata(service: Service, model_name: str, model_version: str) -> Response:
    """Model metadata of one version (the repository has version 1 only)."""
    return await _metadata(service, model_name, model_version)


@router.get("/models/{model_name}/ready")
async def model_ready(service: Service, model_name: str) -> Response:
    """200 when the model can take requests; 404 unknown, 503 while loading."""
    return await _model_ready(service, model_name, None)


@router.get("/models/{model_name}/versions/{model_version}/ready")
async def model_version_ready(service: Service, model_name: str, model_version: str) -> Response:
    """Readiness of one version."""
    return await _model_ready(service, model_name, model_version)


# -- inference --------------------------------------------------------------------------------


def check_inputs(
    model: ProtocolModel, arrays: dict[str, np.ndarray], max_batch: int
) -> dict[str, np.ndarray]:
    """The model's inputs, each [batch, *dims] FP32 with one batch size for all, within the
    service's limits; float32 arrays by name."""
    missing = [k for k in model.inputs if k not in arrays]
    extra = [k for k in arrays if k not in model.inputs]
    if missing or extra:
        wanted = ", ".join(model.inputs)
        raise ProtocolError(
            f"model {model.name} takes inputs {wanted}; "
            + "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unknown {', '.join(extra)}" if extra else "",
                )
                if part
            )
        )
    batches = set()
    out = {}
    for name, dims in model.inputs.items():
        array = arrays[name]
        if array.dtype != np.dtype("<f4"):
            raise ProtocolError(f"input {name} must be {DATATYPE}")
        if array.ndim != len(dims) + 1 or list(array.shape[1:]) != dims:
            raise ProtocolError(
                f"input {name} has shape {list(array.shape)}; the model takes {[-1, *dims]}"
            )
        if np.abs(array).max(initial=0.0) > MAX_ABS:
            raise ProtocolError(f"input {name} has elements beyond +-{MAX_ABS:g}")
        batches.add(array.shape[0])
        out[name] = array
    if len(batches) != 1:
        raise ProtocolError(f"inputs disagree on the batch size: {sorted(batches)}")
    (batch,) = batches
    if not 1 <= batch <= max_batch:
        raise ProtocolError(f"batch size {batch} must be between 1 and {max_batch}")
    if TRUNCATION_PSI in out:
        psi = out[TRUNCATION_PSI]
        lo, hi = PSI_RANGE
        if psi.min() < lo or psi.max() > hi:
            raise ProtocolError(f"{TRUNCATION_PSI} must be within [{lo:g}, {hi:g}]")
    return out


def to_protocol_image(images: list[np.ndarray]) -> np.ndarray:
    """uint8 [H, W, 3] renders -> FP32 [B, 3, H, W] in [-1, 1], each value its 8-bit bin's
    centre, so ``(x * 127.5 + 128)`` truncated to uint8 gives the render's pixel back."""
    stacked = np.stack(images).astype(np.float32)
    return np.ascontiguousarray(((stacked - 127.5) / 127.5).transpose(0, 3, 1, 2))


async def _map(service: RenderService, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """z -> truncated w with the frontal conditioning camera, as the exported mapping graph.
    No image is rendered, so nothing queues behind a batcher; it runs off the event loop."""
    assert service.models is not None
    m = service.models
    z = np.ascontiguousarray(inputs[Z])
    psi = np.ascontiguousarray(inputs[TRUNCATION_PSI][:, 0])
    frontal = np.repeat(label(m.camera.frontal()), len(z), axis=0)

    def run() -> np.ndarray:
        return m.mapper.truncate(m.mapper.map(z, frontal), psi).astype(np.float32)

    return await asyncio.get_running_loop().run_in_executor(None, run)


async def _render(
    service: RenderService, model: ProtocolModel, inputs: dict[str, np.ndarray], request: Request
) -> tuple[np.ndarray, dict[str, Any]]:
    """The images of a student or pipeline request, through the batchers."""
    cameras = []
    for row in inputs[C]:
        try:
            cameras.append(Camera.from_label(row))
        except ValueError as exc:
            raise ProtocolError(f"input {C}: {exc}") from None
    if model.name == NAMES.student:
        identities = [Identity(1.0, w=w) for w in inputs[W]]
    else:
        psi = inputs[TRUNCATION_PSI][:, 0]
        identities = [Identity(float(p), z=z) for z, p in zip(inputs[Z], psi, strict=True)]
    role, reason = service.choose("auto", cameras)
    if reason:
        service.metrics.fallbacks.labels(reason).inc()
    items = [service.item(cam, None, ident) for cam, ident in zip(cameras, identities, strict=True)]
    results, failed = await service.render(items, role, request.is_disconnected)
    reason = failed or reason
    details: dict[str, Any] = {
        "backend": results[0].backend,
        "batch_size": max(r.batch_size for r in results),
    }
    if reason:
        details["fallback"] = reason.split(":")[0]
    image = await service.encode(lambda: to_protocol_image([r.image for r in results]), "v2")
    return image, details


async def _infer(
    service: RenderService, name: str, version: str | None, request: Request
) -> Response:
    async def work() -> Response:
        model = find_model(service, name, version)
        limit = service.settings.max_body_bytes
        body = decompress(await request.body(), request.headers.get("content-encoding"), limit)
        req, tail = parse_request(body, request.headers.get(HEADER_LENGTH))
        inputs = check_inputs(model, decode_inputs(req, tail), service.settings.max_batch_size)
        choices = requested_outputs(req, list(model.outputs))
        headers: dict[str, str] = {}
        if model.name == NAMES.mapping:
            tensors = {W: await _map(service, inputs)}
            details: dict[str, Any] = {}
        else:
            image, details = await _render(service, model, inputs, request)
            tensors = {IMAGE: image}
            headers["X-Backend"] = details["backend"]
        outputs: list[tuple[OutputChoice, np.ndarray]] = [(c, tensors[c.name]) for c in choices]
        content, header_length = await service.encode(
            lambda: encode_response(model.name, MODEL_VERSION, req.id, outputs, details), "v2"
        )
        if header_length is None:
            return Response(content, media_type="application/json", headers=headers)
        headers[HEADER_LENGTH] = str(header_length)
        return Response(content, media_type="application/octet-stream", headers=headers)

    return await answer(work)


INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "An inference request. With the binary tensor data extension the JSON "
        f"header is followed by the raw tensors, and {HEADER_LENGTH} gives its length.",
        "content": {"application/json": {"schema": inline_schema(InferenceRequest)}},
    }
}


@router.post("/models/{model_name}/infer", openapi_extra=INFER_BODY)
async def infer(service: Service, model_name: str, request: Request) -> Response:
    """Run the model on the request's inputs; outputs in JSON or, where asked
    (``binary_data``, ``binary_data_output``), in the binary tail."""
    return await _infer(service, model_name, None, request)


@router.post("/models/{model_name}/versions/{model_version}/infer", openapi_extra=INFER_BODY)
async def infer_version(
    service: Service, model_name: str, model_version: str, request: Request
) -> Response:
    """Inference on one version of the model."""
    return await _infer(service, model_name, model_version, request)
