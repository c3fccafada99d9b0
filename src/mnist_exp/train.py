"""Fitting the model: seeding, early stopping and Keras' own training loop."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from mnist_exp.config import TrainerConfig
from mnist_exp.data import Dataset


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and TensorFlow; optionally make TensorFlow ops deterministic."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def fit(
    model: keras.Model,
    data: Dataset,
    cfg: TrainerConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
) -> dict[str, list[float]]:
    """Train on data's training split, validating each epoch; return the per-epoch history."""
    stopping = cfg.early_stopping
    all_callbacks = list(callbacks)
    if stopping.enabled:
        all_callbacks.insert(0, keras.callbacks.EarlyStopping(
            monitor=stopping.monitor,
            patience=stopping.patience,
            min_delta=stopping.min_delta,
            restore_best_weights=stopping.restore_best_weights,
            verbose=1,
        ))
    history = model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        shuffle=True,
        callbacks=all_callbacks,
        verbose=verbose,
    )
    return history.history
