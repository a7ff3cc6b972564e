"""The import rules (README, "Module map") hold, and breaking one makes the lint fail.

The repository installs its folders as subpackages of ``distill3d`` through ``package-dir``
(models/ -> distill3d.models, ...), which import-linter cannot follow: it walks the directory of
the root package. So the test lays the installed package out as it would be in site-packages (a
copy of the sources in a temporary folder) and runs the real ``lint-imports`` on that copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ".importlinter"


def installed_layout(dest: Path) -> Path:
    """Copy every package of pyproject's ``package-dir`` map to where it installs under ``dest``."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, folder in setuptools["package-dir"].items():
        if package.count(".") > 1:
            continue  # nested entries live inside their parent's folder
        target = dest.joinpath(*package.split("."))
        shutil.copytree(
            REPO / folder,
            target,
            ignore=shutil.ignore_patterns("__pycache__", "weights", "static", "*.egg-info"),
            dirs_exist_ok=True,
        )
    return dest


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(lint), str(CONFIG), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return installed_layout(tmp_path_factory.mktemp("site"))


def test_the_contracts_hold(layout: Path) -> None:
    result = lint_imports(layout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("models/_forbidden.py", "from ..training import train\n", "models import nothing"),
        ("service/_forbidden.py", "from ..training import train\n", "side by side"),
        ("export/_forbidden.py", "from ..service import settings\n", "side by side"),
    ],
)
def test_a_forbidden_import_breaks_them(
    tmp_path: Path, layout: Path, module: str, line: str, broken: str
) -> None:
    root = shutil.copytree(layout, tmp_path / "site")
    (root / "distill3d" / module).write_text(line)
    result = lint_imports(root)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and broken in result.stdout, result.stdout
