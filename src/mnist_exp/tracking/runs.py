"""Everything MLflow about a run: its lifecycle and what it records."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib.metadata import version
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from matplotlib.figure import Figure
from mlflow.data.dataset import Dataset as MlflowDataset
from mlflow.models import infer_signature
from mlflow.tracking.context.registry import resolve_tags
from omegaconf import OmegaConf

from mnist_exp import __version__
from mnist_exp.config.schema import Config, TrackingConfig, to_dict
from mnist_exp.data.load import Dataset
from mnist_exp.errors import NotUploaded, first_line
from mnist_exp.evaluation.scoring import Evaluation
from mnist_exp.tracking.record import RunRecord
from mnist_exp.tracking.store import redact
from mnist_exp.tracking.upload import LOGGED_MODEL, Tracker, bound_http_calls

log = logging.getLogger(__name__)

MODEL_NAME = "model"
NOTE = "mlflow.note.content"  # the run's description in mlflow ui
SPLITS = ("training", "validation", "test")


@contextmanager
def tracked_run(uri: str, experiment_id: str | None, run_name: str, tags: dict[str, str],
                record_dir: Path, settings: TrackingConfig,
                resume_run_id: str | None = None) -> Iterator[Tracker]:
    """A run that always ends, FINISHED, FAILED with the error as a tag, or KILLED on Ctrl-C
    or SIGTERM, and whose every event is kept in a local record (`record_dir`) before it is
    uploaded, so a tracking server that goes away costs nothing (upload.py). At the end
    the server gets up to `settings.flush_timeout_s` to take what it missed; if it still
    has not, `tracker.uploaded` is false (NotUploaded says what to tell the user). With
    `resume_run_id`, that run is reopened instead of a new one started."""
    if uri.startswith(("http://", "https://")):
        bound_http_calls()
    tracker = Tracker(RunRecord.create(record_dir), uri, offline=settings.offline)
    tracker.record.hold()
    # The tags mlflow.start_run would add: user, source (entry point), git commit.
    tags = resolve_tags(tags)
    tracker.emit("start", experiment_id=experiment_id, experiment_name=settings.experiment_name,
                 run_name=run_name, tags=tags, start_time=_now(), resume_run_id=resume_run_id,
                 tracking_uri=redact(uri))
    monitor = _system_metrics(tracker, settings, resumed=resume_run_id is not None)
    status = "FINISHED"
    try:
        yield tracker
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as e:
        status = "FAILED"
        _emit_at_end(tracker, "tags",
                     values={"error": f"{type(e).__name__}: {first_line(e)}"[:5000]})
        raise
    finally:
        if monitor is not None:
            monitor.finish()
        _emit_at_end(tracker, "end", status=status, end_time=_now())
        # Ctrl-C asked to stop now: no long wait for a server that is away.
        timeout = settings.flush_timeout_s if status == "FINISHED" else min(
            settings.flush_timeout_s, 5.0)
        tracker.uploaded = tracker.finish(timeout)
        tracker.record.let_go()
        if not tracker.uploaded and status != "FINISHED":
            log.warning("%s", NotUploaded(tracker.record.folder, uri))


def _emit_at_end(tracker: Tracker, op: str, **fields: Any) -> None:
    """Record the run's error or end without masking the exception that ended it."""
    try:
        tracker.emit(op, **fields)
    except Exception as e:
        log.warning("the store refused the run's %s: %s", op, first_line(e))


def _system_metrics(tracker: Tracker, settings: TrackingConfig, resumed: bool) -> Any:
    """MLflow's sampler of CPU, memory, disk and network use (system/* metrics), in its
    own thread; not recorded locally (a server that is away misses those samples)."""
    if not settings.system_metrics or tracker.run_id is None:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # Its start and stop are announced at INFO: not the user's news.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(tracker.run_id, settings.system_metrics_interval,
                                   resume_logging=resumed, tracking_uri=tracker.uri)
    monitor.start()
    return monitor


def _now() -> int:
    return int(time.time() * 1000)


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
                 timestamp=_now(), model=model_id,
                 dataset=dataset and {"name": dataset.name, "digest": dataset.digest})


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


class EpochLogger(keras.callbacks.Callback):
    """What MLflow's Keras callback records (the optimizer's settings as optimizer_*
    params, the model summary, each epoch's metrics) plus the learning rate per epoch,
    through the run's record; with `checkpoints`, the model every so many epochs, its
    validation metrics linked to it."""

    def __init__(self, tracker: Tracker, checkpoints: Checkpoints | None = None) -> None:
        super().__init__()
        self.tracker = tracker
        self.checkpoints = checkpoints

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        config = self.model.optimizer.get_config()
        self.tracker.emit("params", values={f"optimizer_{k}": str(v) for k, v in config.items()})
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


def warm_up_model_logging() -> None:
    """MLflow's save_model checks the model's pinned requirements against the installed
    packages, scanning every installed distribution first (0.64 s here, once a process).
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



def _git_state(folder: Path) -> tuple[str | None, bool]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, False
