"""The Keras callbacks that record a run's epochs and its checkpoints (models logged every
tracking.checkpoint_every epochs) while it trains."""

from __future__ import annotations

import threading
from typing import Any

import keras
import numpy as np
from mlflow.data.dataset import Dataset as MlflowDataset

from mnist_exp.config.schema import TrackingConfig
from mnist_exp.tracking.logs import log_metrics, log_text
from mnist_exp.tracking.models import save_model, warm_up_model_logging
from mnist_exp.tracking.upload import LOGGED_MODEL, Tracker


def epoch_callbacks(tracker: Tracker, settings: TrackingConfig,
                    splits: dict[str, MlflowDataset],
                    example: np.ndarray) -> list[keras.callbacks.Callback]:
    """What records a run's epochs, with its checkpoints if tracking.checkpoint_every
    (linked to the validation split), and, if a model will be logged, MLflow's warm-up."""
    every = settings.checkpoint_every
    checkpoints = Checkpoints(tracker, every, splits["validation"], example) if every else None
    return [EpochLogger(tracker, checkpoints),
            *([WarmUpModelLogging()] if settings.log_model else [])]


class WarmUpModelLogging(keras.callbacks.Callback):
    """`warm_up_model_logging` in a thread as training begins: TensorFlow's compiled epochs
    leave the interpreter idle, so the scan costs the run nothing."""

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        threading.Thread(target=warm_up_model_logging, daemon=True).start()


class EpochLogger(keras.callbacks.Callback):
    """What MLflow's Keras callback records (the model summary, each epoch's metrics) plus
    the learning rate per epoch, through the run's record; with `checkpoints`, the model
    every so many epochs, its validation metrics linked to it. Not the optimizer's settings
    as optimizer_* params: the config's optimizer.* params are what it was built from, and
    the rest of Keras' settings are defaults no config changes."""

    def __init__(self, tracker: Tracker, checkpoints: Checkpoints | None = None) -> None:
        super().__init__()
        self.tracker = tracker
        self.checkpoints = checkpoints

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        lines: list[str] = []
        self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
        log_text(self.tracker, "\n".join(lines), "model_summary.txt")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs = {**(logs or {}), "learning_rate": rate}
        if self.checkpoints is not None and self.checkpoints.due(epoch):
            checkpoint = self.checkpoints.log(self.model, epoch)
            scores = {k: logs.pop(k) for k in list(logs) if k.startswith("val_")}
            log_metrics(self.tracker, scores, step=epoch, model_id=checkpoint,
                        dataset=self.checkpoints.validation)
        log_metrics(self.tracker, logs, step=epoch)


class Checkpoints:
    """Every `every` epochs, the model as a checkpoint LoggedModel (at step = epoch), to
    which that epoch's validation metrics are linked: checkpoints can be ranked, and the
    best loaded (models:/<id>), though training went on past it."""

    def __init__(self, tracker: Tracker, every: int, validation: MlflowDataset,
                 example: np.ndarray) -> None:
        self.tracker, self.every, self.validation = tracker, every, validation
        self.example = example.astype(np.float32)

    def due(self, epoch: int) -> bool:
        return (epoch + 1) % self.every == 0

    def log(self, model: keras.Model, epoch: int) -> str:
        """Save and log the checkpoint; its reference for metric events."""
        name = f"checkpoint-epoch-{epoch + 1}"
        folder = f"checkpoints/{name}"
        output = model.predict(self.example, verbose=0)
        save_model(self.tracker.record.folder / folder, model, self.example, output)
        self.tracker.emit("model", folder=folder, name=name, checkpoint=name, step=epoch)
        return f"{LOGGED_MODEL}:{name}"
