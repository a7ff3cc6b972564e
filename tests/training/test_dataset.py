"""ImageDataset on tiny folder and zip datasets written with PIL in EG3D's layout."""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from distill3d.models.camera import Camera
from distill3d.models.errors import ConfigError
from distill3d.training.dataset import ImageDataset

SIDE = 16
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30), (200, 100, 50)]


def _pixels(i: int, side: int = SIDE) -> np.ndarray:
    """A flat colour with two marker pixels, so a transposed or flipped load shows up."""
    a = np.empty((side, side, 3), dtype=np.uint8)
    a[:] = COLOURS[i]
    a[0, 0] = (255, 255, 255)
    a[1, 3] = (0, 0, 0)  # row 1, column 3
    return a


def _labels(n: int) -> torch.Tensor:
    return Camera.orbit(yaw_deg=[-30.0 + 15 * i for i in range(n)], pitch_deg=5.0).to_label()


def _names(n: int) -> list[str]:
    return [f"00000/img{i:08d}.png" for i in range(n)]


def _write_folder(root: Path, n: int = 5, labels: object = None, extra: bool = True) -> Path:
    (root / "00000").mkdir(parents=True)
    for i, name in enumerate(_names(n)):
        Image.fromarray(_pixels(i)).save(root / name)
    if extra:  # present but not listed: must be ignored
        Image.fromarray(_pixels(0)).save(root / "00000" / "unlisted.png")
    if labels is None:
        labels = [[name, lab] for name, lab in zip(_names(n), _labels(n).tolist(), strict=True)]
    (root / "dataset.json").write_text(json.dumps({"labels": labels}))
    return root


def _zip_folder(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return zip_path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return _write_folder(tmp_path / "ds")


@pytest.fixture
def zipped(folder: Path, tmp_path: Path) -> Path:
    return _zip_folder(folder, tmp_path / "ds.zip")


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_items_shapes_values_and_labels(kind: str, folder: Path, zipped: Path) -> None:
    ds = ImageDataset(folder if kind == "folder" else zipped)
    assert len(ds) == 5  # the unlisted image is ignored
    assert ds.resolution == SIDE
    assert ds.names == _names(5)
    for i in range(len(ds)):
        image, c = ds[i]
        assert image.shape == (3, SIDE, SIDE) and image.dtype == torch.float32
        assert c.shape == (25,) and c.dtype == torch.float32
        assert image.min() >= -1 and image.max() <= 1
        expected = torch.from_numpy(_pixels(i)).permute(2, 0, 1).float() / 127.5 - 1
        assert torch.equal(image, expected)
        assert torch.equal(image[:, 0, 0], torch.ones(3))  # white -> 1
        assert torch.equal(image[:, 1, 3], -torch.ones(3))  # black at row 1, column 3 -> -1
    # float32 labels survive the JSON round trip exactly, and are valid cameras
    assert torch.equal(ds.labels, _labels(5))
    assert ds.labels.shape == (5, 25) and ds.labels.dtype == torch.float32
    assert torch.equal(ds[2][1], _labels(5)[2])
    assert torch.allclose(
        Camera.from_label(ds.labels).cam2world, Camera.from_label(_labels(5)).cam2world
    )
    with pytest.raises(IndexError):
        ds[5]


def test_labels_property_is_a_copy(folder: Path) -> None:
    ds = ImageDataset(folder)
    ds.labels.zero_()
    assert torch.equal(ds.labels, _labels(5))


@pytest.mark.parametrize("resolution", [8, 32])
def test_resize(folder: Path, resolution: int) -> None:
    ds = ImageDataset(folder, resolution=resolution)
    assert ds.resolution == resolution
    image, _ = ds[3]
    assert image.shape == (3, resolution, resolution)
    # LANCZOS keeps a flat colour flat away from the marker pixels
    expected = torch.tensor(COLOURS[3]).float() / 127.5 - 1
    assert torch.allclose(image[:, -1, -1], expected, atol=1 / 127.5)


def test_same_resolution_is_not_resampled(folder: Path) -> None:
    a, b = ImageDataset(folder), ImageDataset(folder, resolution=SIDE)
    assert torch.equal(a[1][0], b[1][0])


def test_other_formats_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    Image.fromarray(_pixels(1)).save(root / "a.jpg", quality=95)
    Image.fromarray(_pixels(2)).save(root / "b.webp", lossless=True)
    Image.fromarray(_pixels(3)[:, :, 0]).save(root / "c.png")  # grayscale
    Image.fromarray(np.dstack([_pixels(4), np.full((SIDE, SIDE), 7, np.uint8)])).save(
        root / "d.png"
    )
    labels = _labels(4).tolist()
    names = ["a.jpg", "b.webp", "c.png", "./d.png"]
    (root / "dataset.json").write_text(
        json.dumps({"labels": [list(p) for p in zip(names, labels, strict=True)]})
    )
    ds = ImageDataset(root)
    images = [ds[i][0] for i in range(4)]
    assert all(img.shape == (3, SIDE, SIDE) for img in images)
    assert (images[0] - torch.tensor(COLOURS[1]).float().div(127.5).sub(1)[:, None, None]).abs()[
        :, 4:, 4:
    ].max() < 0.1
    assert torch.equal(images[1], torch.from_numpy(_pixels(2)).permute(2, 0, 1).float() / 127.5 - 1)
    gray = torch.from_numpy(_pixels(3)[:, :, 0]).float() / 127.5 - 1
    assert torch.equal(images[2], gray.expand(3, -1, -1))
    assert torch.equal(images[3], torch.from_numpy(_pixels(4)).permute(2, 0, 1).float() / 127.5 - 1)


def test_dataloader_workers_over_zip(zipped: Path, folder: Path) -> None:
    ds = ImageDataset(zipped)
    ds[0]  # open the zip in the parent first: workers must not share its handle
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    images, labels = zip(*loader, strict=True)
    images, labels = torch.cat(images), torch.cat(labels)
    ref = ImageDataset(folder)
    assert torch.equal(images, torch.stack([ref[i][0] for i in range(len(ref))]))
    assert torch.equal(labels, ref.labels)
    ds.close()
    assert torch.equal(ds[4][0], ref[4][0])  # reopens after close


# ---------------------------------------------------------------------------- errors


def _error(path: Path, match: str, **kwargs: object) -> None:
    with pytest.raises(ConfigError, match=match):
        ImageDataset(path, **kwargs)  # type: ignore[arg-type]


def test_missing_path(tmp_path: Path) -> None:
    _error(tmp_path / "nope", "does not exist")


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"abc")
    _error(tmp_path / "x.tar", "not a .zip")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    _error(tmp_path / "bad.zip", "cannot read .* as a zip")


