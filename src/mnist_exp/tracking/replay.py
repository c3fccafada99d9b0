"""Replaying a run's record (record.py) into its tracking store, each event safe to repeat.

A call that timed out may still have reached the server, so after a failure (and in
`python -m mnist_exp.sync`) metric points already there are skipped by (key, step,
timestamp), a run the server lost is created again, and a model half-logged is filled in.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import types
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from mnist_exp.errors import ServerDown, first_line
from mnist_exp.tracking.record import RunRecord
from mnist_exp.tracking.store import prepare_experiment

log = logging.getLogger("mnist_exp.tracking.upload")  # the name its lines had before the split

LOGGED_MODEL = "@logged"  # a metric event's model: the model this run logged (or, with
# ":<name>" after it, the checkpoint of that name it logged)


def unreachable(error: BaseException) -> bool:
    """Whether an error means the store is away (try again later) rather than that it
    refused what was sent (a bug or a conflict, raised as usual)."""
    if isinstance(error, MlflowException):
        text = str(error)
        return ("failed with exception" in text or "Max retries exceeded" in text
                or (error.get_http_status_code() >= 500 and "UNIQUE constraint" not in text))
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"ConnectionError", "Timeout", "TimeoutError", "ConnectTimeout",
                         "EndpointConnectionError", "ConnectionClosedError"})


class Uploader:
    """Replays a record's pending events into the store at `uri`."""

    def __init__(self, record: RunRecord, uri: str) -> None:
        self.record = record
        self.uri = uri
        self._client: mlflow.MlflowClient | None = None
        self.careful = False  # after a failure: check what the server already has
        self._points: dict[str, set[tuple[int, int]]] = {}

    @property
    def client(self) -> mlflow.MlflowClient:
        """Made when first needed: making one opens (and may create) a database store."""
        if self._client is None:
            self._client = mlflow.MlflowClient(self.uri)
        return self._client

    @property
    def run_id(self) -> str | None:
        return self.record.ids.get("run_id")

    def upload(self) -> None:
        """Upload every pending event; ServerDown at the first the store cannot take."""
        events = self.record.events
        for index in range(self.record.uploaded, len(events)):
            try:
                self._apply(events[index])
            except Exception as e:
                if not unreachable(e):
                    # Refused, not missed: trying it again would fail again, and block the
                    # events after it (the run's error, its end).
                    self.record.set_uploaded(index + 1)
                    raise
                self.careful = True
                raise ServerDown(first_line(e)) from e
            self.record.set_uploaded(index + 1)
        if self.record.ended and not self.record.pending:
            self.record.discard_copies()

    def _apply(self, event: dict[str, Any]) -> None:
        op, run_id = event["op"], self.run_id
        if op == "start":
            self._start(event)
        elif op == "params":
            params = [Param(k, str(v)) for k, v in event["values"].items()]
            for i in range(0, len(params), 100):  # MLflow's limit per batch
                self.client.log_batch(run_id, params=params[i:i + 100])
        elif op == "tags":
            self.client.log_batch(run_id, tags=[RunTag(k, str(v))
                                                for k, v in event["values"].items()])
        elif op == "metrics":
            self._metrics(event)
        elif op == "input":
            dataset = DatasetInput(Dataset(**event["dataset"]),
                                   tags=[InputTag(MLFLOW_DATASET_CONTEXT, event["context"])])
            retrying(lambda: self.client.log_inputs(run_id, datasets=[dataset]))
        elif op == "artifact":
            local = self.record.folder / event["file"]
            if local.is_dir():
                self.client.log_artifacts(run_id, str(local), event.get("artifact_path"))
            else:
                self.client.log_artifact(run_id, str(local), event.get("artifact_path"))
        elif op == "model":
            self._model(event)
        elif op == "end":
            self.client.set_terminated(run_id, event["status"], end_time=event["end_time"])
        else:
            raise ValueError(f"{self.record.folder}: unknown event {op!r}")

    def _start(self, event: dict[str, Any]) -> None:
        known = self.run_id or event.get("resume_run_id")
        run = self._existing(known) if known else None
        if run is not None:
            if event.get("resume_run_id"):
                self.client.update_run(known, "RUNNING")
            self.record.set_id("experiment_id", run.info.experiment_id)
            self.record.set_id("run_id", known)
            return
        if known:
            log.warning("the tracking store has no run %s any more: creating it again", known)
        experiment_id = (event.get("experiment_id") if known is None else None) or \
            prepare_experiment(self.uri, event["experiment_name"])
        run = self.client.create_run(experiment_id, start_time=event["start_time"],
                                     tags=event["tags"], run_name=event["run_name"])
        self.record.set_id("experiment_id", experiment_id)
        self.record.set_id("run_id", run.info.run_id)

    def _existing(self, run_id: str) -> Any:
        try:
            return self.client.get_run(run_id)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _metrics(self, event: dict[str, Any]) -> None:
        model = event.get("model") or ""
        model_id = (self.record.ids.get(_id_key(model.partition(":")[2]))
                    if model.startswith(LOGGED_MODEL) else model or None)
        dataset = event.get("dataset") or {}
        points = []
        for key, value in event["values"].items():
            point = (event["step"], event["timestamp"])
            if self.careful and point in self._history(key):
                continue
            points.append(Metric(key, value, event["timestamp"], event["step"],
                                 model_id=model_id, dataset_name=dataset.get("name"),
                                 dataset_digest=dataset.get("digest")))
            self._points.get(key, set()).add(point)
        if points:
            self.client.log_batch(self.run_id, metrics=points)

    def _history(self, key: str) -> set[tuple[int, int]]:
        if key not in self._points:
            self._points[key] = {(m.step, m.timestamp)
                                 for m in self.client.get_metric_history(self.run_id, key)}
        return self._points[key]

    def _model(self, event: dict[str, Any]) -> None:
        """The model saved in the record, logged as the run's LoggedModel (and registered).
        A model an earlier try created but did not finish is filled in, not doubled."""
        experiment_id = self.record.ids["experiment_id"]
        existing = None
        if self.careful:
            existing = next((m.model_id for m in self.client.search_logged_models(
                experiment_ids=[experiment_id], filter_string=f"name = '{event['name']}'")
                if m.source_run_id == self.run_id), None)
        # Model.log talks to the global store, and puts the model in the active experiment.
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(experiment_id=experiment_id)
        info = Model.log(artifact_path=None, name=event["name"], run_id=self.run_id,
                         model_id=existing, step=event.get("step", 0),
                         flavor=_saved_model(self.record.folder / event["folder"]),
                         registered_model_name=event.get("registered_name"),
                         validate_serving_input=False)
        self.record.set_id(_id_key(event.get("checkpoint", "")), info.model_id)


