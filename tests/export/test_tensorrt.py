"""TensorRT plans without a GPU: the build's calls (driven through a recording stand-in for the
``tensorrt`` module), the plan metadata, and refusal of plans built for another GPU, TensorRT
version or graph. The engine itself can only run on a GPU (see README, "GPU, ONNX, TensorRT")."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fake_tensorrt import H100, fake_tensorrt

from distill3d.cli import main
from distill3d.export.tensorrt import BuildSettings, build_plan
from distill3d.models.checkpoint import sha256_file
from distill3d.models.runtime.errors import ExportError
from distill3d.models.runtime.tensorrt import (
    PLAN_METADATA,
    PlanMetadata,
    PlanMismatchError,
    TensorRTRunner,
    check_compatible,
)


def test_build_is_strongly_typed_with_a_batch_profile_and_a_persisted_timing_cache(
    exported, tmp_path
):
    folder, metadata = exported
    trt = fake_tensorrt()
    settings = BuildSettings(min_batch=2, opt_batch=4, max_batch=16, workspace_gib=0.5)
    meta = build_plan(folder, tmp_path / "plan", settings, trt=trt, here=H100, verify=False)

    assert trt.calls["flags"] == [1 << 0]  # STRONGLY_TYPED, and no FP16 flag anywhere
    assert trt.calls["parsed"].endswith("student_fp16.onnx")
    assert trt.calls["workspace"] == ("WORKSPACE", 2**29)
    assert trt.calls["cleared"] == []  # TF32 only matters for FP32 builds
    assert trt.calls["profiles"] == [
        {"w": [[2, 32], [4, 32], [16, 32]], "c": [[2, 25], [4, 25], [16, 25]]}
    ]
    assert trt.calls["ignore_mismatch"] is False
    plan = tmp_path / "plan" / "student.plan"
    assert plan.read_bytes().startswith(b"PLAN")
    assert (tmp_path / "plan" / "timing.cache").read_bytes() == b"+entries"

    on_disk = PlanMetadata.load(tmp_path / "plan" / PLAN_METADATA)
    assert on_disk == meta
    assert on_disk.platform == H100
    assert on_disk.plan_sha256 == sha256_file(plan)
    assert on_disk.onnx_sha256 == metadata["graphs"]["student_fp16"]["sha256"]
    assert on_disk.precision == "fp16" and on_disk.img_resolution == 64
    assert (on_disk.min_batch, on_disk.max_batch) == (2, 16)
    assert on_disk.source["weights_sha256"] == "ab" * 32
    assert on_disk.outputs["image"] == ["batch", 3, 64, 64]

    # A rebuild starts from the persisted timing cache; an FP32 build clears TF32.
    build_plan(
        folder,
        tmp_path / "plan",
        dataclasses.replace(settings, precision="fp32"),
        trt=trt,
        here=H100,
        verify=False,
    )
    assert trt.calls["cache_in"] == [b"", b"+entries"]
    assert trt.calls["cleared"] == ["TF32"]
    assert trt.calls["parsed"].endswith("/student.onnx")
    assert (tmp_path / "plan" / "timing.cache").read_bytes() == b"+entries+entries"


def test_build_failures_name_the_cause_and_write_no_plan(exported, tmp_path):
    folder, _ = exported
    bad_parse = fake_tensorrt(parse_errors=("node Conv_12: unsupported",))
    with pytest.raises(ExportError, match=r"could not parse .*Conv_12: unsupported"):
        build_plan(folder, tmp_path / "a", trt=bad_parse, here=H100, verify=False)
    with pytest.raises(ExportError, match="failed to build an engine"):
        build_plan(folder, tmp_path / "b", trt=fake_tensorrt(build_fails=True), here=H100)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="min_batch <= opt_batch <= max_batch"):
        BuildSettings(min_batch=4, opt_batch=2)


def _metadata(**platform) -> PlanMetadata:
    return PlanMetadata(
        plan_file="student.plan",
        plan_sha256="0" * 64,
        onnx_file="student_fp16.onnx",
        onnx_sha256="a" * 64,
        precision="fp16",
        platform=dataclasses.replace(H100, **platform),
        profile={"w": [[1, 32], [8, 32], [32, 32]], "c": [[1, 25], [8, 25], [32, 25]]},
        inputs={"w": ["batch", 32], "c": ["batch", 25]},
        outputs={"image": ["batch", 3, 64, 64]},
        source={},
        img_resolution=64,
        camera={},
    )


def test_plans_for_another_gpu_version_or_graph_are_refused():
    check_compatible(_metadata(), H100, onnx_sha256="a" * 64)  # same everything: accepted
    with pytest.raises(PlanMismatchError, match=r"TensorRT 10\.13\.0, this is 11\.4\.0\.106"):
        check_compatible(_metadata(tensorrt_version="10.13.0"), H100)
    with pytest.raises(PlanMismatchError) as err:
        check_compatible(
            _metadata(gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0"), H100
        )
    assert "compute capability 8.0, this GPU is 9.0" in str(err.value)
    assert "built on a NVIDIA A100-SXM4-80GB" in str(err.value)
    assert "Rebuild it here with distill3d export tensorrt" in str(err.value)
    with pytest.raises(PlanMismatchError, match=r"built from another student_fp16\.onnx"):
        check_compatible(_metadata(), H100, onnx_sha256="b" * 64)
    with pytest.raises(PlanMismatchError, match="built on Windows"):
        check_compatible(_metadata(os="Windows"), H100)


def test_plan_metadata_round_trips_and_bad_files_are_refused(tmp_path):
    meta = _metadata()
    meta.save(tmp_path / PLAN_METADATA)
    assert PlanMetadata.load(tmp_path / PLAN_METADATA) == meta
    with pytest.raises(PlanMismatchError, match="is missing"):
        PlanMetadata.load(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(PlanMismatchError, match="not valid plan metadata"):
        PlanMetadata.load(tmp_path / "bad.json")


def test_without_tensorrt_or_a_gpu_the_commands_say_so(exported, tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    folder, _ = exported
    assert main(["export", "tensorrt", "--onnx", str(folder), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and "pypi.nvidia.com" in err
    if not torch.cuda.is_available():
        assert "needs an NVIDIA GPU" in err
    assert not (tmp_path / "p").exists()
    _metadata().save(tmp_path / PLAN_METADATA)
    with pytest.raises(ExportError, match="TensorRT is not installed"):
        TensorRTRunner(tmp_path)
