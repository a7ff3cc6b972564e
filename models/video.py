"""Turntable videos: frames -> MP4 (H.264), WebM (VP9) or GIF bytes, with PyAV.

MP4 is H.264 High in yuv420p with the index at the front (``+faststart``), which browsers play
progressively; faststart needs a second pass over a real file, so MP4 goes through a temporary
file (docs/serving.md §4). Encoding is CPU work: the service runs it in a thread pool.
"""

from __future__ import annotations

import io
import os
import tempfile
from fractions import Fraction
from typing import Literal

import numpy as np

VideoFormat = Literal["mp4", "webm", "gif"]
MEDIA_TYPES: dict[str, str] = {"mp4": "video/mp4", "webm": "video/webm", "gif": "image/gif"}


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: repeat the last row/column when odd."""
    _, h, w, _ = frames.shape
    if h % 2:
        frames = np.concatenate([frames, frames[:, -1:]], axis=1)
    if w % 2:
        frames = np.concatenate([frames, frames[:, :, -1:]], axis=2)
    return frames


def _encode(container, frames: np.ndarray, fps: int, fmt: VideoFormat) -> None:
    import av

    if fmt == "gif":
        stream = container.add_stream("gif", rate=fps)
        stream.pix_fmt = "rgb8"
    elif fmt == "mp4":
        stream = container.add_stream("libx264", rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast", "profile": "high"}
    else:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8"}
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.time_base = Fraction(1, fps)
    for i, frame in enumerate(frames):
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = i
        video_frame.time_base = Fraction(1, fps)
        for packet in stream.encode(video_frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def encode_video(frames: np.ndarray, fps: int, fmt: VideoFormat = "mp4") -> bytes:
    """uint8 frames [T, H, W, 3] -> the bytes of a video file."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if fmt not in MEDIA_TYPES:
        raise ValueError(f"format must be one of {sorted(MEDIA_TYPES)}, got {fmt!r}")
    if fmt != "gif":
        frames = _even(frames)
    if fmt == "mp4":
        fd, path = tempfile.mkstemp(suffix=".mp4")
        os.close(fd)
        try:
            with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as container:
                _encode(container, frames, fps, fmt)
            with open(path, "rb") as f:
                return f.read()
        finally:
            os.unlink(path)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        _encode(container, frames, fps, fmt)
    return buffer.getvalue()


def decode_video(data: bytes) -> tuple[int, int, int]:
    """(frames, width, height) of a video's bytes; for tests and the load script."""
    import av

    with av.open(io.BytesIO(data)) as container:
        frames = [f for f in container.decode(video=0)]
    if not frames:
        return 0, 0, 0
    return len(frames), frames[0].width, frames[0].height
