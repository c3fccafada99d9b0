"""Fitting the model: seeding, callbacks (early stopping, schedule, NaN guard, resumable
state), the looped step and Keras' fit. The batches it is fed come from batches.py."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mnist_exp.config.schema import TrainerConfig, UserError
from mnist_exp.data.load import Dataset
from mnist_exp.training.batches import BatchChunks
from mnist_exp.training.interrupts import DeferredInterrupts
from mnist_exp.training.model import one_hot_targets
from mnist_exp.training.resident import EpochKeys, OneCall, steps_for


class TrainingDiverged(UserError):
    """The loss stopped being a finite number."""


class TrainingStepFailed(UserError):
    """XLA's compiled step raised, and Keras ended the epochs as if the data had run out
    (seen with a damaged compilation cache entry: compile_cache.py)."""


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


def execution_settings(cfg: TrainerConfig, convolutional: bool = False) -> dict[str, int | bool]:
    """compile() arguments for how steps run. With XLA, several steps per execution run as
    one compiled loop (`fit` feeds chunks of batches), so Keras compiles one step per call;
    without, Keras' own steps_per_execution loop does it. XLA has no deterministic mode, so
    trainer.deterministic takes the plain path; and XLA's convolutions on a CPU are some
    40x slower than TensorFlow's oneDNN ones (small CNN, batch 64, 2 cores: 38 s vs 0.9 s
    an epoch of 5,120 images), so a convolutional model uses XLA only on a GPU."""
    jit = (cfg.jit_compile and not cfg.deterministic
           and (not convolutional or bool(tf.config.list_physical_devices("GPU"))))
    return {"jit_compile": jit, "steps_per_execution": 1 if jit else cfg.steps_per_execution}


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
    training at once and raises TrainingDiverged. Ctrl-C or SIGTERM takes effect at the
    end of the current step (see interrupts.py); on the resident path a step is a whole
    epoch and its validation pass (Fashion-MNIST on 2 cores: ~0.4 s), so the wait is at most
    one epoch.
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
    initial_rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    all_callbacks.extend(_schedule(cfg, initial_rate))
    all_callbacks.extend(callbacks)
    interrupts = DeferredInterrupts()  # Ctrl-C between steps, never inside TensorFlow
    all_callbacks.append(interrupts)
    if backup_dir is not None:  # last: an epoch is saved only once everything saw its end
        all_callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir)))
    y_train, y_val = data.y_train, data.y_val
    if one_hot_targets(model):  # label smoothing: see model.compile_model
        classes = model.output_shape[-1]
        y_train, y_val = (keras.utils.to_categorical(y, classes) for y in (y_train, y_val))
    validation: tuple | keras.utils.PyDataset = (data.x_val, y_val)
    if _resident(model, cfg):  # the sets on the device, the steps traced at most once
        batches: keras.utils.PyDataset = EpochKeys(cfg.seed)
        validation = OneCall()
        steps = steps_for(model, (data.x_train, y_train), (data.x_val, y_val),
                          cfg.batch_size, cfg.eval_batch_size).installed(model)
    else:
        batches, train_step = _host_batches(model, data.x_train, y_train, cfg)
        steps = _installed(model, train_step)
    with steps, interrupts:
        history = model.fit(
            batches,
            shuffle=False,  # the sequence reshuffles itself; Keras would reorder its items
            validation_data=validation,
            validation_batch_size=cfg.eval_batch_size,
            epochs=cfg.epochs,
            callbacks=[_EpochOf(batches), *all_callbacks],
            verbose=verbose,
        )
    losses = history.history.get("loss", [])
    if len(losses) < len(history.epoch):  # Keras took the failed step for the data's end
        raise TrainingStepFailed("the compiled training step failed: epochs ended with no "
                                 "training loss (Keras: 'Your input ran out of data')")
    if losses and not math.isfinite(losses[-1]):
        raise TrainingDiverged(
            f"loss became {losses[-1]} in epoch {history.epoch[-1] + 1}; lower "
            "optimizer.learning_rate or set optimizer.clipnorm")
    return history.history


def _resident(model: keras.Model, cfg: TrainerConfig) -> bool:
    """Whether fit takes the resident path (resident.py): XLA, steps_per_execution > 1 and
    no augmentation. Whatever the path, the batches and their order are the same."""
    fused = model.jit_compile and cfg.steps_per_execution > 1  # see execution_settings
    return fused and not (cfg.augment.max_shift or cfg.augment.horizontal_flip)


def _host_batches(model: keras.Model, images: np.ndarray, labels: np.ndarray,
                  cfg: TrainerConfig) -> tuple[BatchChunks, Callable]:
    """What `fit` iterates off the resident path, and the matching train_step:
    - XLA with augmentation: chunks of steps_per_execution batches, augmented on the host
      (batches.py) and looped over in one call each;
    - otherwise: one host batch per step (Keras' own steps_per_execution loop, if set)."""
    fused = model.jit_compile and cfg.steps_per_execution > 1
    batches = BatchChunks(images, labels, cfg.batch_size,
                          cfg.steps_per_execution if fused else 1, cfg.seed, chunked=fused,
                          max_shift=cfg.augment.max_shift,
                          horizontal_flip=cfg.augment.horizontal_flip)
    return batches, _looped(model.train_step) if fused else model.train_step


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


def _schedule(cfg: TrainerConfig, initial_rate: float) -> list[keras.callbacks.Callback]:
    """The learning-rate schedule as an epoch-level callback (it changes the optimizer's rate
    variable, so it works inside compiled loops too)."""
    s = cfg.lr_schedule
    if s.name == "plateau":
        return [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=s.factor,
                                                  patience=s.patience, min_lr=s.min_lr)]
    if s.name == "cosine":  # from the initial rate down to min_lr over the epochs
        def cosine(epoch: int, rate: float) -> float:
            progress = epoch / max(1, cfg.epochs - 1)
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
