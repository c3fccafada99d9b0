"""Dropout masks that XLA computes cheaply on a CPU, for the steps our XLA paths trace.

Keras' `Dropout` draws its mask with a stateless Philox op, which XLA's CPU backend expands
into elementwise 64-bit arithmetic: on a CPU that mask costs more than everything else XLA
saves (docs/performance.md, "Corners of the schema"). Inside `cheap_masks()`, the masks
come instead from an integer hash of each element's index and the layer's own seed (two
rounds of murmur3's 32-bit finaliser: a handful of 32-bit multiplies, shifts and xors per
element, which XLA vectorises).

Only the tracing of a step is affected: the model keeps Keras' own `Dropout` layers, their
rate and their seed generators (advanced once a mask, as Keras does), so a saved or logged
model is plain Keras and loads anywhere. What changes is which random numbers a training
step draws: as random as Philox's for dropout, but not the same ones.

The traced step reads each layer's rate from a variable kept here (`use_variable_rates`),
not as a constant: a search draws a new rate for every trial, and a kept model
(kept_models.py) then trains the next trial on the program already compiled.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps

import keras
import tensorflow as tf
from keras.src.backend.tensorflow import random as keras_random
from keras.src.random.seed_generator import SeedGenerator, draw_seed

_GOLDEN = 0x9E3779B9  # 2**32 / phi: spreads consecutive indices before the first round

# A Dropout layer's rate as the traced step reads it, by the layer's seed generator (what
# reaches `dropout`); weak: it goes with its model.
_rates: weakref.WeakKeyDictionary[SeedGenerator, tf.Variable] = weakref.WeakKeyDictionary()


def dropout_layers(model: keras.Model) -> list[keras.layers.Dropout]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]


def use_variable_rates(model: keras.Model) -> None:
    """Steps traced for `model` from now on read its Dropout layers' rates from variables,
    which hold the layers' `rate` now (set it on the layer, then call this again)."""
    for layer in dropout_layers(model):
        variable = _rates.get(layer.seed_generator)
        if variable is None:
            _rates[layer.seed_generator] = tf.Variable(layer.rate, dtype=tf.float32,
                                                       trainable=False)
        else:
            variable.assign(layer.rate)


def dropout(inputs: tf.Tensor, rate: float, noise_shape: tuple | None = None,
            seed: object = None) -> tf.Tensor:
    """Keras' `backend.random.dropout`, drawing its mask from `hashed_uniform`: each element
    kept with probability 1 - rate and the kept ones scaled by 1 / (1 - rate)."""
    if rate == 0.0:
        return inputs
    if rate == 1.0:
        return tf.zeros_like(inputs)
    variable = _rates.get(seed) if isinstance(seed, SeedGenerator) else None
    rate = tf.cast(rate if variable is None else variable, inputs.dtype)
    shape = tf.shape(inputs) if noise_shape is None else _concrete(inputs, noise_shape)
    keep = hashed_uniform(shape, draw_seed(seed)) >= tf.cast(rate, tf.float32)
    return tf.where(keep, inputs / (1 - rate), tf.zeros_like(inputs))


def hashed_uniform(shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Floats in [0, 1) of `shape`, 24 random bits each, from the element's index and the
    two words of `seed` (a Keras seed: a new one for every mask)."""
    words = tf.cast(tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), 0xFFFFFFFF), tf.uint32)
    index = tf.bitcast(tf.range(tf.reduce_prod(shape), dtype=tf.int32), tf.uint32)
    h = _finalise(index * tf.constant(_GOLDEN, tf.uint32) ^ words[0])
    h = _finalise(h ^ words[1])
    bits = tf.bitwise.right_shift(h, tf.constant(8, tf.uint32))
    return tf.reshape(tf.cast(bits, tf.float32) * (1.0 / (1 << 24)), shape)


def _finalise(h: tf.Tensor) -> tf.Tensor:
    """murmur3's fmix32: every input bit flips each output bit with probability ~1/2."""
    h = h ^ tf.bitwise.right_shift(h, tf.constant(16, tf.uint32))
    h = h * tf.constant(0x85EBCA6B, tf.uint32)
    h = h ^ tf.bitwise.right_shift(h, tf.constant(13, tf.uint32))
    h = h * tf.constant(0xC2B2AE35, tf.uint32)
    return h ^ tf.bitwise.right_shift(h, tf.constant(16, tf.uint32))


def _concrete(inputs: tf.Tensor, noise_shape: tuple) -> tf.Tensor:
    """Keras' noise_shape with its None entries taken from the inputs."""
    dynamic = tf.shape(inputs)
    return tf.stack([dynamic[i] if size is None else size
                     for i, size in enumerate(noise_shape)])


@contextmanager
def cheap_masks() -> Iterator[None]:
    """Inside, Keras' `Dropout` draws its masks from `dropout` above. Meant for the body of a
    step that XLA traces (it runs only while tracing); not thread-safe, like tracing."""
    keras_dropout = keras_random.dropout
    keras_random.dropout = dropout
    try:
        yield
    finally:
        keras_random.dropout = keras_dropout


def traced_with_cheap_masks(step: Callable) -> Callable:
    """`step`, whose traced graph draws dropout masks from `dropout` above."""

    @wraps(step)
    def step_with_cheap_masks(*args: object, **kwargs: object) -> object:
        with cheap_masks():
            return step(*args, **kwargs)

    return step_with_cheap_masks
