"""One evaluation run: a logged model scored on a test set, recorded in MLflow beside the
training runs and linked to the model it scored (python -m mnist_exp.evaluate).

Normalisation is the model's first layer, so raw pixels go in; the test set is drawn as
training drew it (the training run's data settings and seed, unless given), so the same
model on the same data scores exactly the training run's test_accuracy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import yaml

from mnist_exp.config.schema import Config, EvaluationConfig, parse_config
from mnist_exp.data.load import load_dataset
from mnist_exp.errors import ConfigError, NotUploaded, first_line
from mnist_exp.evaluation import figures
from mnist_exp.evaluation.scoring import score
from mnist_exp.tracking import logs, runs
from mnist_exp.tracking.model_refs import load_model
from mnist_exp.tracking.record import RECORD_DIR, records_folder
from mnist_exp.tracking.store import (
    check_reachable,
    open_store,
    prepare_experiment,
    redact,
    resolve_tracking_uri,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationResult:
    run_id: str | None
    run_name: str
    experiment_id: str
    tracking_uri: str
    model_uri: str
    model_id: str | None
    data_name: str
    class_names: tuple[str, ...]
    test_images: int
    test_accuracy: float
    test_loss: float
    record: Path | None = None  # where the run is kept, while not uploaded


def run_evaluation(config: EvaluationConfig, overrides: tuple[str, ...] = (),
                   launch_dir: Path | None = None,
                   log_file: Path | None = None) -> EvaluationResult:
    """Load the model, draw the test set, score it, record an evaluation run (tag
    mnist_exp.kind=evaluation) whose test metrics are also the model's (model_id)."""
    uri = resolve_tracking_uri(config.tracking.uri, launch_dir or Path.cwd())
    check_reachable(uri)
    open_store(uri)
    model, model_uri = load_model(config.model_uri, mlflow.keras.load_model)
    info = mlflow.models.get_model_info(model_uri)
    trained = training_config(info.run_id)
    d = config.data_over(trained.data if trained else None)
    if d is None:
        raise ConfigError(f"{model_uri} has no training run to take the data from; "
                          "name it: data=mnist (or fashion_mnist, mnist_sample)")
    seed = config.seed if config.seed is not None else trained.trainer.seed if trained else 42
    data = load_dataset(d.name, d.path, validation_split=d.validation_split, seed=seed,
                        verify_checksums=d.verify_checksums,
                        max_train_samples=d.max_train_samples,
                        max_test_samples=d.max_test_samples)
    if trained and trained.data.name != data.name:
        log.warning("The model was trained on %s; measuring it on %s, whose classes are: %s",
                    trained.data.name, data.name, ", ".join(data.class_names))
    experiment_id = prepare_experiment(uri, config.tracking.experiment_name or data.name)
    tags = runs.run_tags(overrides, config.tracking, kind="evaluation",
                         module="mnist_exp.evaluate")
    tags |= {"mnist_exp.model_uri": model_uri, "mnist_exp.model_id": info.model_id or "",
             "mnist_exp.trained_run_id": info.run_id or ""}
    run_name = config.tracking.run_name or f"evaluate {config.model_uri} on {data.name}"[:250]
    record_dir = (log_file.parent if log_file else records_folder(launch_dir or Path.cwd()))
    with runs.tracked_run(uri, experiment_id, run_name, tags, record_dir / RECORD_DIR,
                          config.tracking) as tracker:
        splits = logs.datasets(data, ("test",))
        logs.log_datasets(tracker, splits)
        logs.log_params(tracker, {"model_uri": model_uri, "seed": seed, "data": d.model_dump()})
        test = score(model, data.x_test, data.y_test, data.class_names,
                     trained.trainer.eval_batch_size if trained else 1024)
        pictures = figures.test_figures(test, data.x_test, data.class_names)
        logs.log_evaluation(tracker, test, pictures, splits, info.model_id)
        logs.log_files(tracker, log_file)
    if not tracker.uploaded and not config.tracking.offline:
        raise NotUploaded(tracker.record.folder, uri)
    return EvaluationResult(tracker.run_id, run_name, experiment_id, redact(uri), model_uri,
                            info.model_id, data.name, data.class_names, len(data.y_test),
                            test.accuracy, test.loss,
                            None if tracker.uploaded else tracker.record.folder)


def training_config(run_id: str | None) -> Config | None:
    """The config a training run recorded (its config.yaml), or None when the model has no
    such run (logged elsewhere, or copied out of its store)."""
    if not run_id:
        return None
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
    except Exception as e:
        log.warning("No training config for run %s (%s); using the given settings",
                    run_id, first_line(e))
        return None
    try:
        return parse_config(yaml.safe_load(text))
    except ConfigError as e:
        raise ConfigError(f"the training run {run_id}'s config no longer holds: {e}; "
                          "give data=… (and data.path=…) to evaluate on") from None
