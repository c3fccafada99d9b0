"""The Keras internals mnist-exp relies on exist and behave as assumed, on the installed
Keras and a tiny compiled model. The keras pin in pyproject.toml is raised only when these
pass on the new release: each failure names the attribute and the module that needs it."""

from __future__ import annotations

import keras
import numpy as np
import pytest

RESIDENT = "mnist_exp/training/resident.py"
KEPT = "mnist_exp/training/kept_models.py"
FIT = "mnist_exp/training/fit.py"

X = np.random.default_rng(0).normal(size=(24, 4)).astype("float32")
Y = np.arange(24) % 3


def relied_on(attribute: str, *modules: str) -> str:
    return (f"Keras' {attribute}: mnist-exp relies on it in {', '.join(modules)}; check the "
            "Keras release notes before raising the pin")


@pytest.fixture
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.1),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class Counting:
    """A stand-in for one of the model's steps or functions that counts its calls and does
    what the original does; like a bound method, it knows its model (`__self__`)."""

    def __init__(self, original, model: keras.Model) -> None:
        self.original, self.__self__, self.calls = original, model, 0

    def __call__(self, *args):
        self.calls += 1
        return self.original(*args)


class OneItem(keras.utils.PyDataset):
    """The whole set as one item (resident.py's EpochKeys and OneCall are one item too)."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        return X, Y


def test_a_compiled_model_has_the_attributes_we_set(model):
    for name, value in [("train_function", None), ("test_function", None),
                        ("_initial_epoch", None), ("stop_training", False)]:
        assert hasattr(model, name), relied_on(name, RESIDENT, KEPT, FIT)
        assert getattr(model, name) == value, relied_on(f"{name} (starts {value})", KEPT)


def test_make_train_function_sets_train_function_and_keeps_it(model):
    model.make_train_function()
    made = model.train_function
    assert made is not None, relied_on("make_train_function() setting train_function",
                                       RESIDENT)
    model.make_train_function()
    assert model.train_function is made, relied_on(
        "make_train_function() keeping a set train_function", RESIDENT)
    model.make_test_function()
    assert model.test_function is not None, relied_on(
        "make_test_function() setting test_function", RESIDENT)


def test_fit_and_evaluate_run_the_functions_set_on_the_model(model):
    """resident.py puts the functions traced in an earlier fit back on the model: fit and
    evaluate must call those, not trace new ones."""
    model.make_train_function()
    model.make_test_function()
    train = model.train_function = Counting(model.train_function, model)
    test = model.test_function = Counting(model.test_function, model)
    model.fit(OneItem(), validation_data=OneItem(), epochs=3, verbose=0)
    assert train.calls == 3 and model.train_function is train, relied_on(
        "fit() calling a train_function set on the model (one call per one-item epoch)",
        RESIDENT)
    assert test.calls == 3 and model.test_function is test, relied_on(
        "fit()'s validation calling a test_function set on the model", RESIDENT)
    model.evaluate(OneItem(), verbose=0)
    assert test.calls == 4, relied_on("evaluate() calling a set test_function", RESIDENT)


def test_steps_set_on_the_instance_are_what_keras_traces(model):
    """resident.py and fit.py replace train_step/test_step on the instance, and set
    train_function/test_function to None so that Keras traces them again."""
    model.fit(X, Y, epochs=1, verbose=0)
    before = model.train_function
    model.train_function = model.test_function = None
    train_step = model.train_step = Counting(model.train_step, model)
    test_step = model.test_step = Counting(model.test_step, model)
    model.fit(X, Y, validation_data=(X, Y), batch_size=8, epochs=1, verbose=0)
    assert model.train_function is not None and model.train_function is not before, relied_on(
        "fit() making a new train_function when it is None", RESIDENT, FIT)
    assert train_step.calls >= 1, relied_on("make_train_function() tracing the instance's "
                                            "train_step", RESIDENT, FIT)
    assert test_step.calls >= 1, relied_on("make_test_function() tracing the instance's "
                                           "test_step", RESIDENT)


def test_a_step_reaches_its_model_and_its_metrics(model):
    """resident._every_batch reads the metrics through the step's model (step.__self__)."""
    assert model.train_step.__self__ is model, relied_on("train_step.__self__", RESIDENT)
    model.train_step((X, Y))
    result = model.get_metrics_result()
    assert {"loss", "accuracy"} <= set(result), relied_on("get_metrics_result()", RESIDENT)


def test_fit_starts_at_initial_epoch_which_backup_and_restore_sets(model, tmp_path):
    """kept_models.py resets _initial_epoch: BackupAndRestore sets it when it restores, fit
    starts there, and nothing resets it for the model's next fit."""
    model._initial_epoch = 2
    history = model.fit(X, Y, epochs=3, verbose=0)
    assert history.epoch == [2], relied_on("fit() starting at _initial_epoch", KEPT)
    model._initial_epoch = None
    backup = str(tmp_path / "backup")
    model.fit(X, Y, epochs=2, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)])
    model.fit(X, Y, epochs=3, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert model._initial_epoch == 2, relied_on(
        "_initial_epoch (set by BackupAndRestore, kept after fit)", KEPT)


def test_stop_training_stops_fit_after_the_epoch_and_fit_clears_it(model):
    class StopAfterFirst(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    history = model.fit(X, Y, epochs=5, verbose=0, callbacks=[StopAfterFirst()])
    assert history.epoch == [0], relied_on("stop_training ending fit", KEPT)
    assert model.stop_training is True
    history = model.fit(X, Y, epochs=2, verbose=0)
    assert history.epoch == [0, 1], relied_on("fit() clearing stop_training", KEPT)


def test_the_configs_kept_models_keys_on(model):
    layers = model.get_config()["layers"]
    assert layers and all("name" in layer["config"] for layer in layers), relied_on(
        "get_config()['layers'][i]['config']['name']", KEPT)
    optimizer = model.get_compile_config()["optimizer"]["config"]
    assert {"name", "learning_rate"} <= set(optimizer), relied_on(
        "get_compile_config()['optimizer']['config'] name and learning_rate", KEPT)
    assert isinstance(optimizer["learning_rate"], float), relied_on(
        "a constant learning rate compiled as a float", KEPT)


def test_the_optimizer_state_is_variables_that_can_be_copied(model):
    """kept_models._copy_state builds the optimizer and assigns its variables one by one:
    the step and the learning rate must be among them, in the same order on equal models."""
    optimizer = model.optimizer
    assert optimizer.built is False, relied_on("optimizer.built (False before training)", KEPT)
    optimizer.build(model.trainable_variables)
    assert optimizer.built, relied_on("optimizer.build(trainable_variables)", KEPT)
    paths = [v.path for v in optimizer.variables]
    assert any(p.endswith("iteration") for p in paths), relied_on(
        "optimizer.variables holding the step ('iteration')", KEPT)
    rate = next((v for v in optimizer.variables if v.path.endswith("learning_rate")), None)
    assert rate is not None, relied_on("optimizer.variables holding the learning rate", KEPT)
    rate.assign(0.5)
    assert float(optimizer.learning_rate) == 0.5, relied_on(
        "the learning-rate variable being the rate the optimizer uses", KEPT)
    twin = keras.models.clone_model(model)
    twin.compile(optimizer=keras.optimizers.Adam(0.001), loss="sparse_categorical_crossentropy",
                 metrics=["accuracy"])
    twin.optimizer.build(twin.trainable_variables)
    assert [v.shape for v in twin.optimizer.variables] == [
        v.shape for v in optimizer.variables], relied_on(
        "optimizer.variables in the same order on equal models", KEPT)
