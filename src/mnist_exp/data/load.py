"""Loading MNIST-format datasets and holding out a validation split.

Sources, in order: `path` (a folder of the four IDX files, gzipped or not, or a
Keras-style .npz), the sample shipped inside this package (`mnist_sample`), the Debian
package's folder for Fashion-MNIST, then keras.datasets (download and cache). The files are
parsed strictly (formats.py), and files that claim to be the official ones are checked
against the published checksums (checksums.py), so a truncated download fails loudly
instead of training on garbage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_exp.data.formats import DIGITS, IMAGE_SHAPE, load_idx_folder, load_npz, read_idx
from mnist_exp.errors import DataError, first_line

__all__ = [  # the readers stay importable from here, where their callers look for them
    "CLASS_NAMES", "IMAGE_SHAPE", "LOCAL_FOLDERS", "Dataset", "load_arrays", "load_dataset",
    "load_idx_folder", "load_npz", "read_idx", "split_validation",
]

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
_KERAS_CACHE = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "datasets"


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
