"""Docker files without a Docker engine: the compose file against the compose-spec schema, and
each image's entrypoint command run directly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))


def _exec_form(dockerfile: Path, instruction: str) -> list[str]:
    lines = [ln for ln in dockerfile.read_text().splitlines() if ln.startswith(instruction + " ")]
    assert lines, f"{dockerfile.name} has no {instruction}"
    return json.loads(lines[-1][len(instruction) + 1 :])  # exec form: a JSON array


def test_compose_file_matches_the_compose_spec() -> None:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    proc = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_builds_the_dockerfiles_that_exist() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        assert (ROOT / service["build"]["dockerfile"]).is_file(), name


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_command_works_outside_docker(dockerfile: Path, tmp_path: Path) -> None:
    entrypoint = _exec_form(dockerfile, "ENTRYPOINT")
    cmd = _exec_form(dockerfile, "CMD")
    assert entrypoint == ["distill3d"]
    # Same command, with the container's /out volume mapped to a temporary folder, on CPU.
    args = [a.replace("/out", str(tmp_path)) for a in cmd]
    args = ["cpu" if a == "cuda" else a for a in args]
    exe = Path(sys.executable).parent / "distill3d"
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "sample.png").size == (64, 64)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_every_package(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    for package in ("distill3d", "models", "training", "service", "export"):
        assert f"COPY {package} ./{package}" in text
    assert "torch==2.13.0" in text
