"""The student's exported graphs for the browser, and what the page needs to run them there.

- ``GET /graphs/manifest.json``: input/output names, shapes and dtypes of ``student.onnx`` and
  ``mapping.onnx``, their sizes and sha256, the camera convention, the student's pose range, the
  average w (truncation of given w's) and the latent sizes;
- ``GET /graphs/student.onnx``, ``GET /graphs/mapping.onnx``: the graphs. With
  ``--onnx-dir`` they are that export's files; otherwise the loaded PyTorch student is exported
  once (``export_onnx``, on the first request) into ``$DISTILL3D_GRAPH_CACHE_DIR`` (default
  ``<tmp>/distill3d-graphs``), one folder per student weights hash, and kept for later starts;
- ``GET /static/vendor/onnxruntime-web/{name}``: the vendored runtime; the ``.wasm`` files are
  stored gzip-compressed and sent with ``Content-Encoding: gzip`` (decompressed here for a
  client that does not accept gzip).

Every answer carries its sha256 as a strong ETag and is answered 304 to a matching
If-None-Match. The routes sit behind the API key guard like the rest. ``CrossOriginIsolation``
adds COOP/COEP to the viewer and its files, so the page is cross-origin isolated and
onnxruntime-web may use WASM threads (SharedArrayBuffer).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...models.checkpoint import sha256_file
from ...models.runtime.export_files import graph_path, read_export
from ..dependencies import ReadyService
from ..errors import RequestError
from ..render_service import RenderService
from ..student_export import (
    GRAPH_FILES,
    GraphExporter,
    cached_export,
    export_folder,
    valid_export,
)

log = logging.getLogger(__name__)

router = APIRouter(tags=["graphs"])

VENDOR_DIR = Path(__file__).resolve().parent.parent / "static" / "vendor" / "onnxruntime-web"
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
VENDOR_TYPES = {".mjs": "text/javascript", ".wasm": "application/wasm", "": "text/plain"}
DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32"}  # onnx.TensorProto elem types


class GraphsUnavailable(RequestError):
    """No student graph can be offered (the service has no student)."""

    status = 404


@dataclass
class GraphFile:
    path: Path
    sha256: str
    size: int


@dataclass
class Graphs:
    """The two graph files and the manifest that describes them."""

    files: dict[str, GraphFile]
    manifest: bytes
    manifest_sha256: str


def _tensor_specs(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inputs, outputs) of an ONNX file: name -> {shape (dims or "batch"), dtype}."""
    import onnx

    graph = onnx.load_model(str(path), load_external_data=False).graph

    def spec(values: Any) -> dict[str, Any]:
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
            out[v.name] = {"shape": dims, "dtype": DTYPES.get(t.elem_type, str(t.elem_type))}
        return out

    return spec(graph.input), spec(graph.output)


def _export_student(service: RenderService, exporter: GraphExporter | None) -> Path:
    """The export folder of the served student: --onnx-dir, or a cached export of it."""
    settings, models = service.settings, service.models
    assert models is not None
    if settings.onnx_dir is not None:
        return Path(settings.onnx_dir)
    if models.student_model is None or "student" not in service.infos:
        raise GraphsUnavailable(
            "graphs", "this service has no student to run in the browser (only the teacher)"
        )
    info = service.infos["student"]
    folder = export_folder(info.sha256)
    if valid_export(folder):
        return folder
    if exporter is None:
        raise GraphsUnavailable(
            "graphs",
            "this app was built without a graph exporter: serve an export with --onnx-dir, or "
            "start it with `distill3d serve`, which exports the student for the browser",
        )
    pose_range = {"yaw_deg": info.pose_range.yaw_deg, "pitch_deg": info.pose_range.pitch_deg}
    try:
        return cached_export(
            models.student_model, exporter, str(settings.student), info.sha256, pose_range
        )
    except Exception as exc:  # e.g. onnx not installed: the page renders through the server
        log.warning("cannot export the student for the browser: %s", exc)
        raise GraphsUnavailable(
            "graphs", f"the student's graphs could not be exported: {exc}".splitlines()[0]
        ) from exc


def build_graphs(service: RenderService, exporter: GraphExporter | None = None) -> Graphs:
    """Export (or find) the graphs, hash them and write the manifest."""
    models = service.models
    assert models is not None
    folder = _export_student(service, exporter)
    metadata = read_export(folder)
    files: dict[str, GraphFile] = {}
    entries: dict[str, Any] = {}
    for name, key in GRAPH_FILES.items():
        path = graph_path(folder, metadata, key)
        files[name] = GraphFile(path, sha256_file(path), path.stat().st_size)
        inputs, outputs = _tensor_specs(path)
        entries[key] = {
            "url": f"/graphs/{name}",
            "bytes": files[name].size,
            "sha256": files[name].sha256,
            "inputs": inputs,
            "outputs": outputs,
        }
    camera = models.camera
    student_info = service.infos.get("student")
    pose_range = asdict(student_info.pose_range) if student_info is not None else None
    w_avg = getattr(models.mapper, "w_avg", None)
    manifest = {
        "format": "distill3d-graphs",
        "version": 1,
        "source": "onnx_dir" if service.settings.onnx_dir is not None else "exported",
        "graphs": entries,
        "img_resolution": int(metadata["img_resolution"]),
        "z_dim": models.z_dim,
        "w_dim": models.w_dim,
        "num_ws": models.num_ws,
        "camera": {
            "radius": camera.radius,
            "pivot": list(camera.pivot),
            "focal_length": camera.focal,
            "fov_deg": camera.fov_deg,
            "label": "16 cam2world (row-major, OpenCV) + 9 normalised intrinsics (models.camera)",
        },
        "pose_range": pose_range,
        "w_avg": None if w_avg is None else [float(v) for v in w_avg],
        "truncation_default": 0.7,
        "seed": "z = numpy.random.RandomState(seed).randn(z_dim) (MT19937, legacy Gaussian)",
        "conditioning": "frontal camera, baked into mapping.onnx",
        "image": "image [1, 3, H, W] in [-1, 1]; uint8 = trunc(clamp(x * 127.5 + 128, 0, 255))",
    }
    body = json.dumps(manifest, indent=1).encode()
    return Graphs(files, body, hashlib.sha256(body).hexdigest())


