"""Folders and files replaced so that a kill at any instant leaves a complete version findable.

A checkpoint folder (``train_state/``, ``student/``, the demo's ``teacher/``) is replaced in four
moves, each of which leaves one complete version on disk under a name :func:`recover_folder`
knows:

1. the new version is written to ``.NAME.new-ID`` and fsynced, its completeness marker last
   (``progress.json``, ``config.json``): until then the old ``NAME`` is the state;
2. ``NAME`` is renamed to ``.NAME.old-ID``: now no ``NAME``, but two complete leftovers;
3. ``.NAME.new-ID`` is renamed to ``NAME``: the new state is in place;
4. ``.NAME.old-ID`` is removed.

On resume, :func:`recover_folder` puts the newest complete leftover back at ``NAME`` when ``NAME``
is missing (a kill between 2 and 3) and removes the leftovers. It also knows the ``.NAME.tmp-ID``
staging folders that earlier versions of this code (and ``models.checkpoint``) wrote, so a run
interrupted before this change is recovered too.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

STAGED_TAGS = ("new", "tmp")  # a version written but maybe not swapped in: the newer one
OLD_TAG = "old"  # the version moved aside by a swap


def fsync_path(path: Path) -> None:
    """Flush one file or folder entry to disk (a folder's fsync makes renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, then the folders themselves (deepest first)."""
    folders = []
    for root, _, files in os.walk(folder):
        folders.append(Path(root))
        for name in files:
            fsync_path(Path(root) / name)
    for path in reversed(folders):
        fsync_path(path)


def staging_path(final: Path) -> Path:
    """A fresh name next to ``final`` to write its next version under (step 1)."""
    return final.parent / f".{final.name}.new-{uuid.uuid4().hex[:8]}"


def swap_in(staged: Path, final: Path) -> None:
    """Replace ``final`` by the complete folder ``staged`` (steps 2 to 4 above)."""
    fsync_tree(staged)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.{OLD_TAG}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        fsync_path(final.parent)
    os.replace(staged, final)
    fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def leftovers(final: Path) -> list[tuple[str, Path]]:
    """``(tag, path)`` of every staged or moved-aside version of ``final`` next to it."""
    pattern = re.compile(rf"^\.+{re.escape(final.name)}\.(new|tmp|old)-")
    if not final.parent.is_dir():
        return []
    found = []
    for path in final.parent.iterdir():
        match = pattern.match(path.name)
        if match:
            found.append((match.group(1), path))
    return found


def recover_folder(final: Path, is_complete: Callable[[Path], bool]) -> bool:
    """After a kill: put the newest complete leftover at ``final`` if ``final`` is missing, then
    remove the other leftovers. Returns whether ``final`` exists now.

    A staged version is newer than a moved-aside one (it is written before the swap starts), and
    among versions of one kind the latest written wins.
    """
    found = leftovers(final)
    if not final.exists():
        complete = [(tag, path) for tag, path in found if path.is_dir() and is_complete(path)]
        if complete:
            _, best = max(complete, key=lambda item: _recency(*item))
            os.replace(best, final)
            fsync_path(final.parent)
    for _, path in found:
        if path.exists():
            _remove(path)
    return final.exists()


def write_text_atomically(path: Path, text: str) -> None:
    """Replace the file ``path`` by ``text``: a kill leaves the old text or the new, never half."""
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_path(path.parent)


def remove_file_leftovers(path: Path) -> None:
    """Delete the temporary files a killed :func:`write_text_atomically` of ``path`` left."""
    for tag, leftover in leftovers(path):
        if tag == "tmp" and leftover.is_file():
            leftover.unlink()


def _recency(tag: str, path: Path) -> tuple[int, int]:
    return (1 if tag in STAGED_TAGS else 0, path.stat().st_mtime_ns)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
