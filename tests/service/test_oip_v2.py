"""The Open Inference Protocol (KServe v2) routes, driven by Triton's own HTTP client against a
real `uvicorn` server on loopback (tiny student, an API key set): health, server and model
metadata equal to the exported Triton repository's config.pbtxt, and inference whose images are
the service's own /render of the same latent and camera, with binary tensors on and off."""

from __future__ import annotations

import importlib.util
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from distill3d import __version__
from distill3d.export.triton import TritonSettings, write_repository
from distill3d.models.load import load_model
from distill3d.models.mapping import camera_convention
from distill3d.models.runtime.triton_names import model_names
from distill3d.service.app import create_app
from distill3d.service.loadtest import free_port
from distill3d.service.settings import ServiceSettings

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

KEY = "v2-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}


def auth() -> dict[str, str]:
    """A fresh headers dict: tritonclient's infer() writes Inference-Header-Content-Length into
    the dict it is given, which would then go stale on the next request."""
    return dict(AUTH)


NAMES = model_names()
MAX_BATCH = 4


@pytest.fixture(scope="module")
def server(checkpoints) -> Iterator[str]:
    """`distill3d serve`'s app in uvicorn on a loopback port, in a thread of this process."""
    settings = ServiceSettings(
        student=str(checkpoints["student"]),
        teacher=None,
        device="cpu",
        max_wait_ms=5,
        max_batch_size=MAX_BATCH,
        api_key=KEY,
    )
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://{url}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the service was not ready within 60 s"
        assert thread.is_alive(), "uvicorn exited"
        time.sleep(0.1)
    try:
        yield url
    finally:
        uv.should_exit = True
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def client(server) -> Iterator[Any]:
    triton = httpclient.InferenceServerClient(url=server, network_timeout=60.0)
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def labels(checkpoints) -> np.ndarray:
    """Two camera labels of the student's own convention: frontal, and yaw -15 / pitch 5."""
    student = load_model(checkpoints["student"])
    cameras = camera_convention(student).orbit([0.0, -15.0], [0.0, 5.0])
    return cameras.to_label().numpy().astype(np.float32)


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


def _triton_configs(export_dir: Path, repo: Path) -> dict[str, Any]:
    """The exported repository's config.pbtxt files, parsed strictly with the ModelConfig
    protobuf the export tests build (tests/export/triton_model_config.py)."""
    path = Path(__file__).parents[1] / "export" / "triton_model_config.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_for_v2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    write_repository(export_dir, repo, TritonSettings(precision="fp32", instance_kind="cpu"))
    return {p.parent.name: module.parse_config(p.read_text()) for p in repo.glob("*/config.pbtxt")}


