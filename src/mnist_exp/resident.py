"""The fast training path without augmentation: the training and validation sets sit on
the device once, and each call into TensorFlow runs a whole epoch (or a whole validation
pass), the epoch's order drawn inside the XLA-compiled program (order.py). No per-batch
or per-chunk copies from the host.

Keras' `fit` still drives it, so callbacks, validation, early stopping, schedules and
backups work per epoch as before; Keras sees one step per epoch. The step is Keras' own
train_step, called once per batch in the same order as the plain path's batches
(batches.py): the leftover smaller batch first, then the full ones.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from mnist_exp.order import epoch_order


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


def whole_epoch(train_step: Callable, images: np.ndarray, labels: np.ndarray,
                batch_size: int) -> Callable:
    """A train_step for EpochKeys: Keras' own step over every batch of the resident
    training set, in the order drawn from the key, in one compiled loop."""
    x, y = _resident(images, labels)

    def train_epoch(key: tf.Tensor | tuple) -> dict:
        key = key[0] if isinstance(key, tuple | list) else key
        order = epoch_order(key[0, 0], key[0, 1], len(labels))
        return _every_batch(train_step, x, y, batch_size,
                            lambda start, size: tf.slice(order, [start], [size]))

    return train_epoch


def whole_set(test_step: Callable, images: np.ndarray, labels: np.ndarray,
              batch_size: int) -> Callable:
    """A test_step for OneCall: Keras' own step over every batch of the resident validation
    set, in order, in one compiled loop (from the host, Keras would copy and call once per
    batch: ~30% of a steady epoch on Fashion-MNIST, 2 cores). The metrics are the same
    size-weighted means, summed in another order."""
    x, y = _resident(images, labels)

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
