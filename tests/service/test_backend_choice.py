"""How the service picks and sizes the student's backend at warm-up: ONNX Runtime on an export
the service makes of the PyTorch student (``onnx_export``, cached by weights hash), ONNX
Runtime's session settings, and the batch limit chosen from measured images/s (``tune_batch``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from service_helpers import run, serving

from distill3d.service.backends import batch_sizes_to_try, tune_max_batch
from distill3d.service.models import load_models


class SleepyBackend:
    """A backend whose batch of n takes ``cost[n]`` seconds (sleeps are reliable timings)."""

    name = "fake"
    device = "cpu"
    w_dim = 4
    max_batch = 64

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost = cost
        self.calls: list[int] = []

    def render(self, w: np.ndarray, c: np.ndarray) -> np.ndarray:
        self.calls.append(len(w))
        time.sleep(self.cost[len(w)])
        return np.zeros((len(w), 2, 2, 3), np.uint8)


def test_batch_sizes_to_try_double_up_to_the_cap():
    assert batch_sizes_to_try(1) == [1]
    assert batch_sizes_to_try(2) == [1, 2]
    assert batch_sizes_to_try(8) == [1, 2, 4, 8]
    assert batch_sizes_to_try(6) == [1, 2, 4, 6]


def test_the_batch_limit_is_the_size_with_the_most_images_per_second():
    # 2 images cost little more than 1; 4 cost more per image than 1 does (as in PyTorch on a
    # small CPU): the limit is 2, and 8 is never tried once 4 fell below the best rate.
    backend = SleepyBackend({1: 0.010, 2: 0.012, 4: 0.060, 8: 0.1})
    best, rates = tune_max_batch(backend, np.zeros((1, 25), np.float32), cap=8)
    assert best == 2
    assert list(rates) == [1, 2, 4]
    assert rates[2] > rates[1] > rates[4]
    assert 8 not in backend.calls


def test_a_backend_slower_per_image_in_any_batch_keeps_batch_one():
    backend = SleepyBackend({1: 0.010, 2: 0.030, 4: 0.080})
    best, _ = tune_max_batch(backend, np.zeros((1, 25), np.float32), cap=4)
    assert best == 1


def test_a_backend_that_batches_well_gets_the_cap():
    backend = SleepyBackend({1: 0.020, 2: 0.021, 4: 0.022})
    best, rates = tune_max_batch(backend, np.zeros((1, 25), np.float32), cap=4)
    assert best == 4 and list(rates) == [1, 2, 4]


class CountingExporter:
    """The real browser-graph exporter, counting its calls."""

    def __init__(self) -> None:
        from distill3d.export.onnx import export_browser_graphs

        self.export = export_browser_graphs
        self.calls = 0

    def __call__(self, student, folder: Path, source) -> None:
        self.calls += 1
        self.export(student, folder, source)


def test_the_service_exports_the_student_once_and_times_onnx_runtime(
    settings_for, tmp_path, monkeypatch
):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("DISTILL3D_GRAPH_CACHE_DIR", str(tmp_path / "graphs"))
    exporter = CountingExporter()
    settings = settings_for(onnx_export=True, tune_batch=True, max_batch_size=4)
    loaded = load_models(settings, "cpu", exporter)
    backend, info = loaded.student
    assert exporter.calls == 1
    assert set(info.candidates) == {"torch", "onnxruntime"}
    assert all("ms per image" in v for v in info.candidates.values()), info.candidates
    # The batch limit is the measured best of 1, 2, 4 (or where the timing stopped).
    assert info.batch_images_per_s and set(info.batch_images_per_s) <= {1, 2, 4}
    rates = info.batch_images_per_s
    assert info.max_batch_size == max(rates, key=rates.get) == backend.max_batch
    # A second start finds the export in the cache.
    load_models(settings, "cpu", exporter)
    assert exporter.calls == 1


def test_onnxruntime_asked_for_by_name_serves_the_exported_student(
    settings_for, tmp_path, monkeypatch
):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("DISTILL3D_GRAPH_CACHE_DIR", str(tmp_path / "graphs"))

    async def scenario():
        settings = settings_for(onnx_export=True, student_backend="onnxruntime")
        async with serving(settings) as client:
            r = await client.get("/render", params={"seed": 3, "yaw": 10})
            assert r.status_code == 200 and r.headers["x-backend"] == "onnxruntime"
            # /graphs offers the very export the service renders with.
            manifest = (await client.get("/graphs/manifest.json")).json()
            assert manifest["source"] == "exported"

    run(scenario())


def test_an_export_that_fails_leaves_the_torch_student_serving(settings_for, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL3D_GRAPH_CACHE_DIR", str(tmp_path / "graphs"))

    def broken(student, folder, source):
        raise RuntimeError("the graph failed its verification\nmore detail")

    loaded = load_models(settings_for(onnx_export=True), "cpu", broken)
    _, info = loaded.student
    assert info.backend == "torch"
    assert info.candidates["onnxruntime"] == "unavailable: the graph failed its verification"


def test_onnxruntime_by_name_without_any_way_to_get_a_graph_is_a_config_error(settings_for):
    from distill3d.models.errors import ConfigError

    with pytest.raises(ConfigError, match="student_backend=onnxruntime: unavailable: no exporter"):
        load_models(settings_for(onnx_export=True, student_backend="onnxruntime"), "cpu", None)


def test_onnx_session_settings_reach_the_session(checkpoints):
    pytest.importorskip("onnxruntime")
    from distill3d.models.runtime.onnx import OnnxStudent, SessionSettings

    settings = SessionSettings(intra_op_threads=1, inter_op_threads=1, cpu_arena=False)
    student = OnnxStudent(checkpoints["export"], "cpu", session=settings)
    options = student.session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.enable_cpu_mem_arena is False


def test_the_race_keeps_each_backends_fastest_round_and_reports_failures():
    from distill3d.service.models import race_backends

    class Broken(SleepyBackend):
        def render(self, w, c):
            raise RuntimeError("no kernel for this op")

    slow, fast = SleepyBackend({1: 0.03}), SleepyBackend({1: 0.01})
    times, failures = race_backends(
        {"slow": slow, "fast": fast, "broken": Broken({})}, np.zeros((1, 25), np.float32), rounds=3
    )
    assert set(times) == {"slow", "fast"} and times["fast"] < times["slow"]
    assert 0.01 <= times["fast"] < 0.03 <= times["slow"]
    assert failures == {"broken": "failed its warm-up: no kernel for this op"}
    assert slow.calls == fast.calls == [1, 1, 1, 1]  # one untimed call, then one per round


@pytest.fixture(scope="module")
def int8_export(checkpoints, tmp_path_factory) -> Path:
    """A copy of the tiny export with a (quickly calibrated) INT8 graph."""
    import shutil

    pytest.importorskip("onnxruntime")
    from distill3d.export.int8 import Int8Settings, add_int8_graph

    folder = tmp_path_factory.mktemp("int8") / "export"
    shutil.copytree(checkpoints["export"], folder)
    fast = Int8Settings(calibration_samples=8, calibration_batch=4)
    add_int8_graph(folder, min_psnr_db=15.0, settings=fast, batch_sizes=(1,))
    return folder


def test_auto_times_the_int8_graph_and_it_can_be_chosen_by_name(settings_for, int8_export):
    loaded = load_models(settings_for(onnx_dir=int8_export), "cpu")
    _, info = loaded.student
    assert set(info.candidates) == {"torch", "onnxruntime", "onnxruntime-int8"}
    assert all("ms per image" in v for v in info.candidates.values()), info.candidates

    async def scenario():
        settings = settings_for(onnx_dir=int8_export, student_backend="onnxruntime-int8")
        async with serving(settings) as client:
            r = await client.get("/render", params={"seed": 3, "yaw": 10})
            assert r.status_code == 200 and r.headers["x-backend"] == "onnxruntime-int8"
            student = next(
                m
                for m in (await client.get("/v1/models")).json()["models"]
                if m["role"] == "student"
            )
            assert student["precision"] == "int8"

    run(scenario())


def test_int8_by_name_without_an_int8_graph_says_how_to_make_one(settings_for, checkpoints):
    pytest.importorskip("onnxruntime")
    from distill3d.models.errors import ConfigError

    settings = settings_for(onnx_dir=checkpoints["export"], student_backend="onnxruntime-int8")
    with pytest.raises(ConfigError, match="no INT8 graph: add one with distill3d export int8"):
        load_models(settings, "cpu")


def test_the_serve_command_offers_every_backend_the_settings_accept():
    import argparse
    from typing import get_args

    from distill3d.cli.serve import add_serve
    from distill3d.service.settings import StudentBackendName

    parser = argparse.ArgumentParser()
    add_serve(parser.add_subparsers())
    action = next(
        a
        for a in parser._subparsers._group_actions[0].choices["serve"]._actions  # type: ignore[union-attr]
        if "--student-backend" in a.option_strings
    )
    assert list(action.choices) == list(get_args(StudentBackendName))


def test_a_light_student_builds_exports_and_serves(tmp_path, monkeypatch):
    """``demo-light`` (a light preset at the demo world's size), from the shipped teacher,
    served through ONNX Runtime on an export the service makes of it."""
    pytest.importorskip("onnxruntime")
    import io

    from PIL import Image

    from distill3d.models.checkpoint import save_checkpoint
    from distill3d.models.load import default_model
    from distill3d.models.student import student_from_teacher, student_preset
    from distill3d.service.settings import ServiceSettings

    monkeypatch.setenv("DISTILL3D_GRAPH_CACHE_DIR", str(tmp_path / "graphs"))
    student = student_from_teacher(default_model(), student_preset("demo-light")).eval()
    save_checkpoint(student, tmp_path / "light")
    settings = ServiceSettings(
        teacher="default",
        student=str(tmp_path / "light"),
        device="cpu",
        onnx_export=True,
        student_backend="onnxruntime",
    )

    async def scenario():
        async with serving(settings) as client:
            r = await client.get("/render", params={"seed": 0, "yaw": 30})
            assert r.status_code == 200 and r.headers["x-backend"] == "onnxruntime"
            assert Image.open(io.BytesIO(r.content)).size == (128, 128)
            assert "x-fallback" not in r.headers

    run(scenario())
