"""What a run records: its config as params, its datasets, metrics, evaluation and files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import mlflow
from matplotlib.figure import Figure
from mlflow.data.dataset import Dataset as MlflowDataset
from omegaconf import OmegaConf

from mnist_exp.config.schema import Config, to_dict
from mnist_exp.data.load import Dataset
from mnist_exp.evaluation.scoring import Evaluation
from mnist_exp.tracking.runs import now
from mnist_exp.tracking.store import redact
from mnist_exp.tracking.upload import LOGGED_MODEL, Tracker

SPLITS = ("training", "validation", "test")


def log_inputs(tracker: Tracker, config: Config, data: Dataset, hydra_dir: Path | None,
               resumed: bool = False) -> dict[str, MlflowDataset]:
    """The config and the datasets (a resumed run has them already); the splits as MLflow
    datasets, by split name, for the metrics measured on them."""
    splits = datasets(data)
    if not resumed:
        log_config(tracker, config, hydra_dir)
        log_datasets(tracker, splits)
    return splits


def log_config(tracker: Tracker, config: Config, hydra_dir: Path | None) -> None:
    """The resolved config as params (dotted keys) and as config.yaml; Hydra's own record
    of the job (.hydra/: config, overrides) under hydra/."""
    values = to_dict(config)
    log_params(tracker, values)
    log_text(tracker, OmegaConf.to_yaml(values), "config.yaml")
    if hydra_dir is not None and hydra_dir.is_dir():
        tracker.emit("artifact", file=tracker.record.keep(hydra_dir, "hydra"),
                     artifact_path="hydra")


def log_params(tracker: Tracker, values: dict[str, Any]) -> None:
    """Nested values as params with dotted keys, secrets in URIs redacted."""
    tracker.emit("params", values={key: redact(value) if isinstance(value, str) else value
                                   for key, value in flatten(values).items()})


def log_text(tracker: Tracker, text: str, artifact_file: str) -> None:
    tracker.written(artifact_file).write_text(text)
    tracker.done_writing(artifact_file)


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


def log_datasets(tracker: Tracker, splits: dict[str, MlflowDataset]) -> None:
    """The splits as the run's dataset inputs."""
    for context, dataset in splits.items():
        entity = dataset._to_mlflow_entity()
        tracker.emit("input", context=context, dataset={
            "name": entity.name, "digest": entity.digest, "source_type": entity.source_type,
            "source": entity.source, "schema": entity.schema, "profile": entity.profile})


def log_evaluation(tracker: Tracker, evaluation: Evaluation, figures: dict[str, Figure],
                   splits: dict[str, MlflowDataset], model_id: str | None,
                   final_val: dict[str, float] | None = None) -> None:
    """Test metrics (overall and per class), the kept model's validation scores, the
    classification report and the figures. The metrics are the run's and, linked by
    `model_id` and the split they were measured on, the logged model's too (so models can
    be ranked by them: mlflow.search_logged_models, mlflow ui's Models tab). `model_id`
    LOGGED_MODEL means the model this run logged, whenever the server gets it."""
    log_metrics(tracker, evaluation.metrics("test"), model_id=model_id, dataset=splits["test"])
    if final_val is not None:
        log_metrics(tracker, {f"final_val_{k}": v for k, v in final_val.items()},
                    model_id=model_id, dataset=splits["validation"])
    log_text(tracker, evaluation.report_text, "classification_report.txt")
    log_text(tracker, json.dumps({k: v for k, v in evaluation.report.items()
                                  if k != "class_names"}, indent=2), "classification_report.json")
    for name, figure in figures.items():
        figure.savefig(tracker.written(name))
        tracker.done_writing(name)


def log_metrics(tracker: Tracker, values: dict[str, float], step: int = 0,
                model_id: str | None = None, dataset: MlflowDataset | None = None) -> None:
    tracker.emit("metrics", values={k: float(v) for k, v in values.items()}, step=step,
                 timestamp=now(), model=model_id,
                 dataset=dataset and {"name": dataset.name, "digest": dataset.digest})


def log_results(tracker: Tracker, test: Evaluation, val: Evaluation,
                figures: dict[str, Figure], splits: dict[str, MlflowDataset],
                logged_model: bool) -> None:
    """A training run's evaluation: linked to the model it logged, if it did."""
    log_evaluation(tracker, test, figures, splits, LOGGED_MODEL if logged_model else None,
                   final_val={"loss": val.loss, "accuracy": val.accuracy})


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


def log_timings(tracker: Tracker, seconds: dict[str, float]) -> None:
    """Wall time per phase as metrics time_<phase>_s."""
    log_metrics(tracker, {f"time_{phase}_s": value for phase, value in seconds.items()})


def log_files(tracker: Tracker, *paths: Path | None) -> None:
    """Attach existing files (e.g. the job's log) to the run."""
    for path in paths:
        if path is not None and path.is_file():
            tracker.keep_file(path)


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
