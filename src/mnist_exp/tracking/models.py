"""Saving a trained model in MLflow's Keras flavour and logging it as the run's model."""

from __future__ import annotations

import os
from contextlib import suppress
from importlib.metadata import version
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from mlflow.models import infer_signature

from mnist_exp.config.schema import TrackingConfig
from mnist_exp.tracking.store import SweepInfo
from mnist_exp.tracking.upload import Tracker

MODEL_NAME = "model"


def log_trained_model(tracker: Tracker, model: keras.Model, images: np.ndarray,
                      probabilities: np.ndarray, settings: TrackingConfig) -> str | None:
    """The run's model, as tracking.log_model and register_model say, with the first two of
    `images` as its input example (`probabilities`: the model's output for them, already
    computed); its URI, if logged."""
    if not settings.log_model:
        return None
    registered = settings.registered_model_name if settings.register_model else None
    return log_model(tracker, model, images[:2], probabilities[:2], registered)


def improves_on_sweep(settings: TrackingConfig, sweep: SweepInfo | None, val_accuracy: float,
                      metric: str = "final_val_accuracy") -> bool:
    """Whether a run keeps its model and figures: a single run always; a sweep's job, with
    tracking.keep_in_sweeps=improving, only if no job of its sweep finished before it with a
    better `metric` (what the sweep ranks by). The sweep's best job was at least as good as
    every job finished before it, so its model is always logged (and registered), whatever
    the order or the number of parallel workers; most others are not. When the store cannot
    say (offline, away), the job keeps them."""
    if sweep is None or settings.keep_in_sweeps == "all" or settings.offline:
        return True
    query = (f"tags.`mlflow.parentRunId` = '{sweep.parent_run_id}' and "
             f"attributes.status = 'FINISHED' and metrics.{metric} > {float(val_accuracy)!r}")
    try:
        better = mlflow.MlflowClient(sweep.tracking_uri).search_runs(
            [sweep.experiment_id], query, max_results=1)
    except Exception:  # a store that cannot answer: keep them
        return True
    return not better


def log_model(tracker: Tracker, model: keras.Model, example: np.ndarray,
              example_output: np.ndarray, registered_name: str | None = None) -> str | None:
    """Save the model in the record with MLflow's Keras flavour, a signature (from an
    example input and the model's output for it, already computed) and the input example,
    then log it as the run's LoggedModel, registered as a new version of `registered_name`
    if given. Its model URI (models:/<id>), or None while the server has not got it."""
    save_model(tracker.record.folder / "model", model, example, example_output)
    tracker.emit("model", folder="model", name=MODEL_NAME, registered_name=registered_name)
    model_id = tracker.record.ids.get("model_id")
    return model_id and f"models:/{model_id}"


def warm_up_model_logging() -> None:
    """MLflow's save_model checks the model's pinned requirements against the installed
    packages, scanning every installed distribution first (once a process).
    Called from a thread while TensorFlow's compiled epochs leave the interpreter idle, it
    costs the run nothing; on any error save_model simply does the scan itself."""
    with suppress(Exception):  # a private helper: may move in a later MLflow
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map

        _init_packages_to_modules_map()


def save_model(folder: Path, model: keras.Model, example: np.ndarray,
               example_output: np.ndarray) -> None:
    """The model in MLflow's Keras flavour, with a signature and the input example."""
    example = example.astype(np.float32)
    _save_keras_model(
        str(folder), model=model, signature=infer_signature(example, example_output),
        input_example=example,
        # Explicit requirements: inferring them costs ~10 s in a subprocess importing TF.
        pip_requirements=[f"{pkg}=={version(pkg)}" for pkg in ("tensorflow", "keras", "numpy")])


def _save_keras_model(path: str, validate_serving_input: bool = True, **kwargs: Any) -> None:
    # MLflow 3.17's keras save_model writes the input example before creating the model
    # folder (FileNotFoundError); creating the folder first lets the example be recorded.
    # (Model.log passes its own validate_serving_input on to the flavour; Keras' has none.)
    os.makedirs(path, exist_ok=True)
    mlflow.keras.save_model(path=path, **kwargs)