def _id_key(checkpoint: str) -> str:
    """Where the record keeps a logged model's id: the run's model, or a checkpoint's."""
    return f"model_id:{checkpoint}" if checkpoint else "model_id"


def _saved_model(folder: Path) -> types.SimpleNamespace:
    """A flavour for Model.log that copies a model already saved (with its flavours,
    signature and input example) instead of saving one: the record's copy is what gets
    uploaded, now or by sync."""
    def save_model(path: str, mlflow_model: Model, **kwargs: Any) -> None:
        shutil.copytree(folder, path)
        saved = Model.load(folder)
        mlflow_model.flavors = saved.flavors
        mlflow_model.signature = saved.signature
        mlflow_model.saved_input_example_info = saved.saved_input_example_info
        mlflow_model.save(os.path.join(path, "MLmodel"))

    name = "mlflow.keras" if "keras" in Model.load(folder).flavors else "custom"
    return types.SimpleNamespace(__name__=name, save_model=save_model)


def retrying(write: Any, attempts: int = 6) -> Any:
    """An MLflow write that parallel jobs on one store can collide on: two jobs inserting
    the same dataset at once (a unique constraint fails for the second, in SQLite or, through
    a tracking server, in PostgreSQL; on retry it finds the first's row), or a SQLite
    database briefly locked. Retried with backoff."""
    import random

    for attempt in range(attempts):
        try:
            return write()
        except MlflowException as e:
            collided = any(sign in str(e) for sign in (
                "UNIQUE constraint failed", "database is locked",
                "duplicate key value violates unique constraint"))
            if not collided or attempt == attempts - 1:
                raise
            time.sleep(0.1 * 2**attempt * (1 + random.random()))
