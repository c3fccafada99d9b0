"""The fast training path: same math as Keras' plain fit, fed in chunks of batches."""

from __future__ import annotations

import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import compose_config, prepared
from mnist_exp.config.schema import AdamConfig, MLPConfig, parse_config
from mnist_exp.data.load import load_dataset, load_idx_folder
from mnist_exp.evaluation.scoring import score
from mnist_exp.training.execution import execution_plan, prepare_model
from mnist_exp.training.fit import _looped, fit
from mnist_exp.training.interrupts import DeferredInterrupts
from mnist_exp.training.model import build_model, compile_model


@pytest.mark.parametrize("config", [MLPConfig(), MLPConfig(batch_norm=True)],
                         ids=["mlp", "mlp with batch norm"])
def test_a_fused_chunk_makes_the_same_updates_as_batch_by_batch(mini, config):
    """The fast path changes how steps are run, not the math: after 8 Adam steps on the
    same batches, the weights (and batch norm's moving statistics) match Keras' plain fit
    to float32 rounding."""
    (x, y), _ = load_idx_folder(mini)
    x, y = x[:256], y[:256]

    class OneChunk(keras.utils.PyDataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return x.reshape(8, 32, 28, 28), y.reshape(8, 32)

    def model(jit_compile):
        keras.utils.set_random_seed(0)
        built = build_model(config, num_classes=10)
        return compile_model(built, AdamConfig(), jit_compile=jit_compile)

    fused, plain = model(jit_compile=True), model(jit_compile=False)
    fused.train_step = _looped(fused.train_step)
    fused_loss = fused.fit(OneChunk(), verbose=0).history["loss"]
    plain_loss = plain.fit(x, y, batch_size=32, shuffle=False, verbose=0).history["loss"]
    assert fused.optimizer.iterations.numpy() == plain.optimizer.iterations.numpy() == 8
    np.testing.assert_allclose(fused_loss, plain_loss, rtol=1e-5)
    for a, b in zip(fused.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    if config.batch_norm:
        layers = [type(layer).__name__ for layer in fused.layers]
        assert layers == ["Rescaling", "Flatten", "Dense", "BatchNormalization", "Activation",
                          "Dense", "BatchNormalization", "Activation", "Dense"]
        moving_mean = fused.layers[3].moving_mean.numpy()
        assert np.abs(moving_mean).max() > 0  # the statistics moved during the chunk


def _train(mini, *overrides, callbacks=(), backup_dir=None):
    # 3010 samples: 2408 to train on, 75 batches of 32 and one of 8 (a smaller last batch)
    config, data, model, plan = prepared(mini, 3010, 3, *overrides)
    history = fit(model, data, config.trainer, plan, learning_rate=config.optimizer.learning_rate,
                  callbacks=callbacks, verbose=0, backup_dir=backup_dir)
    return history, model, data


class _CrashAt(keras.callbacks.Callback):
    """A crash as epoch `epoch` begins, after the previous epoch's backup was written."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("crash")


@pytest.mark.parametrize("overrides", [
    (), pytest.param(("trainer.augment.max_shift=2",), marks=pytest.mark.slow)],
    ids=["resident epochs", "augmented chunks"])
def test_a_resumed_fit_ends_with_the_weights_of_an_uninterrupted_one(mini, tmp_path, overrides):
    """Resuming from the backup of epoch 2 of 3 trains epoch 3 on epoch 3's order (and
    augmentation), not the first epoch's: the same weights as training straight through."""
    _, straight, _ = _train(mini, *overrides)
    with pytest.raises(RuntimeError, match="crash"):
        _train(mini, *overrides, callbacks=[_CrashAt(2)], backup_dir=tmp_path)
    history, resumed, _ = _train(mini, *overrides, backup_dir=tmp_path)
    assert len(history["loss"]) == 1  # only the third epoch ran
    for a, b in zip(straight.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _test_accuracy(model, data):
    return score(model, data.x_test, data.y_test, data.class_names).accuracy


def test_fast_path_trains_exactly_like_the_plain_path(mini):
    """Same seed, same batches in the same order: the XLA-compiled chunks and Keras' plain
    batch-by-batch fit reach the same losses, epoch after epoch, and the same accuracy."""
    plain, plain_model, data = _train(mini, "trainer.steps_per_execution=1",
                                      "trainer.jit_compile=false", "trainer.eval_batch_size=32")
    fast, fast_model, _ = _train(mini)  # the defaults: 64 steps per XLA-compiled loop
    fast_accuracy, plain_accuracy = (_test_accuracy(m, data) for m in (fast_model, plain_model))
    assert len(fast["loss"]) == 3 and fast["loss"][2] < fast["loss"][0]
    np.testing.assert_allclose(fast["loss"], plain["loss"], rtol=1e-4)
    np.testing.assert_allclose(fast["val_accuracy"], plain["val_accuracy"], atol=0.002)
    assert fast_accuracy > 0.85
    assert abs(fast_accuracy - plain_accuracy) <= 0.002


def test_resident_validation_scores_as_keras_does_on_host_data(mini):
    """The fast path validates the resident set in one compiled call; the epoch's
    val_loss and val_accuracy are what Keras' own evaluate says of the same weights on
    host data (which fit leaves working: the model's own steps are back)."""
    history, model, data = _train(mini)
    loss, accuracy = model.evaluate(data.x_val, data.y_val, batch_size=1024, verbose=0)
    np.testing.assert_allclose(history["val_loss"][-1], loss, rtol=1e-5)
    np.testing.assert_allclose(history["val_accuracy"][-1], accuracy, rtol=1e-6)


def test_label_smoothing_is_the_loss_that_fit_minimises(mini, tmp_path):
    """val_loss after the last epoch equals the cross-entropy against softened targets
    (1 - s + s/10 for the true class, s/10 for the others), computed here from the model's
    own predictions; and the saved model keeps its built-in Keras loss."""
    s = 0.2
    history, model, data = _train(mini, f"trainer.label_smoothing={s}")
    assert history["accuracy"][-1] > 0.8 and history["loss"][-1] < history["loss"][0]
    p = np.clip(model.predict(data.x_val, verbose=0), 1e-7, 1 - 1e-7)
    targets = np.eye(10)[data.y_val] * (1 - s) + s / 10
    smoothed = np.mean(-np.sum(targets * np.log(p), axis=1))
    plain = np.mean(-np.log(p[np.arange(len(p)), data.y_val]))
    assert history["val_loss"][-1] == pytest.approx(smoothed, rel=1e-3)
    assert smoothed > plain + 0.1
    model.save(tmp_path / "model.keras")
    loss = keras.models.load_model(tmp_path / "model.keras").loss
    assert loss.get_config()["label_smoothing"] == pytest.approx(s)


@pytest.mark.slow
def test_cnn_trains_with_a_cosine_schedule(mini):
    config = parse_config(compose_config(
        "model=cnn", f"data.path={mini}", "data.max_train_samples=600", "trainer.epochs=3",
        "trainer.lr_schedule.name=cosine", "trainer.lr_schedule.min_lr=0.0001"))
    t = config.trainer
    data = load_dataset("mnist", str(mini), seed=t.seed, max_train_samples=600)
    model, plan = prepare_model(config, data)
    assert [layer.__class__.__name__ for layer in model.layers].count("Conv2D") == 2
    history = fit(model, data, t, plan, learning_rate=config.optimizer.learning_rate, verbose=0)
    assert history["learning_rate"] == pytest.approx([0.001, 0.00055, 0.0001], rel=1e-4)
    assert history["val_accuracy"][-1] > 0.6


def test_convolutional_models_use_xla_only_on_a_gpu():
    """On a CPU a CNN takes Keras' own steps_per_execution loop (oneDNN's convolutions, not
    XLA's); on a GPU, XLA like every model. Deterministic training never uses XLA."""
    trainer = parse_config(compose_config("model=cnn")).trainer
    xla = {"jit_compile": True, "steps_per_execution": 1}
    keras_loop = {"jit_compile": False, "steps_per_execution": trainer.steps_per_execution}
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert execution_plan(trainer, convolutional=True).compile_arguments == (
        xla if on_gpu else keras_loop)
    assert execution_plan(trainer).compile_arguments == xla
    assert trainer.steps_per_execution == 64
    deterministic = trainer.model_copy(update={"deterministic": True})
    assert execution_plan(deterministic).compile_arguments == keras_loop


class _SignalAtSecondEpoch(keras.callbacks.Callback):
    """Sends the signal(s) to this process as the second epoch's first step begins, and
    records which steps of that epoch Keras saw end."""

    def __init__(self, *signals: int) -> None:
        super().__init__()
        self.signals, self.epoch, self.ended = signals, 0, []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == 1 and batch == 0:
            for number in self.signals:
                os.kill(os.getpid(), number)

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1:
            self.ended.append(batch)


@pytest.fixture
def ctrl_c():
    """Python's own SIGINT handler for the test, even when the suite runs in the background
    (a shell's `&` makes SIGINT ignored, and then Ctrl-C raises nothing)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _fit_until_interrupted(mini, *signals: int) -> _SignalAtSecondEpoch:
    probe = _SignalAtSecondEpoch(*signals)
    with pytest.raises(KeyboardInterrupt):
        _train(mini, "trainer.jit_compile=false", "trainer.steps_per_execution=1",
               callbacks=[probe])
    return probe


def test_ctrl_c_in_fit_takes_effect_between_steps(mini, ctrl_c):
    """A KeyboardInterrupt raised inside TensorFlow's op wrappers can corrupt the heap
    (see interrupts.py): fit lets the step under way finish, then raises it."""
    probe = _fit_until_interrupted(mini, signal.SIGINT)
    assert probe.ended == [0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_signal_stops_fit_at_once(mini):
    def terminate(number, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)  # as the entry point sets it
    try:
        probe = _fit_until_interrupted(mini, signal.SIGTERM, signal.SIGTERM)
        assert probe.ended == []
        assert signal.getsignal(signal.SIGTERM) is terminate
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_interrupt_in_a_deferring_block_is_raised_as_the_block_ends(ctrl_c):
    finished = []
    with pytest.raises(KeyboardInterrupt), DeferredInterrupts():
        os.kill(os.getpid(), signal.SIGINT)
        finished.append(True)
    assert finished == [True]
