"""Camera-labelled image datasets in EG3D's layout, as a ``torch.utils.data.Dataset``.

A dataset is a folder or a ``.zip`` holding images (png, jpg, webp, ...) and, at its root, a
``dataset.json`` of the form ``{"labels": [["00000/img00000000.png", [25 numbers]], ...]}``: each
image's path relative to the root (forward slashes) and its camera label, 16 cam2world numbers
then 9 normalised intrinsics (see ``distill3d.models.camera``). This is what EG3D's
``dataset_tool.py`` writes, so its FFHQ / AFHQ archives load unchanged.

The dataset is exactly the images ``dataset.json`` lists, in its order: images present but not
listed are ignored, since the discriminator cannot be conditioned on an image without a camera.
Everything checkable without decoding every image (the json, the labels, that each listed file
exists, the first image's size) is checked when the dataset is built, so mistakes surface before
training starts; each image's own size is checked when it is loaded.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..models.camera import LABEL_SIZE
from ..models.errors import ConfigError

LABELS_FILE = "dataset.json"

# Resampling filter for images whose side differs from the requested resolution. LANCZOS is what
# EG3D's dataset_tool.py resizes with; it antialiases when shrinking and stays sharp when growing.
RESIZE_FILTER = Image.Resampling.LANCZOS


class ImageDataset(Dataset):
    """Images in [-1, 1] with their 25-number camera labels, from a folder or a zip.

    ``dataset[i]`` is ``(image, c)``: float32 [3, R, R] with pixel p mapped to p / 127.5 - 1 (as
    EG3D's training loop does; 0 -> -1, 255 -> 1), and float32 [25]. Images are converted to RGB
    (grayscale is replicated, an alpha channel is dropped) and must be square. With ``resolution``
    they are resized to it with LANCZOS (``RESIZE_FILTER``) where their side differs; without it
    every image must have the first listed image's side.

    A zip is opened lazily and reopened in each process (the handle is keyed by the process id
    and dropped when pickled), because an open file handle shared by DataLoader workers forked
    from the parent would interleave their reads.
    """

    def __init__(self, path: str | os.PathLike[str], resolution: int | None = None) -> None:
        self._path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        if resolution is not None and (isinstance(resolution, bool) or resolution < 1):
            raise ConfigError(
                f"resolution must be a positive number of pixels or None, got {resolution!r}"
            )

        if not self._path.exists():
            raise ConfigError(
                f"dataset path {str(self._path)!r} does not exist; pass a folder or a .zip that "
                f"holds the images and {LABELS_FILE}"
            )
        if self._path.is_dir():
            self._is_zip = False
            members: set[str] | None = None
        elif self._path.suffix.lower() == ".zip":
            self._is_zip = True
            try:
                members = set(self._zipfile().namelist())
            except (zipfile.BadZipFile, OSError) as exc:
                raise ConfigError(
                    f"cannot read {str(self._path)!r} as a zip archive ({exc}); re-create it, "
                    f"e.g. with EG3D's dataset_tool.py"
                ) from exc
        else:
            raise ConfigError(
                f"dataset path {str(self._path)!r} is a file but not a .zip; pass a folder or a "
                f".zip archive"
            )

        self._names, labels = self._read_labels(members)
        self._labels = torch.tensor(labels, dtype=torch.float32).reshape(-1, LABEL_SIZE)

        if members is not None:
            missing = [name for name in self._names if name not in members]
        else:
            missing = [name for name in self._names if not (self._path / name).is_file()]
        if missing:
            raise ConfigError(
                f"{len(missing)} image(s) listed in {LABELS_FILE} are not in "
                f"{str(self._path)!r}, e.g. {missing[:3]}; fix the paths in {LABELS_FILE} "
                f"(relative to the dataset root, forward slashes) or add the files"
            )

        first_side = self._image_side(0)
        self._resize = resolution is not None
        self._resolution = int(resolution) if resolution is not None else first_side

    # ------------------------------------------------------------------ public API

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image float32 [3, R, R] in [-1, 1], camera label float32 [25])."""
        name = self._names[index]  # IndexError past the end, as Dataset iteration expects
        img = self._open_image(name)
        side = self._check_square(img, name)
        if side != self._resolution:
            if not self._resize:
                raise ConfigError(
                    f"image {name!r} is {side}x{side} but the dataset's first image is "
                    f"{self._resolution}x{self._resolution}; pass resolution= to resize all "
                    f"images to one size"
                )
            img = img.resize((self._resolution, self._resolution), RESIZE_FILTER)
        pixels = np.array(img, dtype=np.uint8)  # [R, R, 3]
        image = torch.from_numpy(pixels).permute(2, 0, 1).to(torch.float32) / 127.5 - 1
        return image, self._labels[index].clone()

    @property
    def labels(self) -> torch.Tensor:
        """All camera labels, float32 [N, 25] in dataset order (a copy; sample cameras from it)."""
        return self._labels.clone()

    @property
    def resolution(self) -> int:
        """Side of the images ``__getitem__`` returns, in pixels."""
        return self._resolution

    @property
    def names(self) -> list[str]:
        """Image paths relative to the dataset root, in dataset order."""
        return list(self._names)

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        """Close this process's zip handle, if open; later reads reopen it."""
        if self._zip is not None:
            self._zip.close()
        self._zip = None
        self._zip_pid = None

    def __getstate__(self) -> dict[str, Any]:
        # A ZipFile cannot be pickled (spawned workers) and must not be shared (forked ones).
        state = self.__dict__.copy()
        state["_zip"] = None
        state["_zip_pid"] = None
        return state

    def __repr__(self) -> str:
        kind = "zip" if self._is_zip else "folder"
        return (
            f"ImageDataset({str(self._path)!r}, {kind}, {len(self)} images, "
            f"resolution={self._resolution})"
        )

    # ------------------------------------------------------------------ internals

    def _zipfile(self) -> zipfile.ZipFile:
        pid = os.getpid()
        if self._zip is None or self._zip_pid != pid:
            # After a fork the inherited handle belongs to the parent: leave it alone (closing it
            # here would not affect the parent, but reading it would move a shared file offset).
            self._zip = zipfile.ZipFile(self._path)
            self._zip_pid = pid
        return self._zip

    def _open(self, name: str) -> IO[bytes]:
        if self._is_zip:
            return self._zipfile().open(name, "r")
        return open(self._path / name, "rb")

    def _open_image(self, name: str) -> Image.Image:
        try:
            with self._open(name) as f:
                img = Image.open(f)
                img.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ConfigError(
                f"cannot decode image {name!r} in {str(self._path)!r} ({exc}); replace or "
                f"remove it (and its entry in {LABELS_FILE})"
            ) from exc
        return img.convert("RGB")

    def _image_side(self, index: int) -> int:
        """The side of image ``index`` from its header, without decoding its pixels."""
        name = self._names[index]
        try:
            with self._open(name) as f, Image.open(f) as img:
                size = img.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ConfigError(
                f"cannot decode image {name!r} in {str(self._path)!r} ({exc}); replace or "
                f"remove it (and its entry in {LABELS_FILE})"
            ) from exc
        width, height = size
        if width != height:
            raise ConfigError(_non_square_message(name, width, height))
        return width

    @staticmethod
    def _check_square(img: Image.Image, name: str) -> int:
        width, height = img.size
        if width != height:
            raise ConfigError(_non_square_message(name, width, height))
        return width

    def _read_labels(self, members: set[str] | None) -> tuple[list[str], list[list[float]]]:
        """Parse and check ``dataset.json``: names (normalised) and 25 finite numbers each."""
        where = f"{str(self._path)!r}"
        if members is not None:
            present = LABELS_FILE in members
        else:
            present = (self._path / LABELS_FILE).is_file()
        if not present:
            hint = ""
            nested = sorted(m for m in (members or ()) if posixpath.basename(m) == LABELS_FILE)
            if nested:
                hint = f" (found {nested[0]!r}: move it and the images up to the root)"
            raise ConfigError(
                f"no {LABELS_FILE} at the root of {where}{hint}; the dataset needs one of the form "
                f'{{"labels": [["00000/img00000000.png", [25 numbers]], ...]}} '
                f"(EG3D's dataset_tool.py writes it)"
            )
        try:
            with self._open(LABELS_FILE) as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{LABELS_FILE} in {where} is not valid JSON: {exc}") from exc

        entries = data.get("labels") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ConfigError(
                f'{LABELS_FILE} in {where} must be an object with a "labels" list of '
                f"[file name, [25 numbers]] pairs; got {type(data).__name__} without such a list"
            )
        if not entries:
            raise ConfigError(
                f'{LABELS_FILE} in {where} lists no images ("labels" is empty); add an entry '
                f"[file name, [25 numbers]] for each image"
            )

        names: list[str] = []
        labels: list[list[float]] = []
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            if not (isinstance(entry, list | tuple) and len(entry) == 2):
                raise ConfigError(
                    f"{LABELS_FILE} entry {i} must be a pair [file name, [25 numbers]], "
                    f"got {_short(entry)}"
                )
            name, label = entry
            if not isinstance(name, str) or not name:
                raise ConfigError(
                    f"{LABELS_FILE} entry {i}: the file name must be a non-empty string, "
                    f"got {_short(name)}"
                )
            name = _normalise_name(name, i)
            if name in seen:
                raise ConfigError(
                    f"{LABELS_FILE} lists {name!r} more than once (entry {i}); keep one entry "
                    f"per image"
                )
            seen.add(name)
            if (
                not isinstance(label, list | tuple)
                or len(label) != LABEL_SIZE
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in label)
            ):
                raise ConfigError(
                    f"{LABELS_FILE} entry {i} ({name!r}): the label must be a list of "
                    f"{LABEL_SIZE} numbers (16 cam2world + 9 intrinsics), got {_short(label)}"
                )
            if not all(math.isfinite(v) for v in label):
                raise ConfigError(
                    f"{LABELS_FILE} entry {i} ({name!r}): the label has NaN or infinite numbers; "
                    f"fix or drop this image's camera"
                )
            names.append(name)
            labels.append([float(v) for v in label])
        return names, labels


def _normalise_name(name: str, index: int) -> str:
    """Forward slashes, no leading './'; reject names that leave the dataset root."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or (len(parts[0]) == 2 and parts[0][1] == ":"):
        raise ConfigError(
            f"{LABELS_FILE} entry {index}: file name {name!r} must be relative to the dataset "
            f"root and stay inside it"
        )
    return name


def _non_square_message(name: str, width: int, height: int) -> str:
    return (
        f"image {name!r} is {width}x{height}, but images must be square; crop or pad the dataset "
        f"to square images first (EG3D's dataset_tool.py --transform=center-crop)"
    )


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
