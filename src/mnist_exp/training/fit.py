"""Fitting the model along its execution plan: callbacks (early stopping, schedule, NaN
guard, resumable state), the looped step and Keras' fit."""

from __future__ import annotations

import errno
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from mnist_exp.config.schema import LRScheduleConfig, TrainerConfig
from mnist_exp.data.load import Dataset
from mnist_exp.errors import TrainingDiverged, TrainingStepFailed
from mnist_exp.training import compile_cache, kept_models
from mnist_exp.training.batches import BatchChunks
from mnist_exp.training.execution import ExecutionPlan
from mnist_exp.training.interrupts import DeferredInterrupts
from mnist_exp.training.model import one_hot_targets
from mnist_exp.training.progress import BatchProgress
from mnist_exp.training.resident import EpochKeys, OneCall, steps_for
from mnist_exp.training.xla_dropout import traced_with_cheap_masks


class _EpochOf(keras.callbacks.Callback):
    """Tells the batches which epoch begins: after a restored backup, Keras starts at the
    epoch it had reached, and the batches must draw that epoch's order, not the first's."""

    def __init__(self, batches: BatchChunks | EpochKeys) -> None:
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.batches.set_epoch(epoch)


class EpochClock(keras.callbacks.Callback):
    """Wall time of each epoch (training and validation), in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def fit(
    model: keras.Model,
    data: Dataset,
    cfg: TrainerConfig,
    plan: ExecutionPlan,
    *,
    learning_rate: float,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    backup_dir: Path | None = None,
) -> dict[str, list[float]]:
    """Train on data's training split, validating each epoch, along `plan`'s path; return the
    per-epoch history of this call (with a restored backup, only the epochs run now).
    `learning_rate` is the configured one, where a schedule starts.

    With `backup_dir`, the state after each finished epoch is kept there and a later call
    with the same folder continues from it; a loss that turns NaN or infinite stops
    training at once and raises TrainingDiverged. Ctrl-C or SIGTERM takes effect at the
    end of the current step (see interrupts.py); on the resident path a step is a whole
    epoch and its validation pass, so the wait is at most one epoch.
    """
    interrupts = DeferredInterrupts()  # Ctrl-C between steps, never inside TensorFlow
    batches, validation, steps = _feed(model, data, cfg, plan)
    with steps, interrupts:
        history = model.fit(
            batches,
            shuffle=False,  # the sequence reshuffles itself; Keras would reorder its items
            validation_data=validation,
            validation_batch_size=cfg.eval_batch_size,
            epochs=cfg.epochs,
            callbacks=[_EpochOf(batches), *_callbacks(cfg, learning_rate, callbacks,
                                                      interrupts, backup_dir),
                       *_progress(batches, len(data.y_train), cfg.batch_size, verbose)],
            verbose=verbose,
        )
    _check(history)
    return history.history


def _callbacks(cfg: TrainerConfig, learning_rate: float,
               callbacks: Sequence[keras.callbacks.Callback], interrupts: DeferredInterrupts,
               backup_dir: Path | None) -> list[keras.callbacks.Callback]:
    """The NaN guard, early stopping, the schedule, the caller's, the deferred interrupts,
    and last the backup: an epoch is saved only once everything saw its end."""
    stopping = cfg.early_stopping
    found: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN()]
    if stopping.enabled:
        found.append(keras.callbacks.EarlyStopping(
            monitor=stopping.monitor,
            patience=stopping.patience,
            min_delta=stopping.min_delta,
            restore_best_weights=stopping.restore_best_weights,
            verbose=1,
        ))
    found += [*_schedule(cfg.lr_schedule, cfg.epochs, learning_rate), *callbacks, interrupts]
    if backup_dir is not None:
        found.append(_RoomyBackup(str(backup_dir)))
    return found


class _RoomyBackup(keras.callbacks.BackupAndRestore):
    """Keras' backup of each epoch, once its disk is seen to have room for it: HDF5 crashes
    the process (a segfault as h5py closes the file) when the disk fills while it writes,
    so a full disk is raised first, as the OSError a Python write would give."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        path = Path(self.backup_dir, "latest.weights.h5")  # Keras' name for it
        held = path.stat().st_size if path.exists() else 0  # rewriting it frees it first
        # The weights' and optimizer's float32 values and HDF5's own (~25 KB), with a margin.
        need = 64 * 1024 + sum(5 * math.prod(v.shape) for v in
                               [*self.model.weights, *self.model.optimizer.variables])
        os.makedirs(self.backup_dir, exist_ok=True)
        disk = os.statvfs(self.backup_dir)
        if disk.f_bavail * disk.f_frsize < need - held:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        super().on_epoch_end(epoch, logs)


