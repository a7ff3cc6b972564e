"""Reading POST /invert uploads: the body or a multipart form, and only the image formats we
decode.

The image decoders of Pillow cover dozens of formats, most of them rarely exercised; an upload
is a file from anyone, so only PNG, JPEG and WebP are handed to the decoder. The format is told
from the file's own first bytes, whatever Content-Type claims.
"""

from __future__ import annotations

import io

import torch
from fastapi import Request
from PIL import Image

from ..models.images import read_image
from .errors import (
    BodyTooLarge,
    MalformedUpload,
    PayloadTooLarge,
    RequestError,
    UnsupportedMediaType,
)

UPLOAD_TYPES = {"image/png", "image/jpeg", "image/webp", "application/octet-stream"}
ACCEPTED = "PNG, JPEG or WebP"

# Leading bytes of formats that are refused by name (anything else unknown is "not an image").
OTHER_FORMATS = {
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"\x00\x00\x01\x00": "ICO",
    b"\x00\x00\x02\x00": "CUR",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"8BPS": "PSD",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
    b"\xff\x4f\xff\x51": "JPEG 2000",
    b"qoif": "QOI",
    b"DDS ": "DDS",
    b"icns": "ICNS",
}


def image_format(data: bytes) -> str | None:
    """ "PNG", "JPEG" or "WEBP" from the file's signature, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_upload(data: bytes, max_pixels: int) -> torch.Tensor:
    """The uploaded image as RGB [3, H, W] in [-1, 1]; typed errors for anything else.

    The format is checked from the signature and the size from the header before a pixel is
    decoded. Runs in a worker thread (decoding is CPU work).
    """
    fmt = image_format(data)
    if fmt is None:
        other = next((name for sig, name in OTHER_FORMATS.items() if data.startswith(sig)), None)
        if other is not None:
            raise UnsupportedMediaType(
                "image", f"the upload is a {other} image; accepted formats: {ACCEPTED}"
            )
        raise RequestError(
            "image", f"the upload is not an image that can be read (accepted formats: {ACCEPTED})"
        )
    size = _declared_size(data, fmt)
    if size is not None and size[0] * size[1] > max_pixels:
        raise PayloadTooLarge(
            "image",
            f"the upload is {size[0]}x{size[1]} pixels, more than the limit of {max_pixels}; "
            "resize it first",
        )
    try:
        return read_image(data, max_pixels)
    except ValueError as exc:
        raise RequestError("image", str(exc)) from None


def _declared_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) from the header, by ``fmt``'s parser only; None when it is unreadable
    (``read_image`` then says why)."""
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:
            return image.size
    except Exception:
        return None


async def read_upload(request: Request) -> tuple[bytes, dict[str, str]]:
    """The uploaded image's bytes and any other form fields; typed 4xx errors for anything else."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_form(request)
    if content_type in UPLOAD_TYPES:
        return await request.body(), {}
    raise UnsupportedMediaType(
        "image",
        f"unsupported Content-Type {content_type or '(none)'}: send the image as image/png, "
        "image/jpeg or image/webp, or as multipart/form-data with an 'image' file",
    )


async def _read_form(request: Request) -> tuple[bytes, dict[str, str]]:
    try:
        form = await request.form(max_files=1, max_fields=16)
    except BodyTooLarge:
        raise
    except Exception as exc:  # python-multipart's parse errors, too many parts
        raise MalformedUpload("image", f"malformed multipart form: {exc}") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise RequestError("image", "the form needs a file field named 'image'")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return await upload.read(), fields
