"""Jobs in one process train a kept model: exactly as a fresh model would, without tracing
its steps again (kept_models.py)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import compose_config
from mnist_exp.config.schema import parse_config
from mnist_exp.data.load import load_dataset
from mnist_exp.training import kept_models
from mnist_exp.training.execution import prepare_model
from mnist_exp.training.fit import fit
from mnist_exp.training.xla_dropout import dropout_layers

# Dropout (random-seed state; under XLA its rate is a variable), a schedule (it moves the
# learning-rate variable) and the resident path (steps traced once per model, under XLA).
_SHARED = ("model.dropout=0.2", "trainer.lr_schedule.name=cosine",
           "trainer.lr_schedule.min_lr=0.0001", "trainer.epochs=2", "trainer.jit_compile=true")


def _job(mini, *overrides: str):
    config = parse_config(compose_config(f"data.path={mini}", *_SHARED, *overrides))
    t = config.trainer
    data = load_dataset("mnist", str(mini), seed=t.seed, max_train_samples=900)
    model, plan = prepare_model(config, data)
    return model, data, t, plan, config.optimizer.learning_rate


class _Traces:
    """Counts how often TensorFlow runs the model's own train_step in Python: once per
    trace (inside the traced program it is never called from Python again)."""

    def __init__(self, model) -> None:
        self.count, self._step, self.__self__ = 0, model.train_step, model
        model.train_step = self

    def __call__(self, data):
        self.count += 1
        return self._step(data)


@pytest.fixture
def nothing_kept():
    kept_models.forget()
    yield
    kept_models.forget()


def test_a_kept_model_trains_exactly_as_a_fresh_one(mini, nothing_kept):
    """Job 2 (its own seed, split, learning rate, dropout rate) on the model job 1 left: the
    same losses, learning rates and weights as job 2 on a fresh model, and nothing traced
    again; the kept model has job 2's dropout rate, as its saved config will say."""
    first, data, t, plan, rate = _job(mini, "trainer.seed=1", "optimizer.learning_rate=0.001")
    first = kept_models.adopt(first, plan)
    traces = _Traces(first)
    fit(first, data, t, plan, learning_rate=rate, verbose=0)
    assert traces.count >= 1

    job_2 = ("trainer.seed=2", "optimizer.learning_rate=0.003", "model.dropout=0.35")
    second, data, t, plan, rate = _job(mini, *job_2)
    kept = kept_models.adopt(second, plan)
    assert kept is first
    assert {layer.get_config()["rate"] for layer in dropout_layers(kept)} == {0.35}
    history = fit(kept, data, t, plan, learning_rate=rate, verbose=0)
    traced_before = traces.count

    kept_models.forget()
    fresh, data, t, plan, rate = _job(mini, *job_2)
    assert kept_models.adopt(fresh, plan) is fresh
    expected = fit(fresh, data, t, plan, learning_rate=rate, verbose=0)

    assert traces.count == traced_before  # job 2 ran job 1's traced steps
    assert history["learning_rate"] == pytest.approx([0.003, 0.0001], rel=1e-5)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-5, err_msg=key)
    for a, b in zip(kept.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert kept.optimizer.iterations.numpy() == fresh.optimizer.iterations.numpy()


def _key(mini, *overrides: str) -> str:
    model, _, _, plan, _ = _job(mini, *overrides)
    return kept_models.program_key(model, variable_rates=plan.jit_compile)


def test_only_values_share_a_kept_model(mini):
    """Seed, learning rate and (under XLA) the dropout rate are values (variables); the
    layers, Keras' own dropout rate and the optimizer's other settings are constants in the
    traced program."""
    base = _key(mini)
    assert _key(mini, "trainer.seed=7", "optimizer.learning_rate=0.01",
                "model.dropout=0.3") == base
    for change in ("model.hidden_units=[64]", "model.activation=tanh",
                   "optimizer.beta_1=0.8", "trainer.label_smoothing=0.1",
                   "trainer.jit_compile=false"):
        assert _key(mini, change) != base, change
    keras_loop = _key(mini, "trainer.jit_compile=false")
    assert _key(mini, "trainer.jit_compile=false", "model.dropout=0.3") != keras_loop
