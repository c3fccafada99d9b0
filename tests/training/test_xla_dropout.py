"""Dropout under XLA (xla_dropout.py): masks as random as Keras' own, drawn without Philox in
every step our XLA paths trace, while the model stays plain Keras."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend.tensorflow import random as keras_random

from helpers import compose_config
from mnist_exp.config.schema import parse_config
from mnist_exp.data.load import load_dataset
from mnist_exp.training import xla_dropout
from mnist_exp.training.execution import prepare_model
from mnist_exp.training.fit import fit
from mnist_exp.training.xla_dropout import (
    cheap_masks,
    dropout,
    hashed_uniform,
    use_variable_rates,
)

N = 256 * 512


def _masks(rate: float, count: int, seed: int = 3) -> list[np.ndarray]:
    generator = keras.random.SeedGenerator(seed)
    return [dropout(tf.ones([256, 512]), rate, seed=generator).numpy() for _ in range(count)]


@pytest.mark.parametrize("rate", [0.05, 0.25, 0.5])
def test_a_mask_keeps_one_minus_rate_and_scales_what_it_keeps(rate):
    for mask in _masks(rate, 2):
        kept = mask > 0
        assert abs(kept.mean() - (1 - rate)) < 5 * math.sqrt(rate * (1 - rate) / N)
        np.testing.assert_allclose(mask[kept], 1 / (1 - rate), rtol=1e-6)


def test_masks_are_independent_of_each_other_and_of_their_neighbours():
    """Consecutive masks of one layer, masks of two layers, and neighbouring elements agree
    as often as independent draws do (a shifted or repeated stream would not)."""
    rate, bound = 0.5, 5 * math.sqrt(0.25 / N)
    first, second = _masks(rate, 2)
    (other,) = _masks(rate, 1, seed=4)
    for a, b in ((first, second), (first, other)):
        assert abs(((a > 0) == (b > 0)).mean() - 0.5) < bound
    kept = first > 0
    assert abs((kept[:, 1:] == kept[:, :-1]).mean() - 0.5) < 2 * bound
    assert abs((kept[1:] == kept[:-1]).mean() - 0.5) < 2 * bound


def test_hashed_uniform_is_uniform_and_a_function_of_its_seed():
    u = hashed_uniform(tf.constant([64, 1024]), tf.constant([11, 0], tf.int64)).numpy()
    assert u.min() >= 0 and u.max() < 1
    counts, _ = np.histogram(u, 16, (0, 1))
    expected = u.size / 16
    assert ((counts - expected) ** 2 / expected).sum() < 50  # chi2, 15 dof: p < 1e-5
    again = hashed_uniform(tf.constant([64, 1024]), tf.constant([11, 0], tf.int64)).numpy()
    np.testing.assert_array_equal(u, again)


def test_noise_shape_and_the_extreme_rates_are_keras_own():
    x = tf.ones([64, 32])
    shared = dropout(x, 0.5, noise_shape=(None, 1), seed=keras.random.SeedGenerator(1))
    assert (np.ptp(shared.numpy(), axis=1) == 0).all()  # one draw per row
    assert dropout(x, 0.0) is x
    assert not dropout(x, 1.0).numpy().any()


def test_keras_dropout_draws_through_the_function_replaced_and_gets_it_back():
    """Keras' Dropout layer calls backend.random.dropout when traced; inside cheap_masks that
    is ours, with no Philox op in the graph, and Keras' own again afterwards, even after an
    error. If Keras stops calling it, this fails and names the module that relies on it."""
    layer = keras.layers.Dropout(0.3)

    def op_types() -> set[str]:
        traced = tf.function(lambda x: layer(x, training=True))
        graph = traced.get_concrete_function(tf.TensorSpec([8, 16])).graph
        return {op.type for op in graph.get_operations()}

    philox = "StatelessRandomUniformV2"
    assert philox in op_types()
    with cheap_masks():
        assert philox not in op_types(), (
            "Keras' Dropout no longer draws through keras.src.backend.tensorflow.random."
            "dropout: mnist_exp/training/xla_dropout.py relies on it")
    with pytest.raises(RuntimeError), cheap_masks():
        raise RuntimeError
    assert keras_random.dropout is not xla_dropout.dropout
    assert philox in op_types()


class CountingPhilox:
    """TensorFlow's stateless dropout, counting the masks traced or run with it."""

    def __init__(self, original) -> None:
        self.original, self.calls = original, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)


@pytest.mark.parametrize(("path", "philox_masks"), [
    ((), False),  # auto: resident sets under XLA
    (("trainer.augment.max_shift=1",), False),  # fused chunks under XLA
    (("trainer.jit_compile=true", "trainer.steps_per_execution=1"), False),  # Keras' XLA step
    (("trainer.jit_compile=false",), True),  # Keras' own loop: Keras' masks
], ids=["resident", "fused", "keras xla step", "keras loop"])
def test_every_xla_path_trains_without_philox_masks(path, philox_masks, mini, monkeypatch,
                                                    tmp_path):
    counting = CountingPhilox(tf.nn.experimental.stateless_dropout)
    monkeypatch.setattr(tf.nn.experimental, "stateless_dropout", counting)
    config = parse_config(compose_config(
        f"data.path={mini}", "model.dropout=0.25", "trainer.epochs=2",
        "trainer.compile_cache=false", "trainer.reuse_model=false", *path))
    data = load_dataset("mnist", str(mini), seed=0, max_train_samples=400)
    model, plan = prepare_model(config, data)
    history = fit(model, data, config.trainer, plan, verbose=0,
                  learning_rate=config.optimizer.learning_rate)
    assert (counting.calls > 0) == philox_masks
    assert history["loss"][1] < history["loss"][0]
    model.save(tmp_path / "model.keras")  # plain Keras: loads with no object of ours
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert keras.layers.Dropout in {type(layer) for layer in loaded.layers}


def test_a_traced_step_reads_the_rate_the_layer_has_now():
    """After use_variable_rates, a new layer.rate (and the call again) reaches the step
    already traced, without tracing it again: a kept model's next trial."""
    model = keras.Sequential([keras.Input((4096,)), keras.layers.Dropout(0.1)])
    use_variable_rates(model)
    traces = []

    @tf.function(jit_compile=True)
    def step(x):
        traces.append(1)
        with cheap_masks():
            return model(x, training=True)

    x = tf.ones([16, 4096])
    assert abs((step(x).numpy() > 0).mean() - 0.9) < 0.01
    model.layers[0].rate = 0.6
    use_variable_rates(model)
    kept = step(x).numpy()
    assert abs((kept > 0).mean() - 0.4) < 0.01
    np.testing.assert_allclose(kept[kept > 0], 1 / 0.4, rtol=1e-6)
    assert len(traces) == 1