def _progress(batches: BatchChunks | EpochKeys, samples: int, batch_size: int,
              verbose: int | str) -> list[keras.callbacks.Callback]:
    """Keras' progress bar counting the epoch's batches, not its calls into TensorFlow
    (progress.py); last, where Keras puts its own."""
    if not verbose:
        return []
    if isinstance(batches, EpochKeys):  # one call, every batch
        return [BatchProgress([math.ceil(samples / batch_size)])]
    return [BatchProgress(itertools.accumulate(count for _, count, _ in batches.chunks))]


def _feed(model: keras.Model, data: Dataset, cfg: TrainerConfig,
          plan: ExecutionPlan) -> tuple[keras.utils.PyDataset, Any, AbstractContextManager]:
    """What fit iterates, its validation data, and the steps the model runs meanwhile:
    - resident: the sets on the device, the steps traced at most once (resident.py);
    - fused: chunks of plan.chunk batches, augmented on the host (batches.py) and looped
      over in one call each;
    - otherwise: one host batch per step (Keras' own steps_per_execution loop, if set)."""
    y_train, y_val = data.y_train, data.y_val
    if one_hot_targets(model):  # label smoothing: see model.compile_model
        classes = model.output_shape[-1]
        y_train, y_val = (keras.utils.to_categorical(y, classes) for y in (y_train, y_val))
    if plan.resident:
        steps = steps_for(model, (data.x_train, y_train), (data.x_val, y_val),
                          cfg.batch_size, cfg.eval_batch_size)
        return EpochKeys(cfg.seed), OneCall(), steps.installed(model)
    batches = BatchChunks(data.x_train, y_train, cfg.batch_size, plan.chunk, cfg.seed,
                          chunked=plan.fused, max_shift=cfg.augment.max_shift,
                          horizontal_flip=cfg.augment.horizontal_flip)
    train_step = _looped(model.train_step) if plan.fused else model.train_step
    if plan.jit_compile:
        train_step = traced_with_cheap_masks(train_step)
    return batches, (data.x_val, y_val), _installed(model, train_step)


def _check(history: keras.callbacks.History) -> None:
    """Raise what went wrong in the epochs Keras ended as if all was well."""
    losses = history.history.get("loss", [])
    if len(losses) < len(history.epoch):  # Keras took the failed step for the data's end
        raise _step_failed()
    if losses and not math.isfinite(losses[-1]):
        raise TrainingDiverged(
            f"loss became {losses[-1]} in epoch {history.epoch[-1] + 1}; lower "
            "optimizer.learning_rate or set optimizer.clipnorm")


def _step_failed() -> TrainingStepFailed:
    """The compiled step failed: neither what this process traced nor the compilation cache
    it loaded from is to be trusted (a damaged cache entry does this), so both go."""
    kept_models.forget()
    message = ("the compiled training step failed: epochs ended with no training loss "
               "(Keras: 'Your input ran out of data')")
    cache = compile_cache.in_use()
    if cache is None:
        return TrainingStepFailed(message)
    compile_cache.clear(cache)
    return TrainingStepFailed(f"{message}; a damaged entry in the compilation cache does "
                              f"this: {cache} is now emptied, run again "
                              "(or set trainer.compile_cache=false)")


@contextmanager
def _installed(model: keras.Model, train_step: Callable) -> Iterator[None]:
    """The model runs train_step inside (on this instance: it saves as usual); its own
    steps are back afterwards, for a later fit or evaluate on host data."""
    plain = model.train_step
    model.train_step = train_step
    try:
        yield
    finally:
        model.train_step = plain
        model.train_function = model.test_function = None


def _schedule(s: LRScheduleConfig, epochs: int,
              initial_rate: float) -> list[keras.callbacks.Callback]:
    """The learning-rate schedule as an epoch-level callback (it changes the optimizer's rate
    variable, so it works inside compiled loops too)."""
    if s.name == "plateau":
        return [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=s.factor,
                                                  patience=s.patience, min_lr=s.min_lr)]
    if s.name == "cosine":  # from the initial rate down to min_lr over the epochs
        def cosine(epoch: int, rate: float) -> float:
            progress = epoch / max(1, epochs - 1)
            return s.min_lr + (initial_rate - s.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

        return [keras.callbacks.LearningRateScheduler(cosine)]
    return []


def _looped(train_step: Callable) -> Callable:
    """Keras' own train_step applied to each batch of a chunk (steps, batch, ...), in one
    loop that XLA compiles whole: the same updates as batch-by-batch, without a round trip
    through the runtime between batches."""

    def train_step_on_chunk(chunk: tuple[tf.Tensor, tf.Tensor]) -> dict:
        images, labels = chunk

        def one_batch(i: tf.Tensor) -> tf.Tensor:
            train_step((images[i], labels[i]))
            return i + 1

        tf.while_loop(lambda i: i < tf.shape(images)[0], one_batch, [tf.constant(0)])
        return train_step.__self__.get_metrics_result()

    return train_step_on_chunk
