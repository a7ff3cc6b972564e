"""The GPU check's CPU mode (what CI runs): it finishes, and its report accounts for every item,
measured or skipped with a reason."""

from __future__ import annotations

import json

from distill3d import gpu_check
from distill3d.gpu_check import FAILED, MEASURED, SKIPPED

EXPECTED = {
    "student eager fp32",
    "student eager fp16",
    "student eager bf16",
    "student cuda graph fp16",
    "student torch.compile",
    "onnxruntime cuda",
    "teacher tiny",
    "bench tiny batch 1/2",
    "service cuda loadtest",
}


def test_cpu_mode_writes_a_complete_report(tmp_path, capsys):
    code = gpu_check.main(["--cpu-only", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().out
    report = json.loads((tmp_path / gpu_check.REPORT_JSON).read_text())
    assert report["mode"] == "cpu-only" and report["device"] == "cpu"
    assert report["total_s"] < 60
    items = {item["name"]: item for item in report["items"]}
    assert set(items) == EXPECTED
    for item in items.values():
        assert item["status"] in (MEASURED, SKIPPED), item
        assert item["status"] != FAILED
        if item["status"] == SKIPPED:
            assert item["reason"]  # every skip says why
        else:
            assert item["result"]
    assert items["student eager fp16"]["reason"].startswith("needs CUDA")
    eager = items["student eager fp32"]["result"]
    assert eager["rows"][0]["ms_per_image_median"] > 0
    assert eager["parity_vs_cpu"] == {"psnr_db": 100.0, "max_abs_diff": 0.0}  # its own reference
    sweep = items["bench tiny batch 1/2"]
    if sweep["status"] == MEASURED:
        runners = sweep["result"]["runners"]
        assert {r["runner"] for r in runners} == {"teacher volumetric", "student torch"}
        assert all(row["peak_rss_bytes"] for r in runners for row in r["rows"])
    else:  # a CPU shared with other jobs can spend the 55 s budget first: that is recorded
        assert sweep["reason"].startswith("time budget spent")
    markdown = (tmp_path / gpu_check.REPORT_MD).read_text()
    assert markdown.startswith("# GPU check (cpu-only)")
    assert all(f"| {name} |" in markdown for name in EXPECTED)


def test_a_failing_path_is_reported_not_raised():
    plan = gpu_check.CheckPlan.make(cpu_only=True)
    report = gpu_check._environment(plan)
    checker = gpu_check.Checker(plan, report)

    def broken() -> dict:
        raise RuntimeError("cuDNN said no")

    item = checker.run("broken path", broken)
    assert item.status == FAILED and "cuDNN said no" in item.reason
    assert checker.run("late path", dict, needs_s=1e9).status == SKIPPED  # over the budget


def test_parity_of_identical_and_different_images():
    import torch

    a = torch.zeros(1, 3, 4, 4)
    assert gpu_check.parity(a, a) == {"psnr_db": 100.0, "max_abs_diff": 0.0}  # psnr caps at 100
    far = gpu_check.parity(a, a + 0.2)
    assert 19.9 < far["psnr_db"] < 20.1 and abs(far["max_abs_diff"] - 0.2) < 1e-6


def test_distill3d_gpu_check_runs_the_same_check(tmp_path, monkeypatch):
    """``distill3d gpu-check`` passes its flags to the check the test above runs (not run twice:
    it takes tens of seconds), and a failed item makes the command fail."""
    from distill3d.cli import main

    calls = []
    monkeypatch.setattr(gpu_check, "run", lambda *args: calls.append(args) or 1)
    try:
        main(["gpu-check", "--cpu-only", "--out", str(tmp_path)])
    except SystemExit as exc:
        assert exc.code == 1
    else:
        raise AssertionError("a failed check must fail the command")
    assert calls == [(tmp_path, "cuda", True)]
