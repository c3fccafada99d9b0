"""Fitting the model: seeding, early stopping, NaN guard, resumable state, Keras' fit."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf

from mnist_exp.config import TrainerConfig, UserError
from mnist_exp.data import Dataset


class TrainingDiverged(UserError):
    """The loss stopped being a finite number."""


def setup_runtime(seed: int, deterministic: bool = False, threads: int = 0) -> None:
    """Seed Python, NumPy and TensorFlow; optionally make ops deterministic and cap
    TensorFlow's thread pools (0 keeps its default: one thread per core). Call before
    TensorFlow runs its first op: the thread counts cannot change after that."""
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def fit(
    model: keras.Model,
    data: Dataset,
    cfg: TrainerConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    backup_dir: Path | None = None,
) -> dict[str, list[float]]:
    """Train on data's training split, validating each epoch; return the per-epoch history
    of this call (with a restored backup, only the epochs run now).

    With `backup_dir`, the state after each finished epoch is kept there and a later call
    with the same folder continues from it; a loss that turns NaN or infinite stops
    training at once and raises TrainingDiverged.
    """
    stopping = cfg.early_stopping
    all_callbacks: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN()]
    if stopping.enabled:
        all_callbacks.append(keras.callbacks.EarlyStopping(
            monitor=stopping.monitor,
            patience=stopping.patience,
            min_delta=stopping.min_delta,
            restore_best_weights=stopping.restore_best_weights,
            verbose=1,
        ))
    all_callbacks.extend(callbacks)
    if backup_dir is not None:  # last: an epoch is saved only once everything saw its end
        all_callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir)))
    history = model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        validation_batch_size=cfg.eval_batch_size,
        shuffle=True,
        callbacks=all_callbacks,
        verbose=verbose,
    )
    losses = history.history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        raise TrainingDiverged(
            f"loss became {losses[-1]} in epoch {history.epoch[-1] + 1}; lower "
            "optimizer.learning_rate or set optimizer.clipnorm")
    return history.history
