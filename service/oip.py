"""Open Inference Protocol (KServe v2, Triton's HTTP/REST protocol): messages and tensors.

The service answers the protocol beside its own routes so that a client written for the Triton
model repository of ``distill3d export triton`` (``tritonclient.http``, KServe's clients, curl)
works against ``distill3d serve`` unchanged. This module is the protocol alone, with no model in
it: the request and metadata messages, tensors decoded from JSON ``data`` or from the binary
tensor data extension (a JSON header of ``Inference-Header-Content-Length`` bytes followed by the
raw tensors), and responses encoded the same two ways. The routes
(``routers/inference_v2.py``) decide what each model takes.

Inputs are validated strictly, as Triton does: JSON numbers only (no numeric strings, no NaN or
Infinity tokens), an element count that matches the shape, a binary size that matches shape and
datatype. A malformed request is a :class:`ProtocolError` (400 with ``{"error": ...}``).
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data",)
MAX_DIMS = 8
MAX_TENSORS = 16
MAX_ELEMENTS = 1 << 26  # per tensor; the body limit bounds real requests far below this

# Protocol datatype -> numpy dtype (little-endian, as the binary extension lays tensors out).
# BYTES (length-prefixed strings) and BF16 are not taken: no model here has such a tensor.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


class ProtocolError(Exception):
    """A request the protocol answers with ``{"error": message}`` and ``status``.

    ``retry_after_s`` is set for overload (429/503), so a client knows when to come back.
    """

    def __init__(self, message: str, status: int = 400, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


# -- messages ---------------------------------------------------------------------------------


class _Strict(BaseModel):
    # Strict: the schema says what is accepted, and nothing else is (no "3" for 3, no 1.0 for 1),
    # so what a client gets past the schema is what the route works on.
    model_config = ConfigDict(strict=True)


class TensorMetadata(_Strict):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for the (dynamic) batch axis")


class ModelMetadata(_Strict):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(_Strict):
    name: str
    version: str
    extensions: list[str]


class RequestInput(_Strict):
    name: str = Field(max_length=256)
    shape: list[int] = Field(max_length=MAX_DIMS)
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] | None = Field(
        None, description='{"binary_data_size": N}: the tensor is N bytes of the binary tail'
    )
    data: list[Any] | None = Field(None, description="row-major elements, flat or nested")


class RequestOutput(_Strict):
    name: str = Field(max_length=256)
    parameters: dict[str, Any] | None = Field(
        None, description='{"binary_data": true}: return the tensor in the binary tail'
    )


class InferenceRequest(_Strict):
    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] | None = Field(
        None, description='{"binary_data_output": true}: every output in the binary tail'
    )
    inputs: list[RequestInput] = Field(min_length=1, max_length=MAX_TENSORS)
    outputs: list[RequestOutput] | None = Field(None, max_length=MAX_TENSORS)


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined, for a route's ``openapi_extra``
    (the body is read raw, so FastAPI would not add the model's components itself)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


# -- requests ---------------------------------------------------------------------------------


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON number")


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body without its ``Content-Encoding`` (gzip or deflate, as tritonclient can send),
    inflated to at most ``limit`` bytes: a small compressed body cannot grow past the limit."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    kinds = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
    wbits = kinds.get(encoding.strip().lower())
    if wbits is None:
        raise ProtocolError(f"unsupported Content-Encoding {encoding!r} (gzip, deflate)", 415)
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"the body is not valid {encoding} data: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise ProtocolError(f"the decompressed body is larger than {limit} bytes", 413)
    return data


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The request's JSON header as a message, and the binary tail after it (empty without
    ``Inference-Header-Content-Length``)."""
    if header_length is None:
        header, tail = body, b""
    else:
        if not header_length.strip().isdigit():
            raise ProtocolError(f"{HEADER_LENGTH} must be a byte count, got {header_length!r}")
        size = int(header_length)
        if size > len(body):
            raise ProtocolError(f"{HEADER_LENGTH} is {size} but the body has {len(body)} bytes")
        header, tail = body[:size], body[size:]
    try:
        message = json.loads(header, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"the request header is not valid JSON: {exc}") from None
    try:
        return InferenceRequest.model_validate(message), tail
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False)[:5]
        )
        raise ProtocolError(f"malformed inference request: {problems}") from None


def _elements(shape: list[int], name: str) -> int:
    if any(d < 0 for d in shape):
        raise ProtocolError(f"input {name}: shape {shape} has a negative dimension")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise ProtocolError(f"input {name}: {count} elements is more than {MAX_ELEMENTS}")
    return count


