"""Loading MNIST-format datasets and holding out a validation split.

Sources, in order: `path` (a folder of the four IDX files, gzipped or not, or a
Keras-style .npz), the sample shipped inside this package (`mnist_sample`), the Debian
package's folder for Fashion-MNIST, then keras.datasets (download and cache). IDX files
are parsed strictly, and files that claim to be the official ones are checked against the
published checksums, so a truncated download fails loudly instead of training on garbage.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mnist_exp.errors import DataError, first_line

log = logging.getLogger(__name__)

IMAGE_SHAPE = (28, 28)
DIGITS = tuple(str(d) for d in range(10))
CLASS_NAMES = {
    "mnist": DIGITS,
    "mnist_sample": DIGITS,
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
}
# Where a dataset is found without data.path: shipped with mnist-exp (see its README.md),
# or installed by a Debian package.
LOCAL_FOLDERS = {
    "mnist_sample": Path(__file__).resolve().parent / "mnist_sample",
    "fashion_mnist": Path("/usr/share/datasets/fashion-mnist"),
}
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08
_KERAS_CACHE = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "datasets"


class Official(NamedTuple):
    """What the published file holds: its item count, the md5 of the published .gz, and
    the md5s of its uncompressed content (which survive recompression, e.g. by Debian).
    For mnist_sample, "published" means as shipped in this repository."""

    items: int
    gz_md5: str
    content_md5: tuple[str, ...] = ()


OFFICIAL: dict[str, dict[str, Official]] = {
    "mnist": {
        "train-images-idx3-ubyte": Official(60000, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte": Official(60000, "d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte": Official(10000, "9fb629c4189551a2d022fa330f9573f3",
                                           ("2646ac647ad5339dbf082846283269ea",)),
        "t10k-labels-idx1-ubyte": Official(10000, "ec29112dd5afa0611ce80d1b7f02629c",
                                           ("27ae3e4e09519cfbb04c329615203637",)),
    },
    # The official MNIST test set shuffled with numpy.random.default_rng(0) and split
    # 8,000 / 2,000 (see mnist_sample/README.md).
    "mnist_sample": {
        "train-images-idx3-ubyte": Official(8000, "7db24afd2854b3f52ca1a264bc3f8cc6",
                                            ("a59811b062b5886d8a1ae1be5c50e6c4",)),
        "train-labels-idx1-ubyte": Official(8000, "e848283caf97512b57967bd9676a38d3",
                                            ("4fff8f8b82163dc5b021de149a1641e6",)),
        "t10k-images-idx3-ubyte": Official(2000, "fa98a7fff39aee3c46450656ac6302dc",
                                           ("f15cf52e7ce4e1306f1d8278c1152b0f",)),
        "t10k-labels-idx1-ubyte": Official(2000, "bafbfbc3fec38e60db849a261f00c631",
                                           ("8b27ecb1ec135b7652db904823aee4bc",)),
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": Official(60000, "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                            ("f4a8712d7a061bf5bd6d2ca38dc4d50a",)),
        "train-labels-idx1-ubyte": Official(60000, "25c81989df183df01b3e8a0aad5dffbe",
                                            ("9018921c3c673c538a1fc5bad174d6f9",)),
        "t10k-images-idx3-ubyte": Official(10000, "bef4ecab320f06d8554ea6380940ec79",
                                           ("8181f5470baa50b63fa0f6fddb340f0a",)),
        "t10k-labels-idx1-ubyte": Official(10000, "bb300cfdad3c16e7a12a480ee83cd310",
                                           ("15d484375f8d13e6eb1aabb0c3f46965",)),
    },
}


@dataclass(frozen=True)
class Dataset:
    """Train/validation/test arrays: uint8 images (N, 28, 28) and integer labels."""

    name: str
    source: str
    class_names: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_dataset(
    name: str,
    path: str | None = None,
    *,
    validation_split: float = 0.2,
    seed: int = 42,
    verify_checksums: bool = True,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
) -> Dataset:
    """Load `name`, hold out a stratified validation split of the training set, and
    optionally keep only a seeded sample of each set (for smoke runs)."""
    (x_train, y_train), (x_test, y_test), source = load_arrays(name, path, verify_checksums)
    rng = np.random.default_rng(seed)
    x_train, y_train = _sample(x_train, y_train, max_train_samples, rng)
    x_test, y_test = _sample(x_test, y_test, max_test_samples, rng)
    x_train, x_val, y_train, y_val = split_validation(x_train, y_train, validation_split, seed)
    return Dataset(name, source, CLASS_NAMES[name],
                   x_train, y_train, x_val, y_val, x_test, y_test)


def split_validation(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split off `fraction` of (x, y), stratified by class when every class can be."""
    from sklearn.model_selection import train_test_split  # 1 s: only when splitting

    n_val = round(len(y) * fraction)
    if n_val < 1 or n_val >= len(y):
        raise DataError(f"data.validation_split={fraction} leaves {n_val} of {len(y)} training "
                        "samples for validation; use more samples or another split")
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 and min(n_val, len(y) - n_val) >= len(counts) \
        else None
    return train_test_split(x, y, test_size=n_val, random_state=seed, stratify=stratify)