def _render(server: str, body: dict[str, Any]) -> np.ndarray:
    response = httpx.post(f"http://{server}/render", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """FP32 NCHW in [-1, 1] -> uint8 NHWC, EG3D's conversion (models.images.batch_to_uint8)."""
    return np.clip(image * 127.5 + 128, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _inputs(arrays: dict[str, np.ndarray], binary: bool) -> list[Any]:
    out = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array, binary_data=binary)
        out.append(tensor)
    return out


def _infer(
    client: Any, model: str, arrays: dict[str, np.ndarray], output: str, binary: bool
) -> np.ndarray:
    result = client.infer(
        model,
        _inputs(arrays, binary),
        outputs=[httpclient.InferRequestedOutput(output, binary_data=binary)],
        headers=auth(),
    )
    return result.as_numpy(output)


def test_health_and_server_metadata(client, server):
    # The probes are open without the key, like /healthz and /readyz.
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(headers=AUTH)
    assert meta["name"] == "distill3d" and meta["version"] == __version__
    assert "binary_tensor_data" in meta["extensions"]
    with pytest.raises(InferenceServerException) as exc:
        client.get_server_metadata()  # no key
    assert _status(exc) == "401"


def test_model_metadata_equals_the_exported_repository(client, checkpoints, tmp_path):
    configs = _triton_configs(checkpoints["export"], tmp_path / "repo")
    assert set(configs) == {NAMES.student, NAMES.mapping, NAMES.pipeline}
    fp32 = 11  # ModelConfig.DataType.TYPE_FP32

    def exported(tensors) -> dict[str, tuple[str, list[int]]]:
        assert all(t.data_type == fp32 for t in tensors)
        return {t.name: ("FP32", [-1, *t.dims]) for t in tensors}

    def served(tensors) -> dict[str, tuple[str, list[int]]]:
        return {t["name"]: (t["datatype"], list(t["shape"])) for t in tensors}

    for name, config in configs.items():
        meta = client.get_model_metadata(name, headers=AUTH)
        assert meta["name"] == name and meta["versions"] == ["1"]
        assert (tmp_path / "repo" / name / "1").is_dir()
        assert served(meta["inputs"]) == exported(config.input)
        want_out = exported(config.output)
        # image_raw is the graph's low-resolution render; the batchers return final images only.
        assert served(meta["outputs"]) == {k: v for k, v in want_out.items() if k != "image_raw"}
        assert client.get_model_metadata(name, "1", headers=AUTH) == meta
        assert client.is_model_ready(name, headers=AUTH)
        assert client.is_model_ready(name, "1", headers=AUTH)
        assert not client.is_model_ready(name, "2", headers=AUTH)
    assert not client.is_model_ready("nope", headers=AUTH)
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_metadata("nope", headers=AUTH)
    assert _status(exc) == "404" and "unknown model" in exc.value.message()


def test_inference_equals_render(client, server, checkpoints, labels):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    meta = client.get_model_metadata(NAMES.mapping, headers=AUTH)
    z_dim = meta["inputs"][0]["shape"][1]
    z = rng.standard_normal((2, z_dim)).astype(np.float32)
    psi = np.array([[0.7], [0.5]], np.float32)

    # Mapping: the exported mapping.onnx computes the same w.
    mapping_in = {"z": z, "truncation_psi": psi}
    w = _infer(client, NAMES.mapping, mapping_in, "w", binary=True)
    session = ort.InferenceSession(str(checkpoints["export"] / "mapping.onnx"))
    (w_onnx,) = session.run(None, mapping_in)
    np.testing.assert_allclose(w, w_onnx, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(_infer(client, NAMES.mapping, mapping_in, "w", False), w)

    renders_z = np.stack(
        [
            _render(
                server,
                {"z": z[i].tolist(), "truncation": float(psi[i, 0]), "camera": labels[i].tolist()},
            )
            for i in range(2)
        ]
    )
    renders_w = np.stack(
        [_render(server, {"w": w[i].tolist(), "camera": labels[i].tolist()}) for i in range(2)]
    )
    checks = {
        NAMES.pipeline: ({"z": z, "truncation_psi": psi, "c": labels}, renders_z),
        NAMES.student: ({"w": w, "c": labels}, renders_w),
    }
    for model, (arrays, renders) in checks.items():
        binary = _infer(client, model, arrays, "image", binary=True)
        assert binary.dtype == np.float32 and binary.shape == (2, 3, 64, 64)
        assert binary.min() >= -1.0 and binary.max() <= 1.0
        as_json = _infer(client, model, arrays, "image", binary=False)
        np.testing.assert_array_equal(as_json, binary)
        pixels = _to_uint8(binary)
        for i in range(2):
            # Batched with its neighbour here, alone in /render: the last bits may differ.
            assert _psnr(pixels[i], renders[i]) >= 40, (model, i, _psnr(pixels[i], renders[i]))
    # The w the mapping returned renders the same identity as its z (truncation included).
    assert _psnr(renders_w, renders_z) >= 40


def test_default_outputs_and_the_raw_protocol(client, server, labels):
    """No outputs named: tritonclient asks for every output in binary; raw JSON requests get the
    protocol's response and error bodies."""
    meta = client.get_model_metadata(NAMES.student, headers=AUTH)
    w_dim = meta["inputs"][0]["shape"][1]
    w = np.full((1, w_dim), 0.1, np.float32)
    result = client.infer(NAMES.student, _inputs({"w": w, "c": labels[:1]}, True), headers=auth())
    assert result.as_numpy("image").shape == (1, 3, 64, 64)
    assert result.get_response()["parameters"]["backend"] == "torch"

    url = f"http://{server}/v2/models/{NAMES.student}/infer"
    body = {
        "id": "r1",
        "inputs": [
            {"name": "w", "shape": [1, w_dim], "datatype": "FP32", "data": w.tolist()},
            {"name": "c", "shape": [1, 25], "datatype": "FP32", "data": labels[0].tolist()},
        ],
    }
    response = httpx.post(url, json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "r1" and answer["model_name"] == NAMES.student
    (out,) = answer["outputs"]
    assert out["name"] == "image" and out["datatype"] == "FP32" and out["shape"] == [1, 3, 64, 64]
    assert len(out["data"]) == 3 * 64 * 64

    def refused(payload: Any, status: int = 400, **kwargs: Any) -> str:
        r = httpx.post(url, json=payload, headers={**AUTH, **kwargs}, timeout=60)
        assert r.status_code == status, (payload, r.text)
        return r.json()["error"]

    bad_shape = {**body, "inputs": [body["inputs"][0], {**body["inputs"][1], "shape": [1, 24]}]}
    assert "25 elements for shape [1, 24]" in refused(bad_shape)
    assert "unknown output" in refused({**body, "outputs": [{"name": "image_raw"}]})
    assert "missing c" in refused({**body, "inputs": body["inputs"][:1]})
    too_big = np.repeat(w, MAX_BATCH + 1, axis=0).tolist()
    big = [
        {"name": "w", "shape": [MAX_BATCH + 1, w_dim], "datatype": "FP32", "data": too_big},
        {"name": "c", "shape": [MAX_BATCH + 1, 25], "datatype": "FP32",
         "data": np.repeat(labels[:1], MAX_BATCH + 1, axis=0).tolist()},
    ]  # fmt: skip
    assert "batch size" in refused({"inputs": big})
    as_int = {**body["inputs"][0], "datatype": "INT32", "data": [[1] * w_dim]}
    assert "must be FP32" in refused({"inputs": [as_int, body["inputs"][1]]})
    r = httpx.post(url, content=b'{"inputs": [{"data": [NaN]}]}', headers=AUTH, timeout=60)
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(f"http://{server}/v2/models/nope/infer", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 404 and "unknown model" in r.json()["error"]

    # A NaN in binary data, which JSON cannot carry.
    c = labels[:1].copy()
    c[0, 3] = np.nan
    with pytest.raises(InferenceServerException) as exc:
        client.infer(NAMES.student, _inputs({"w": w, "c": c}, True), headers=auth())
    assert _status(exc) == "400" and "NaN" in exc.value.message()
    # Without the key, inference is refused before the body is read.
    with pytest.raises(InferenceServerException) as exc:
        client.infer(NAMES.student, _inputs({"w": w, "c": labels[:1]}, True))
    assert _status(exc) == "401"


def _fuzz(operation: Any, mode: Any, examples: int, url: str, session: Any, statuses: dict) -> None:
    """``examples`` cases of one operation in one generation mode, each sent (with the key) and
    checked. Inference goes to the real models in turn, version 1, so the bodies are judged by
    a model rather than all refused as an unknown model's."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import negative_data_rejection, not_a_server_error

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        if operation.method.upper() == "POST":
            names = [NAMES.student, NAMES.mapping, NAMES.pipeline]
            case.path_parameters["model_name"] = names[sum(statuses.values()) % 3]
            if "model_version" in case.path_parameters:
                case.path_parameters["model_version"] = "1"
        response = case.call(base_url=url, session=session, headers=auth(), timeout=60)
        key = (operation.label, mode.value, response.status_code)
        statuses[key] = statuses.get(key, 0) + 1
        case.validate_response(response, checks=[not_a_server_error, negative_data_rejection])

    try:
        fuzz()
    except Unsatisfiable:
        # A free-form path segment (a model name) admits every value: no negative data.
        if mode is not GenerationMode.NEGATIVE:
            raise


def test_v2_routes_survive_schema_driven_fuzzing(server):
    """Schemathesis over the /v2 operations of the service's OpenAPI schema: schema-valid data
    never gets a 5xx, data the schema calls invalid is rejected with a 4xx."""
    schemathesis = pytest.importorskip("schemathesis")
    import requests
    from schemathesis import GenerationMode

    document = httpx.get(f"http://{server}/openapi.json", headers=AUTH, timeout=30).json()
    schema = schemathesis.openapi.from_dict(document).include(path_regex="^/v2")
    session = requests.Session()
    statuses: dict[tuple[str, str, int], int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        examples = 30 if operation.method.upper() == "POST" else 5
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, examples, f"http://{server}", session, statuses)
    summary = "\n".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    print(f"{sum(statuses.values())} cases:\n{summary}")
    labels = {op for op, _, _ in statuses}
    assert {"POST /v2/models/{model_name}/infer", "GET /v2", "GET /v2/health/ready"} <= labels
    assert not [k for k in statuses if k[2] >= 500], summary