def test_no_dataset_json(folder: Path, tmp_path: Path) -> None:
    (folder / "dataset.json").unlink()
    _error(folder, "no dataset.json")
    # a zip with everything inside a top-level folder: point at the nested file
    zip_path = tmp_path / "nested.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("ds/dataset.json", "{}")
    _error(zip_path, "found 'ds/dataset.json'")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", 'must be an object with a "labels" list'),
        ('{"labels": null}', 'must be an object with a "labels" list'),
        ('{"labels": []}', "lists no images"),
        ('{"labels": [["00000/img00000000.png"]]}', "must be a pair"),
        ('{"labels": [[3, [0]]]}', "non-empty string"),
        ('{"labels": [["00000/img00000000.png", [1, 2, 3]]]}', "list of 25 numbers"),
        ('{"labels": [["00000/img00000000.png", ' + json.dumps(["1"] * 25) + "]]}", "25 numbers"),
        ('{"labels": [["00000/img00000000.png", [NaN' + ", 0" * 24 + "]]]}", "NaN or infinite"),
        ('{"labels": [["00000/img00000000.png", [Infinity' + ", 0" * 24 + "]]]}", "NaN or inf"),
        ('{"labels": [["../img.png", ' + json.dumps([0] * 25) + "]]}", "stay inside"),
    ],
)
def test_bad_json(folder: Path, text: str, match: str) -> None:
    (folder / "dataset.json").write_text(text)
    _error(folder, match)


def test_duplicate_entry(tmp_path: Path) -> None:
    lab = [0.0] * 25
    root = _write_folder(tmp_path / "ds", labels=[[_names(1)[0], lab], [_names(1)[0], lab]])
    _error(root, "more than once")


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_listed_image_missing(tmp_path: Path, kind: str) -> None:
    labels = [[name, [0.0] * 25] for name in [*_names(2), "00000/gone.png"]]
    root = _write_folder(tmp_path / "ds", n=2, labels=labels)
    path = root if kind == "folder" else _zip_folder(root, tmp_path / "ds.zip")
    _error(path, r"not in .*'00000/gone.png'")


def test_non_square(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "ds", n=2)
    Image.fromarray(np.zeros((SIDE, SIDE + 2, 3), np.uint8)).save(root / _names(2)[0])
    _error(root, r"18x16, .*must be square")  # width x height; the first image is checked early
    ds_root = _write_folder(tmp_path / "ds2", n=2)
    Image.fromarray(np.zeros((SIDE + 2, SIDE, 3), np.uint8)).save(ds_root / _names(2)[1])
    ds = ImageDataset(ds_root)
    with pytest.raises(ConfigError, match="must be square"):
        ds[1]


def test_mixed_sizes_need_resolution(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "ds", n=2)
    Image.fromarray(_pixels(1, side=8)).save(root / _names(2)[1])
    with pytest.raises(ConfigError, match="pass resolution="):
        ImageDataset(root)[1]
    assert ImageDataset(root, resolution=SIDE)[1][0].shape == (3, SIDE, SIDE)


def test_undecodable_image(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "ds", n=2)
    (root / _names(2)[1]).write_bytes(b"garbage")
    ds = ImageDataset(root)  # only the first image is opened when building
    with pytest.raises(ConfigError, match="cannot decode image"):
        ds[1]


def test_bad_resolution(folder: Path) -> None:
    _error(folder, "resolution must be", resolution=0)


def test_labels_are_finite_cameras(folder: Path) -> None:
    ds = ImageDataset(folder)
    assert torch.isfinite(ds.labels).all()
    assert math.isclose(float(ds.labels[0, 16]), 4.2647, rel_tol=1e-6)  # fx / W


def test_pickles_without_the_zip_handle(zipped: Path) -> None:
    ds = ImageDataset(zipped)
    ds[0]  # opens the zip
    clone = pickle.loads(pickle.dumps(ds))  # what spawned DataLoader workers receive
    assert torch.equal(clone[3][0], ds[3][0])