def load_arrays(
    name: str, path: str | None = None, verify_checksums: bool = True
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], str]:
    """((x_train, y_train), (x_test, y_test), source) from the first source that has them."""
    if name not in CLASS_NAMES:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(CLASS_NAMES)}")
    if path is not None:
        where = Path(path).expanduser()
        if where.is_dir():
            return (*load_idx_folder(where, name, verify_checksums), str(where.resolve()))
        if where.is_file():
            return (*load_npz(where), str(where.resolve()))
        raise DataError(f"data.path {str(where)!r} does not exist; give a folder with the four "
                        "IDX files or a Keras-style .npz")
    local = LOCAL_FOLDERS.get(name)
    if local is not None and local.is_dir():
        return (*load_idx_folder(local, name, verify_checksums), str(local))
    if name == "mnist_sample":
        raise DataError(f"{local}: the sample dataset shipped with mnist-exp is missing; "
                        "reinstall the package, or point data.path at a copy")
    return (*_download(name), str(_KERAS_CACHE))


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
        _verify_checksum(path, stored, content, shape[0], verify_as)
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


def _verify_checksum(path: Path, stored: bytes, content: bytes, items: int, dataset: str) -> None:
    stem = path.name.removesuffix(".gz")
    official = OFFICIAL.get(dataset, {}).get(stem)
    if official is None or items != official.items:
        return  # not a file that claims to be the official one (e.g. a re-split subset)
    if path.suffix == ".gz" and hashlib.md5(stored).hexdigest() == official.gz_md5:
        return
    if not official.content_md5:
        log.warning("%s: no published checksum for this file's uncompressed content; "
                    "not verified", path)
        return
    digest = hashlib.md5(content).hexdigest()
    if digest not in official.content_md5:
        raise DataError(f"{path}: checksum mismatch for the official {dataset} file {stem} "
                        f"(content md5 {digest}); re-download it, or set "
                        "data.verify_checksums=false for a deliberately modified copy")


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


def _sample(x: np.ndarray, y: np.ndarray, n: int | None, rng: np.random.Generator):
    if n is None or n >= len(y):
        return x, y
    keep = np.sort(rng.permutation(len(y))[:n])
    return x[keep], y[keep]


def _download(name: str):
    """keras.datasets' own loader: downloads once, then reads its cache (~/.keras/datasets)."""
    import keras

    loader = getattr(keras.datasets, name)
    try:
        return loader.load_data()
    except Exception as e:
        reason = first_line(e)
        raise DataError(
            f"could not download {name} via keras.datasets ({reason}); offline? point "
            "data.path at a local copy: a folder with the four IDX files "
            "(train-images-idx3-ubyte.gz, ...) or a Keras-style .npz, e.g. "
            "data.path=~/datasets/mnist; or try the digits shipped with mnist-exp: "
            "data=mnist_sample") from None

