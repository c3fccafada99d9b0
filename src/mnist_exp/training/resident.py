"""The fast training path without augmentation: the training and validation sets sit on
the device once, and each call into TensorFlow runs a whole epoch (or a whole validation
pass), the epoch's order drawn inside the XLA-compiled program (order.py). No per-batch
or per-chunk copies from the host.

Keras' `fit` still drives it, so callbacks, validation, early stopping, schedules and
backups work per epoch as before; Keras sees one step per epoch. The step is Keras' own
train_step, called once per batch in the same order as the plain path's batches
(batches.py): the leftover smaller batch first, then the full ones.

The sets' variables and Keras' traced functions stay with the model (`steps_for`), so its
next fit on sets of the same shapes (a sweep's next job on a kept model: kept_models.py)
assigns the new values and runs what is already traced and compiled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import keras
import numpy as np
import tensorflow as tf

from mnist_exp.training.order import epoch_order
from mnist_exp.training.xla_dropout import traced_with_cheap_masks


class OneCall(keras.utils.PyDataset):
    """One item, whose value does not matter: a validation pass over a resident set."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> np.ndarray:
        return np.zeros((1, 1), np.int64)


class EpochKeys(keras.utils.PyDataset):
    """One item per epoch: the (seed, epoch) pair that picks the epoch's order."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> np.ndarray:
        return np.array([[self.seed, self.epoch]], np.int64)

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class ResidentSteps:
    """A model's training and validation sets on the device, its own steps wrapped to run
    over them, and Keras' functions traced from those wrappers (once fit has made them)."""

    def __init__(self, model: keras.Model, train: tuple[np.ndarray, np.ndarray],
                 val: tuple[np.ndarray, np.ndarray], batch_size: int,
                 eval_batch_size: int) -> None:
        self.shapes = _shapes(train, val, batch_size, eval_batch_size)
        self._sets = _resident(*train), _resident(*val)
        self._steps = (traced_with_cheap_masks(whole_epoch(model.train_step, *self._sets[0],
                                                           batch_size)),
                       whole_set(model.test_step, *self._sets[1], eval_batch_size))
        self._functions: tuple[Callable | None, Callable | None] = (None, None)

    def load(self, train: tuple[np.ndarray, np.ndarray],
             val: tuple[np.ndarray, np.ndarray]) -> None:
        """New values of the same shapes into the resident variables."""
        for variables, arrays in zip(self._sets, (train, val), strict=True):
            for variable, array in zip(variables, arrays, strict=True):
                variable.assign(array)

    @contextmanager
    def installed(self, model: keras.Model) -> Iterator[None]:
        """The model runs these steps (and their traced functions) inside; its own steps
        are back afterwards, for a later fit or evaluate on host data."""
        plain = model.train_step, model.test_step
        model.train_step, model.test_step = self._steps
        model.train_function, model.test_function = self._functions
        try:
            yield
        finally:
            self._functions = model.train_function, model.test_function
            model.train_step, model.test_step = plain
            model.train_function = model.test_function = None


def steps_for(model: keras.Model, train: tuple[np.ndarray, np.ndarray],
              val: tuple[np.ndarray, np.ndarray], batch_size: int,
              eval_batch_size: int) -> ResidentSteps:
    """The model's resident steps for these sets: those of its last fit, with the new values
    loaded, when the shapes and batch sizes are the same (nothing to trace or compile);
    else new ones. They live as long as the model (an attribute, like Keras' own
    train_function), so a model no job keeps frees its sets with it."""
    kept = getattr(model, _ATTRIBUTE, None)
    if kept is not None and kept.shapes == _shapes(train, val, batch_size, eval_batch_size):
        kept.load(train, val)
        return kept
    steps = ResidentSteps(model, train, val, batch_size, eval_batch_size)
    setattr(model, _ATTRIBUTE, steps)
    return steps


_ATTRIBUTE = "_mnist_exp_resident_steps"


def _shapes(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
            batch_size: int, eval_batch_size: int) -> tuple:
    return (*((a.shape, a.dtype.str) for a in (*train, *val)), batch_size, eval_batch_size)


def whole_epoch(train_step: Callable, x: tf.Variable, y: tf.Variable,
                batch_size: int) -> Callable:
    """A train_step for EpochKeys: Keras' own step over every batch of the resident
    training set, in the order drawn from the key, in one compiled loop."""

    def train_epoch(key: tf.Tensor | tuple) -> dict:
        key = key[0] if isinstance(key, tuple | list) else key
        order = epoch_order(key[0, 0], key[0, 1], int(y.shape[0]))
        return _every_batch(train_step, x, y, batch_size,
                            lambda start, size: tf.slice(order, [start], [size]))

    return train_epoch


def whole_set(test_step: Callable, x: tf.Variable, y: tf.Variable,
              batch_size: int) -> Callable:
    """A test_step for OneCall: Keras' own step over every batch of the resident validation
    set, in order, in one compiled loop (from the host, Keras would copy and call once per
    batch, a large share of a steady epoch). The metrics are the same size-weighted means,
    summed in another order."""

    def evaluate_all(_: tf.Tensor | tuple) -> dict:
        return _every_batch(test_step, x, y, batch_size,
                            lambda start, size: start + tf.range(size))

    return evaluate_all


def _resident(images: np.ndarray, labels: np.ndarray) -> tuple[tf.Variable, tf.Variable]:
    """The arrays on the device, once (variables: not baked into the program)."""
    return tf.Variable(images, trainable=False), tf.Variable(labels, trainable=False)


def _every_batch(step: Callable, x: tf.Variable, y: tf.Variable, batch_size: int,
                 rows: Callable[[int | tf.Tensor, int], tf.Tensor]) -> dict:
    """Keras' `step` on the rows `rows(start, size)` of every batch: the leftover smaller
    batch first, then the full ones in a tf.while_loop (each of static size, for XLA);
    the step's metrics after them all."""
    full, rest = divmod(int(x.shape[0]), batch_size)
    if rest:
        picked = rows(full * batch_size, rest)
        step((tf.gather(x, picked), tf.gather(y, picked)))

    def one_batch(i: tf.Tensor) -> tf.Tensor:
        picked = rows(i * batch_size, batch_size)
        step((tf.gather(x, picked), tf.gather(y, picked)))
        return i + 1

    tf.while_loop(lambda i: i < full, one_batch, [tf.constant(0)])
    return step.__self__.get_metrics_result()