def _flatten(data: list[Any], datatype: str, name: str) -> list[Any]:
    """The elements of nested lists, row-major, each a JSON number (or boolean for BOOL)."""
    wanted: tuple[type, ...] = (bool,) if datatype == "BOOL" else (int, float)
    out: list[Any] = []
    # (list, next index, depth): an explicit stack, so neither deep nesting nor many small
    # lists costs more than one step per element.
    stack: list[tuple[list[Any], int, int]] = [(data, 0, 0)]
    while stack:
        items, start, depth = stack.pop()
        for i in range(start, len(items)):
            value = items[i]
            if isinstance(value, list):
                if depth + 1 > MAX_DIMS:
                    raise ProtocolError(f"input {name}: data nested deeper than {MAX_DIMS}")
                stack.append((items, i + 1, depth))  # the rest of this list, after the nested
                stack.append((value, 0, depth + 1))
                break
            if type(value) not in wanted:
                raise ProtocolError(
                    f"input {name}: a JSON {type(value).__name__} is not a {datatype} element"
                )
            out.append(value)
    return out


def decode_inputs(request: InferenceRequest, tail: bytes) -> dict[str, np.ndarray]:
    """Every input as a numpy array of its shape and datatype, from ``data`` or the tail."""
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        name = tensor.name
        if name in arrays:
            raise ProtocolError(f"input {name} is given twice")
        dtype = DTYPES.get(tensor.datatype)
        if dtype is None:
            raise ProtocolError(f"input {name}: unsupported datatype {tensor.datatype!r}")
        count = _elements(tensor.shape, name)
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise ProtocolError(f"input {name}: binary_data_size must be a byte count")
            if tensor.data is not None:
                raise ProtocolError(f"input {name}: give data or binary_data_size, not both")
            if size != count * dtype.itemsize:
                raise ProtocolError(
                    f"input {name}: binary_data_size {size} does not match shape {tensor.shape} "
                    f"of {tensor.datatype} ({count * dtype.itemsize} bytes)"
                )
            if offset + size > len(tail):
                raise ProtocolError(f"input {name}: the binary tail ends before its {size} bytes")
            # A copy: the models take writable arrays (torch.from_numpy warns on read-only).
            array = np.frombuffer(tail, dtype, count, offset).reshape(tensor.shape).copy()
            offset += size
        else:
            if tensor.data is None:
                raise ProtocolError(f"input {name}: no data and no binary_data_size")
            values = _flatten(tensor.data, tensor.datatype, name)
            if len(values) != count:
                raise ProtocolError(
                    f"input {name}: {len(values)} elements for shape {tensor.shape} ({count})"
                )
            try:
                array = np.array(values, dtype).reshape(tensor.shape)
            except (OverflowError, ValueError) as exc:
                raise ProtocolError(f"input {name}: {exc}") from None
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ProtocolError(f"input {name} has NaN or infinite elements")
        arrays[name] = array
    if offset != len(tail):
        raise ProtocolError(f"{len(tail) - offset} bytes of the binary tail belong to no input")
    return arrays


@dataclass(frozen=True)
class OutputChoice:
    """One output to return, and whether in the binary tail."""

    name: str
    binary: bool


def _flag(parameters: dict[str, Any] | None, key: str, default: bool) -> bool:
    value = (parameters or {}).get(key, default)
    if type(value) is not bool:
        raise ProtocolError(f"parameter {key} must be true or false")
    return value


def requested_outputs(request: InferenceRequest, available: list[str]) -> list[OutputChoice]:
    """The outputs to return (all of ``available`` when the request names none), each binary
    when its ``binary_data`` (or else the request's ``binary_data_output``) says so."""
    default = _flag(request.parameters, "binary_data_output", False)
    if request.outputs is None:
        return [OutputChoice(name, default) for name in available]
    choices = []
    for output in request.outputs:
        if output.name not in available:
            raise ProtocolError(
                f"unknown output {output.name!r}; the model has {', '.join(available)}"
            )
        if (output.parameters or {}).get("classification"):
            raise ProtocolError("the classification extension is not supported")
        choices.append(OutputChoice(output.name, _flag(output.parameters, "binary_data", default)))
    return choices


# -- responses --------------------------------------------------------------------------------


def datatype_of(array: np.ndarray) -> str:
    for name, dtype in DTYPES.items():
        if array.dtype == dtype:
            return name
    raise ValueError(f"no protocol datatype for {array.dtype}")


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[OutputChoice, np.ndarray]],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length (to send as
    ``Inference-Header-Content-Length``); binary outputs follow the header in order."""
    tensors = []
    tail = []
    for choice, array in outputs:
        entry: dict[str, Any] = {
            "name": choice.name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if choice.binary:
            raw = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        tensors.append(entry)
    message: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        message["id"] = request_id
    if parameters:
        message["parameters"] = parameters
    message["outputs"] = tensors
    header = json.dumps(message, separators=(",", ":")).encode()
    if not tail:
        return header, None
    return b"".join([header, *tail]), len(header)
