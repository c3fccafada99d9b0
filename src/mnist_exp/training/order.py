"""Each epoch's order of the training samples: one seeded function that gives the same
permutation eagerly on the host (batches.py) and inside an XLA-compiled epoch
(resident.py), so both paths train on the same batches.

XLA on a CPU has no kernel for TensorFlow's StatelessShuffle, so the order is the
argsort of stateless random keys. The keys are full-range 64-bit integers: float32 keys
tie some hundred times in 48,000 draws, and a tie could sort differently in the two
places; 64-bit ties are practically impossible.
"""

from __future__ import annotations

import tensorflow as tf


def epoch_order(seed: int | tf.Tensor, epoch: int | tf.Tensor, n: int) -> tf.Tensor:
    """A permutation of range(n) (int32), drawn from (seed, epoch): new every epoch."""
    keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.cast(seed, tf.int64),
                                                           tf.cast(epoch, tf.int64)]),
                                       minval=None, maxval=None, dtype=tf.int64)
    # Descending: tf.argsort's ascending order negates the keys, which overflows int64.
    return tf.argsort(keys, direction="DESCENDING", stable=True)
