"""Uploading a run's record (record.py) to its tracking store, live or later.

`Uploader` replays the events the server does not have yet, in order, each safe to repeat:
a call that timed out may still have reached the server, so after a failure (and in
`python -m mnist_exp.sync`) metric points already there are skipped by (key, step,
timestamp), a run the server lost is created again, and a model half-logged is filled in.
`Tracker` is the live side: a run's every event goes to its record and, while the server
answers, straight on to it; when it stops answering, training goes on with one warning,
a cheap probe watches for its return, and what was held back is uploaded then.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from mnist_exp.errors import ServerDown, UserError, first_line
from mnist_exp.tracking.record import RunRecord, find_records
from mnist_exp.tracking.store import check_reachable, prepare_experiment, redact

log = logging.getLogger(__name__)

LOGGED_MODEL = "@logged"  # a metric event's model: the model this run logged (or, with
# ":<name>" after it, the checkpoint of that name it logged)
# Bound each call to a server: MLflow's defaults (7 retries with backoff, 120 s timeout)
# keep a run waiting for minutes on a server that went away. The record makes retrying
# here pointless: what fails is uploaded later.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def bound_http_calls() -> None:
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


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


class Tracker:
    """A run's recorder: each event goes to the record, then to the server while it
    answers (see the module's docstring). `offline` records only."""

    def __init__(self, record: RunRecord, uri: str, offline: bool = False,
                 probe_every_s: float = 5.0) -> None:
        self.record = record
        self.uri = uri
        self.offline = offline
        self.uploader = Uploader(record, uri)
        self.probe_every_s = probe_every_s
        self._next_probe: float | None = None  # set while the server is away
        self.uploaded = False  # set by tracking.tracked_run at the run's end

    @property
    def run_id(self) -> str | None:
        return self.uploader.run_id

    def emit(self, op: str, **fields: Any) -> None:
        self.record.append(op, **fields)
        if not self.offline:
            self._upload()

    def keep_file(self, source: Path, artifact_path: str | None = None) -> None:
        self.emit("artifact", file=self.record.keep(source, artifact_path),
                  artifact_path=artifact_path)

    def written(self, artifact_file: str) -> Path:
        """A path to write an artifact to; `done_writing` records it."""
        return self.record.file_for(artifact_file)

    def done_writing(self, artifact_file: str) -> None:
        parent = os.path.dirname(artifact_file) or None
        self.emit("artifact", file=f"files/{artifact_file}", artifact_path=parent)

    def _upload(self) -> None:
        if self._next_probe is not None:
            if time.monotonic() < self._next_probe:
                return
            if not self.answers():
                self._next_probe = time.monotonic() + self.probe_every_s
                return
            log.warning("tracking server %s answers again: uploading the %d events held back",
                        redact(self.uri), self.record.pending)
            self._next_probe = None
        try:
            self.uploader.upload()
        except ServerDown as e:
            self._next_probe = time.monotonic() + self.probe_every_s
            # System metrics are sampled in MLflow's own thread; their failures would
            # warn every interval.
            logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
            log.warning("tracking server %s not answering (%s); the run goes on and is "
                        "recorded in %s", redact(self.uri), e, self.record.folder)

    def answers(self) -> bool:
        try:
            check_reachable(self.uri, timeout=2.0)
        except UserError:
            return False
        return True

    def finish(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the server to take what is pending; whether it did."""
        if self.offline:
            return not self.record.pending
        deadline = time.monotonic() + timeout_s
        while self.record.pending:
            self._next_probe = min(self._next_probe or 0.0, time.monotonic())
            self._upload()
            if not self.record.pending or time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        return not self.record.pending


def upload_folder(folder: Path, uri: str | None = None,
                  report: Callable[[RunRecord], None] | None = None) -> list[RunRecord]:
    """Upload every record under `folder` that its server lacks, each to `uri` or else to
    the store it names; the records still pending (server away). A record whose process
    died without ending it (killed, a crash) is ended KILLED. Records of live runs wait."""
    bound_http_calls()
    left = []
    for record in find_records([folder]):
        if not record.pending:
            continue
        try:  # a live run's record, or one another sync is uploading, waits
            record.hold()
        except BlockingIOError:
            continue
        try:
            record.reload()
            if _upload_record(record, uri):
                left.append(record)
            elif report is not None:
                report(record)
        finally:
            record.let_go()
    return left


def _upload_record(record: RunRecord, uri: str | None) -> bool:
    """Upload one record; whether its server was away."""
    target = uri or record.events[0].get("tracking_uri", "")
    if "***" in target:  # redacted when recorded
        target = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not target:
            raise UserError(f"{record.folder}: its tracking URI had a password; give the "
                            "URI with --tracking-uri or MLFLOW_TRACKING_URI")
    if not record.ended:
        last = max((e.get("timestamp") or e.get("start_time") or 0) for e in record.events)
        record.append("end", status="KILLED", end_time=last)
    uploader = Uploader(record, target)
    uploader.careful = True
    while record.pending:
        try:
            uploader.upload()
        except ServerDown:
            return True
        except Exception as e:  # that event is passed over; the rest still goes up
            log.warning("%s: one event not uploaded: %s", record.folder, first_line(e))
    return False


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
