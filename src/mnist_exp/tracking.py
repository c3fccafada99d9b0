"""Everything MLflow about a run: its lifecycle and what it records."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from matplotlib.figure import Figure
from mlflow.data.dataset import Dataset as MlflowDataset
from mlflow.entities import RunStatus
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from omegaconf import OmegaConf

from mnist_exp import __version__
from mnist_exp.config import Config, TrackingConfig, first_line, to_dict
from mnist_exp.data import Dataset
from mnist_exp.scoring import Evaluation
from mnist_exp.store import redact

MODEL_NAME = "model"
NOTE = "mlflow.note.content"  # the run's description in mlflow ui
SPLITS = ("training", "validation", "test")


@contextmanager
def tracked_run(experiment_id: str, run_name: str, tags: dict[str, str],
                resume_run_id: str | None = None,
                system_metrics_interval: float | None = None) -> Iterator[str]:
    """An active MLflow run (its id is yielded) that always ends: FINISHED, FAILED with the
    error as a tag, or KILLED on Ctrl-C or SIGTERM. With `resume_run_id`, that run is
    reopened instead of a new one started. With `system_metrics_interval` (seconds), MLflow
    samples CPU, memory, disk and network use in a thread as system/* metrics."""
    if system_metrics_interval is not None:
        mlflow.set_system_metrics_sampling_interval(system_metrics_interval)
        # Its start and stop are announced at INFO: not the user's news.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = {"log_system_metrics": system_metrics_interval is not None}
    if resume_run_id is not None:
        started = mlflow.start_run(run_id=resume_run_id, **monitor)
    else:
        started = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags,
                                   **monitor)
    with started as run:
        try:
            yield run.info.run_id
        except KeyboardInterrupt:
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            raise
        except BaseException as e:
            mlflow.set_tag("error", f"{type(e).__name__}: {first_line(e)}"[:5000])
            raise


def run_tags(overrides: tuple[str, ...], settings: TrackingConfig, kind: str = "training",
             module: str = "mnist_exp.run") -> dict[str, str]:
    """Provenance (package version, git commit and dirtiness, the command and its
    overrides), what kind of run it is, and the user's own tags and description."""
    tags = {
        "mnist_exp.version": __version__,
        "mnist_exp.kind": kind,
        "overrides": redact(" ".join(overrides)),
        "command": redact(" ".join([f"python -m {module}", *sys.argv[1:]])),
    }
    commit, dirty = _git_state(Path(__file__).resolve().parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git.dirty"] = str(dirty).lower()
    if settings.description:
        tags[NOTE] = settings.description
    return tags | settings.tags


def system_metrics_interval(settings: TrackingConfig) -> float | None:
    """The sampling interval tracked_run takes: None when system metrics are off."""
    return settings.system_metrics_interval if settings.system_metrics else None


def log_config(config: Config, hydra_dir: Path | None) -> None:
    """The resolved config as params (dotted keys) and as config.yaml; Hydra's own record
    of the job (.hydra/: config, overrides) under hydra/."""
    values = to_dict(config)
    mlflow.log_params({key: redact(value) if isinstance(value, str) else value
                       for key, value in flatten(values).items()})
    mlflow.log_text(OmegaConf.to_yaml(values), "config.yaml")
    if hydra_dir is not None and hydra_dir.is_dir():
        mlflow.log_artifacts(str(hydra_dir), "hydra")


def datasets(data: Dataset, splits: tuple[str, ...] = SPLITS) -> dict[str, MlflowDataset]:
    """Each split as an MLflow dataset (name, digest, shape, source), by split name."""
    arrays = {"training": (data.x_train, data.y_train), "validation": (data.x_val, data.y_val),
              "test": (data.x_test, data.y_test)}
    found = {}
    for context in splits:
        images, labels = arrays[context]
        with warnings.catch_warnings():  # MLflow registers the local source type twice
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
            found[context] = mlflow.data.from_numpy(images, targets=labels, source=data.source,
                                                    name=f"{data.name}-{context}")
    return found


def log_datasets(splits: dict[str, MlflowDataset]) -> None:
    """The splits as the run's dataset inputs."""
    for context, dataset in splits.items():
        _retrying(lambda dataset=dataset, context=context:
                  mlflow.log_input(dataset, context=context))


def log_evaluation(evaluation: Evaluation, figures: dict[str, Figure],
                   splits: dict[str, MlflowDataset], model_id: str | None,
                   final_val: dict[str, float] | None = None) -> None:
    """Test metrics (overall and per class), the kept model's validation scores, the
    classification report and the figures. The metrics are the run's and, linked by
    `model_id` and the split they were measured on, the logged model's too (so models can
    be ranked by them: mlflow.search_logged_models, mlflow ui's Models tab)."""
    mlflow.log_metrics(evaluation.metrics("test"), model_id=model_id, dataset=splits["test"])
    if final_val is not None:
        mlflow.log_metrics({f"final_val_{k}": v for k, v in final_val.items()},
                           model_id=model_id, dataset=splits["validation"])
    mlflow.log_text(evaluation.report_text, "classification_report.txt")
    mlflow.log_dict({k: v for k, v in evaluation.report.items() if k != "class_names"},
                    "classification_report.json")
    for name, figure in figures.items():
        mlflow.log_figure(figure, name)


def log_model(model: keras.Model, example: np.ndarray, example_output: np.ndarray,
              registered_name: str | None = None) -> ModelInfo:
    """Log the model with MLflow's Keras flavour, a signature (from an example input and the
    model's output for it, already computed) and the input example, and register it as a
    new version of `registered_name` if given; return its info (model_uri models:/<id>)."""
    example = example.astype(np.float32)
    signature = infer_signature(example, example_output)
    info = mlflow.models.Model.log(
        artifact_path=None,
        name=MODEL_NAME,
        flavor=_KERAS_FLAVOR,
        model=model,
        signature=signature,
        input_example=example,
        registered_model_name=registered_name,
        # The example's round trip through the saved model is checked by our tests; doing
        # it on every run would reload the model (~0.3 s).
        validate_serving_input=False,
        # Explicit requirements: inferring them costs ~10 s in a subprocess importing TF.
        pip_requirements=[f"{pkg}=={version(pkg)}" for pkg in ("tensorflow", "keras", "numpy")],
    )
    return info


class EpochLogger(mlflow.keras.MlflowCallback):
    """MLflow's Keras callback plus the learning rate per epoch, minus its step-less
    duplicates of the validation metrics (Keras already reports val_* per epoch)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        super().on_epoch_end(epoch, {**(logs or {}), "learning_rate": rate})

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        pass


def epoch_history(run_id: str, metrics: tuple[str, ...] = ("loss", "accuracy", "val_loss",
                                                             "val_accuracy")) -> dict[str, list]:
    """Per-epoch values as recorded in the run, so a resumed run's curves include the
    epochs trained before the interruption."""
    mlflow.flush_async_logging()
    client = mlflow.MlflowClient()
    history = {}
    for name in metrics:
        by_step = {m.step: m.value for m in sorted(client.get_metric_history(run_id, name),
                                                   key=lambda m: m.timestamp)}
        history[name] = [by_step[step] for step in sorted(by_step)]
    return history


def log_timings(seconds: dict[str, float]) -> None:
    """Wall time per phase as metrics time_<phase>_s."""
    mlflow.log_metrics({f"time_{phase}_s": value for phase, value in seconds.items()})


def log_files(*paths: Path | None) -> None:
    """Attach existing files (e.g. the job's log) to the active run."""
    for path in paths:
        if path is not None and path.is_file():
            mlflow.log_artifact(str(path))


def _retrying(write: Callable[[], Any], attempts: int = 6) -> Any:
    """An MLflow write that parallel jobs on one store can collide on: two jobs inserting
    the same dataset at once (a unique constraint fails for the second, in SQLite or, through
    a tracking server, in PostgreSQL; on retry it finds the first's row), or a SQLite
    database briefly locked. Retried with backoff."""
    for attempt in range(attempts):
        try:
            return write()
        except mlflow.exceptions.MlflowException as e:
            collided = any(sign in str(e) for sign in (
                "UNIQUE constraint failed", "database is locked",
                "duplicate key value violates unique constraint"))
            if not collided or attempt == attempts - 1:
                raise
            time.sleep(0.1 * 2**attempt * (1 + random.random()))


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay whole ("[128, 32]")."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _save_keras_model(path: str, validate_serving_input: bool = True, **kwargs: Any) -> None:
    # MLflow 3.17's keras save_model writes the input example before creating the model
    # folder (FileNotFoundError); creating the folder first lets the example be recorded.
    # (Model.log passes its own validate_serving_input on to the flavour; Keras' has none.)
    os.makedirs(path, exist_ok=True)
    mlflow.keras.save_model(path=path, **kwargs)


_KERAS_FLAVOR = types.SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras_model)


def _git_state(folder: Path) -> tuple[str | None, bool]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, False