class GraphStore:
    """Builds the graphs once (on the first request, off the event loop) and keeps them, or
    keeps why they cannot be built: nothing about the process changes that (no student, no
    onnx), so an export is never attempted again on every request."""

    def __init__(self, exporter: GraphExporter | None) -> None:
        self.exporter = exporter
        self.graphs: Graphs | None = None
        self.unavailable: tuple[str, str] | None = None  # (field, message) of the refusal
        self.lock = asyncio.Lock()

    async def get(self, service: RenderService) -> Graphs:
        if self.graphs is None and self.unavailable is None:
            async with self.lock:
                if self.graphs is None and self.unavailable is None:
                    loop = asyncio.get_running_loop()
                    try:
                        self.graphs = await loop.run_in_executor(
                            None, build_graphs, service, self.exporter
                        )
                    except GraphsUnavailable as exc:
                        self.unavailable = (exc.field, str(exc))
        if self.unavailable is not None:
            raise GraphsUnavailable(*self.unavailable)
        assert self.graphs is not None
        return self.graphs


def _store(request: Request) -> GraphStore:
    state = request.app.state
    if not hasattr(state, "graph_store"):
        state.graph_store = GraphStore(getattr(state, "graph_exporter", None))
    return state.graph_store


def _matches(request: Request, etag: str) -> bool:
    """If-None-Match (weak comparison, as RFC 9110 asks for it) matches ``etag``."""
    header = request.headers.get("if-none-match")
    if header is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def _answer(
    request: Request, sha256: str, body: bytes | Path, media_type: str, **headers: str
) -> Response:
    etag = f'"{sha256}"'
    common = {"ETag": etag, "Cache-Control": "no-cache", **headers}
    if _matches(request, etag):
        return Response(status_code=304, headers=common)
    if isinstance(body, Path):
        from fastapi.responses import FileResponse

        return FileResponse(body, media_type=media_type, headers=common)
    return Response(body, media_type=media_type, headers=common)


@router.get("/graphs/manifest.json")
async def manifest(service: ReadyService, request: Request) -> Response:
    """What the browser needs to run the student: graphs (names, shapes, dtypes, sizes,
    sha256), camera convention, pose range, w_avg, latent sizes."""
    graphs = await _store(request).get(service)
    return _answer(request, graphs.manifest_sha256, graphs.manifest, "application/json")


@router.get("/graphs/{name}", response_class=Response)
async def graph_file(name: str, service: ReadyService, request: Request) -> Response:
    """student.onnx or mapping.onnx of the served student (exported once on first request)."""
    if name not in GRAPH_FILES:
        raise GraphsUnavailable("name", f"no graph {name}; there are {sorted(GRAPH_FILES)}")
    graphs = await _store(request).get(service)
    f = graphs.files[name]
    return _answer(request, f.sha256, f.path, "application/octet-stream")


_vendor_hashes: dict[str, str] = {}


@router.get("/static/vendor/onnxruntime-web/{name}", include_in_schema=False)
async def vendor_file(name: str, request: Request) -> Response:
    """The vendored onnxruntime-web; .wasm from its stored .wasm.gz."""
    stored = VENDOR_DIR / (name + ".gz" if name.endswith(".wasm") else name)
    if "/" in name or name.startswith(".") or not stored.is_file():
        return Response(status_code=404, headers=ISOLATION_HEADERS)
    if name not in _vendor_hashes:
        _vendor_hashes[name] = sha256_file(stored)
    media_type = VENDOR_TYPES.get(Path(name).suffix, "application/octet-stream")
    headers = {**ISOLATION_HEADERS, "Vary": "Accept-Encoding"}
    if not name.endswith(".wasm"):
        return _answer(request, _vendor_hashes[name], stored, media_type, **headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        return _answer(
            request,
            _vendor_hashes[name],
            stored,
            media_type,
            **headers,
            **{"Content-Encoding": "gzip"},
        )
    raw = await asyncio.get_running_loop().run_in_executor(None, _gunzip, stored)
    return _answer(request, hashlib.sha256(raw).hexdigest(), raw, media_type, **headers)


def _gunzip(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


class CrossOriginIsolation:
    """COOP + COEP (and CORP) on the viewer page and its static files: cross-origin isolation,
    which WASM threads need. Everything the page loads is same-origin."""

    def __init__(self, app: ASGIApp, paths: tuple[str, ...] = ("/", "/static/")) -> None:
        self.app = app
        self.exact = "/"
        self.prefixes = tuple(p for p in paths if p != "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else None
        if path is None or not (path == self.exact or path.startswith(self.prefixes)):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [
                    (k.lower().encode(), v.encode())
                    for k, v in ISOLATION_HEADERS.items()
                    if k.lower().encode() not in names
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
