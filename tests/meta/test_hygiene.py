"""Repository hygiene: committed files carry no paths of the machine they were made on, and the
code cites only documents that are in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Absolute paths that only exist on someone's machine: home folders, the root account, scratch
# folders, and this project's build machines (/work/...).
MACHINE_PATH = re.compile(r"(?<![\w.])(/work/|/root/|/home/\w+/|/Users/\w+/|/tmp/\w)")
# Background guides that are not part of the repository (their facts live in docs/).
OUTSIDE_DOCS = re.compile(r"\b(METHOD|SERVING|SCALE-OUT|STYLE|EG3D)\.md\b")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    files = []
    for name in filter(None, names):
        path = REPO / name.decode()
        if not path.is_file():
            continue
        head = path.read_bytes()[:8192]
        if b"\0" not in head:  # binary files (weights, images) hold no paths to review
            files.append(path)
    return files


def test_no_machine_paths_in_tracked_files() -> None:
    found = []
    for path in tracked_text_files():
        if path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not found, "machine paths in tracked files:\n" + "\n".join(found)


def test_the_pattern_catches_a_machine_path() -> None:
    assert MACHINE_PATH.search('"teacher": "/work/demo/teacher-run/teacher"')
    assert MACHINE_PATH.search("saved to /root/.cache/x")
    assert not MACHINE_PATH.search('"teacher": "default", "dataset": "data/demo-real"')
    assert not MACHINE_PATH.search("see https://example.org/work/x")


def test_code_cites_only_documents_in_the_repository() -> None:
    found = []
    for path in tracked_text_files():
        if path.suffix != ".py" or path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if OUTSIDE_DOCS.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not found, "citations of documents outside the repository:\n" + "\n".join(found)
