"""Reading MNIST-format files strictly: IDX files (gzipped or not) and Keras-style .npz
archives, into uint8 images (N, 28, 28) and class indices, or one DataError line saying
what was found instead."""

from __future__ import annotations

import gzip
import logging
import zipfile
from pathlib import Path

import numpy as np

from mnist_exp.data.checksums import verify_checksum
from mnist_exp.errors import DataError

log = logging.getLogger("mnist_exp.data.load")  # the name its lines had before the split

IMAGE_SHAPE = (28, 28)
DIGITS = tuple(str(d) for d in range(10))
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08


def load_idx_folder(
    folder: Path, dataset: str = "mnist", verify_checksums: bool = True
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The four standard IDX files of `folder` (each `.gz` or not) as arrays."""
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(f"{folder}: missing {stem}[.gz]; a dataset folder needs "
                            f"{', '.join(IDX_FILES.values())} (each .gz or not)")
        arrays[key] = read_idx(found, dataset if verify_checksums else None)
    for split in ("train", "test"):
        _check_pair(arrays[f"x_{split}"], arrays[f"y_{split}"], f"{folder} ({split})")
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def read_idx(path: Path, verify_as: str | None = None) -> np.ndarray:
    """Parse one IDX file of unsigned bytes: (N, 28, 28) images or (N,) labels.

    With `verify_as` (a dataset name), a file with an official name and item count must
    match that dataset's published checksum.
    """
    path = Path(path)
    stored = _read_bytes(path)
    content = _gunzip(stored, path) if path.suffix == ".gz" else stored
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {content[:4].hex()!r})")
    if content[2] != _IDX_UBYTE:
        raise DataError(f"{path}: IDX data type 0x{content[2]:02x}; only unsigned bytes (0x08)")
    ndim = content[3]
    if ndim not in (1, 3):
        raise DataError(f"{path}: IDX file with {ndim} dimensions; expected labels (1) or "
                        "images (3)")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(content) != expected:
        raise DataError(f"{path}: header promises {shape} ({expected} bytes) but the file has "
                        f"{len(content)} bytes; truncated or corrupt")
    if ndim == 3 and shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{path}: images are {shape[1]}x{shape[2]}; expected 28x28")
    if verify_as is not None:
        verify_checksum(path, stored, content, shape[0], verify_as)
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def load_npz(path: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A Keras-style archive with x_train, y_train, x_test, y_test (as keras.datasets caches).

    People save MNIST in many forms; the unambiguous ones are understood and said in the
    log (float pixels in [0, 1] or whole numbers in [0, 255], flattened (N, 784) or
    (N, 28, 28, 1) images, one-hot labels), anything else is refused with what was found:
    casting it to bytes would train on garbage and report a meaningless accuracy.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in IDX_FILES}
    except KeyError as e:
        raise DataError(f"{path}: no array {e} in the archive; a Keras-style .npz holds "
                        f"{', '.join(IDX_FILES)}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz archive ({e})") from None
    images = {k: as_images(arrays[k], f"{path} ({k})") for k in ("x_train", "x_test")}
    labels = {k: as_labels(arrays[k], f"{path} ({k})") for k in ("y_train", "y_test")}
    for split in ("train", "test"):
        _check_pair(images[f"x_{split}"], labels[f"y_{split}"], f"{path} ({split})")
    return (images["x_train"], labels["y_train"]), (images["x_test"], labels["y_test"])


def as_images(x: np.ndarray, where: str) -> np.ndarray:
    """(N, 28, 28) uint8 pixels from an array saved as MNIST images, or DataError."""
    if x.ndim == 2 and x.shape[1] == IMAGE_SHAPE[0] * IMAGE_SHAPE[1]:
        log.info("%s: flattened images (N, 784); reshaped to (N, 28, 28)", where)
        x = x.reshape(len(x), *IMAGE_SHAPE)
    elif x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{where}: images of shape {x.shape}; expected (N, 28, 28)")
    if x.dtype == np.uint8 or len(x) == 0:
        return x.astype(np.uint8, copy=False)
    if x.dtype.kind not in "iuf":
        raise DataError(f"{where}: images of type {x.dtype}; expected pixel numbers 0-255")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{where}: images hold {np.isnan(x).sum()} NaN and "
                        f"{np.isinf(x).sum()} infinite values; expected pixels 0-255")
    low, high = x.min(), x.max()
    if low < 0 or high > 255:
        hint = " (standardised? save the raw pixels)" if low < 0 else ""
        raise DataError(f"{where}: pixel values from {low:g} to {high:g}{hint}; expected "
                        "0-255 (or floats in [0, 1])")
    if x.dtype.kind == "f" and high <= 1:
        log.warning("%s: float pixels in [0, 1]; scaled back to 0-255", where)
        return np.rint(x * 255).astype(np.uint8)
    if x.dtype.kind == "f" and not np.array_equal(x, np.rint(x)):
        raise DataError(f"{where}: float pixels from {low:g} to {high:g} that are not whole "
                        "numbers; expected 0-255 (or floats in [0, 1])")
    return x.astype(np.uint8)


def as_labels(y: np.ndarray, where: str) -> np.ndarray:
    """(N,) uint8 class indices 0-9 from an array saved as labels, or DataError."""
    classes = len(DIGITS)
    if y.ndim == 2 and y.shape[1] == classes and len(y) and np.isin(y, (0, 1)).all() \
            and (y.sum(axis=1) == 1).all():
        log.info("%s: one-hot labels; read as class indices", where)
        y = y.argmax(axis=1)
    if y.ndim != 1:
        raise DataError(f"{where}: labels of shape {y.shape}; expected (N,) class indices")
    if len(y) == 0:
        return y.astype(np.uint8)
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not (
            np.isfinite(y).all() and np.array_equal(y, np.rint(y)))):
        raise DataError(f"{where}: labels of type {y.dtype} that are not whole numbers; "
                        f"expected class indices 0-{classes - 1}")
    if y.min() < 0 or y.max() >= classes:
        raise DataError(f"{where}: labels from {y.min():g} to {y.max():g}; expected class "
                        f"indices 0-{classes - 1}")
    return y.astype(np.uint8)


def _check_pair(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{where}: images and labels files are swapped or of the wrong kind")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) and labels.max() > 9:
        raise DataError(f"{where}: label {labels.max()} out of range; expected 0-9")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def _gunzip(data: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: corrupt or truncated gzip ({e})") from None
