"""Checks that need more than the config: the machine's memory, then the loaded data.

The schema (config.py) judges each value on its own; these judge the config against
what it will meet, so a request that cannot work stops with one line before a model is
built or a run is started, instead of failing deep inside TensorFlow or, worse, training
to a meaningless number. Light on purpose: no TensorFlow here.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_exp.config.schema import CNNConfig, Config
from mnist_exp.errors import RequestError

_FLOAT = 4  # bytes per float32
_IMAGE_SIDE, _CLASSES = 28, 10


if TYPE_CHECKING:  # numpy costs ~0.1 s: not on the path that only checks the config
    import numpy as np


def parameter_count(config: Config, classes: int = _CLASSES) -> int:
    """Trainable and non-trainable weights of the configured network."""
    m, count, width, side = config.model, 0, _IMAGE_SIDE * _IMAGE_SIDE, _IMAGE_SIDE
    if isinstance(m, CNNConfig):
        channels = 1
        for filters in m.filters:  # same-padded convolution, then 2x2 pooling
            count += m.kernel_size ** 2 * channels * filters + filters
            channels, side = filters, side // 2
        width = side * side * channels
    for units in m.hidden_units:
        count += width * units + (4 * units if getattr(m, "batch_norm", False) else units)
        width = units
    return count + width * classes + classes


def optimizer_slots(config: Config) -> int:
    """Per-weight variables the optimizer keeps (Adam: two moments, ...)."""
    o = config.optimizer
    return {
        "adam": 2 + bool(getattr(o, "amsgrad", False)),
        "adamw": 2 + bool(getattr(o, "amsgrad", False)),
        "rmsprop": 1 + bool(getattr(o, "momentum", 0)) + bool(getattr(o, "centered", False)),
        "sgd": int(bool(getattr(o, "momentum", 0))),
    }.get(o.name, 2)


def training_bytes(config: Config) -> int:
    """A lower bound on what training needs: weights, their gradients and the optimizer's
    state, plus a batch of images and the widest layer's activations for it."""
    params = parameter_count(config)
    t, m = config.trainer, config.model
    widest = max(m.hidden_units)
    if isinstance(m, CNNConfig):
        widest = max(widest, max(m.filters) * _IMAGE_SIDE ** 2)
    batch = t.batch_size * (_IMAGE_SIDE ** 2 + 4 * widest)
    return _FLOAT * (params * (2 + optimizer_slots(config)) + batch)


def available_memory() -> int | None:
    """Bytes this process may still use: the machine's available memory, or its cgroup's
    (a container's) when that is lower; None where neither can be read (not Linux)."""
    found = []
    with contextlib.suppress(OSError, ValueError):
        meminfo = Path("/proc/meminfo").read_text()
        found += [int(line.split()[1]) * 1024 for line in meminfo.splitlines()
                  if line.startswith("MemAvailable:")]
    with contextlib.suppress(OSError, ValueError):
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((cgroup / "memory.current").read_text()))
    return min(found) if found else None


def check_fits_memory(config: Config, available: int | None = None) -> None:
    """Refuse a network whose training state alone cannot fit in memory, before TensorFlow
    tries to allocate it (and the kernel kills the process, or the machine swaps)."""
    available = available_memory() if available is None else available
    need = training_bytes(config)
    if available is None or need <= available:
        return
    keys = "model.hidden_units" + (" or model.filters"
                                   if isinstance(config.model, CNNConfig) else "")
    raise RequestError(
        f"the model has {parameter_count(config):,} parameters: training it with "
        f"{config.optimizer.name} and trainer.batch_size={config.trainer.batch_size} needs "
        f"at least {_size(need)}, but {_size(available)} of memory is available; use "
        f"smaller {keys}")


def check_fits_data(config: Config, y_train: np.ndarray, y_val: np.ndarray,
                    images: np.ndarray) -> None:
    """Refuse settings that the loaded data cannot meet, naming the keys and numbers."""
    import numpy as np

    d, t = config.data, config.trainer
    n_train = len(y_train)
    if t.batch_size > n_train:
        raise RequestError(
            f"trainer.batch_size={t.batch_size} is larger than the {n_train} training "
            f"samples ({n_train + len(y_val)} less data.validation_split={d.validation_split} "
            f"for validation); use trainer.batch_size<={n_train} or more data")
    classes = np.unique(y_train)
    if len(classes) < 2:
        raise RequestError(f"the training split holds only class {classes.tolist()}; a "
                           "classifier needs at least two classes to learn anything")
    if images.size and images.min() == images.max():
        raise RequestError(f"every training image is the same flat value {images.min()}; "
                           "the data holds no pictures")


def _size(n: float) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    power = min(len(units) - 1, int(math.log(max(n, 1), 1024)))
    return f"{n / 1024 ** power:.1f} {units[power]}"
