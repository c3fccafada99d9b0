"""Replaying a run's record (record.py) into a tracking store, each event safe to repeat.

A call that timed out may still have reached the server, so after a failure (and in
`python -m mnist_exp.sync`) metric points already there are skipped by (key, step,
timestamp), a run the server lost is created again, and a model half-logged is filled in.
An event counts as uploaded only once the store has taken it: one it refuses stops the
upload there, with the store's words (refusals.py), and stays pending with those after it.
To a store other than its own, a run is copied as a new run there (ledger.py).
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from mnist_exp.errors import ServerDown, UserError, first_line, redact
from mnist_exp.tracking.ledger import Ledger
from mnist_exp.tracking.ops import finish_model, id_key, retrying, saved_model, set_alias, untag
from mnist_exp.tracking.record import RunRecord
from mnist_exp.tracking.refusals import check_store, refusal, unreachable
from mnist_exp.tracking.store import prepare_experiment

__all__ = ["LOGGED_MODEL", "Uploader", "retrying", "unreachable"]

log = logging.getLogger("mnist_exp.tracking.upload")  # the name its lines had before the split

LOGGED_MODEL = "@logged"  # a metric event's model: the model this run logged (or, with
# ":<name>" after it, the checkpoint of that name it logged)


class Uploader:
    """Replays a record's pending events into the store at `uri`: its own, or another
    one, which gets a copy of the run (ledger.py)."""

    def __init__(self, record: RunRecord, uri: str) -> None:
        self.record = record
        self.uri = uri
        self._client: mlflow.MlflowClient | None = None
        self.careful = False  # after a failure: check what the server already has
        self._points: dict[str, set[tuple[int, int]]] = {}
        self._ledger: Ledger | None = None
        self._recreated = False  # the store lost the run once in this upload: not twice
        self._opened = False  # check_store said yes
        self.taken = 0  # events the store took in this uploader's life

    @property
    def client(self) -> mlflow.MlflowClient:
        """Made when first needed: making one opens (and may create) a database store."""
        if self._client is None:
            self._client = mlflow.MlflowClient(self.uri)
        return self._client

    @property
    def ledger(self) -> Ledger:
        """What the store at `uri` has of the record (see `_choose`)."""
        if self._ledger is None:
            self._ledger = self.record.ledger_for(self.uri)
        return self._ledger

    @property
    def run_id(self) -> str | None:
        return self.ledger.ids.get("run_id")

    def upload(self) -> None:
        """Upload every pending event, each counted once the store has taken it (or is
        shown to hold it); ServerDown at the first the store cannot take now, StoreRefused
        at the first it refuses. Either way that event and those after it stay pending,
        and the record whole."""
        events, op = self.record.events, "start"
        try:
            if not self._opened:  # before MLflow opens it, with its long retries
                check_store(self.uri, self.record.folder)
                self._opened = True
            ledger = self._choose()
            for index in range(ledger.uploaded, len(events)):
                op = events[index]["op"]
                self._apply(events[index])
                ledger.set_uploaded(index + 1)
                self.taken += 1
        except (ServerDown, UserError):
            raise
        except Exception as e:
            if self._run_lost(e):
                return self.upload()
            if unreachable(e):
                self.careful = True
                raise ServerDown(first_line(e)) from e
            refused = refusal(e, self.uri, self.record.folder, op)
            if refused is None:  # no answer of the store's: a bug, shown as one
                raise
            raise refused from e
        if self.record.ended and not self.record.pending:
            self.record.discard_copies()

    def end_early(self, status: str, tags: dict[str, str]) -> None:
        """The run's end, out of turn, when an event before it cannot be uploaded (a store
        that refuses it, an artifact folder it cannot write): the store's run must not
        stay RUNNING. Nothing is counted; sync later uploads the rest in order, this end
        again included. Best effort: a store that takes nothing is left as it is."""
        if self.run_id is None:
            return
        try:
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, value)
            self.client.set_terminated(self.run_id, status)
        except Exception as e:  # the record still holds the end: sync brings it
            log.debug("the run's early end was not taken: %s", first_line(e))

    def _choose(self) -> Ledger:
        """The ledger to upload to. An address other than the record's own store's may
        still be that store (moved, or reached through a tunnel): one that holds the run,
        or its sweep's parent run, is. Otherwise the run is copied there, while the record
        keeps its files, as a new run: not a sweep's job (its parent is on its own store)
        nor part of a resumed run."""
        ledger = self.ledger
        if ledger.own or ledger.ids:
            return ledger
        start = self.record.events[0]
        known = (self.record.ids.get("run_id"), start.get("resume_run_id"),
                 start["tags"].get("mlflow.parentRunId"), start.get("run_id"))
        if any(run_id and self._existing(run_id) for run_id in known):
            self._ledger = self.record.own
            return self._ledger
        why = ("it writes to a run of its own store's" if known[3] else
               "it is a sweep's job (its parent run is there)" if known[2] else
               "it is a sweep's parent run (its jobs are there)"
               if start["tags"].get("mnist_exp.sweep") == "parent" else
               "it holds only the resumed part of its run" if known[1] else
               None if self.record.keeps_copies else
               "its own store has it, and the record no longer keeps its files")
        if why is not None:
            raise UserError(f"{redact(self.uri)} is not the store this run was recorded for "
                            f"({self.record.own_uri}), and {why}: it is not copied; sync it "
                            "to its own store (without --tracking-uri)")
        return ledger

    def _run_lost(self, error: BaseException) -> bool:
        """Whether the store said it has no such run and indeed has lost ours (purged, or
        its database replaced): then the record is uploaded to it again, as a new run. (A
        run deleted but not purged is still there: writes to it are refused.)"""
        run_id = self.run_id
        if (self._recreated or not run_id or not isinstance(error, MlflowException)
                or error.error_code != "RESOURCE_DOES_NOT_EXIST"):
            return False
        try:
            lost = self._existing(run_id) is None
        except Exception:  # the store's first answer is the one to tell
            return False
        if lost:
            log.warning("tracking store %s has no run %s any more: uploading its record "
                        "again, as a new run", redact(self.uri), run_id)
            self.ledger.reset()
            self.careful = self._recreated = True
        return lost

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
        elif op == "alias":
            set_alias(self.client, event)
        elif op == "untag":
            untag(self.client, run_id, event)
        elif op == "end":
            self.client.set_terminated(run_id, event["status"], end_time=event["end_time"])
        else:
            raise ValueError(f"{self.record.folder}: unknown event {op!r}")

    def _start(self, event: dict[str, Any]) -> None:
        # A record may write to a run made before it (`run_id`: a sweep's parent, a run
        # left open), or reopen one (`resume_run_id`).
        known = self.run_id or event.get("resume_run_id") or event.get("run_id")
        run = self._existing(known) if known else None
        if run is not None:
            if event.get("resume_run_id"):
                self.client.update_run(known, "RUNNING")
            self.ledger.set_ids({"experiment_id": run.info.experiment_id, "run_id": known})
            return
        if known:
            log.warning("the tracking store has no run %s any more: creating it again", known)
        # The experiment's id in the run's own store; another store has its own.
        recorded = event.get("experiment_id") if known is None and self.ledger.own else None
        experiment_id = recorded or prepare_experiment(self.uri, event["experiment_name"])
        run = (self._created_unheard(experiment_id, event) if self.careful else None) or \
            self.client.create_run(experiment_id, start_time=event["start_time"],
                                   tags=event["tags"], run_name=event["run_name"])
        self.ledger.set_ids({"experiment_id": experiment_id, "run_id": run.info.run_id})

    def _created_unheard(self, experiment_id: str, event: dict[str, Any]) -> Any:
        """The run an earlier try created whose answer was lost (the store took it, the
        caller could not tell): same name and start time, to the millisecond, RUNNING and
        still empty, so another run's (a copy of this record, synced before) is never
        taken. Filled in, not doubled and left RUNNING."""
        found = self.client.search_runs(
            [experiment_id], f"attributes.start_time = {int(event['start_time'])}")
        return next((r for r in found if r.info.run_name == event["run_name"]
                     and r.info.status == "RUNNING" and not r.data.params
                     and not r.data.metrics), None)

    def _existing(self, run_id: str) -> Any:
        try:
            return self.client.get_run(run_id)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _metrics(self, event: dict[str, Any]) -> None:
        model = event.get("model") or ""
        model_id = (self.ledger.ids.get(id_key(model.partition(":")[2]))
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
        experiment_id = self.ledger.ids["experiment_id"]
        existing = None
        if self.careful:
            existing = next((m.model_id for m in self.client.search_logged_models(
                experiment_ids=[experiment_id], filter_string=f"name = '{event['name']}'")
                if m.source_run_id == self.run_id), None)
        # Model.log talks to the global store, and puts the model in the active experiment.
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(experiment_id=experiment_id)
        folder = self.record.folder / event["folder"]
        if existing:
            finish_model(self.client, self.run_id, existing, event.get("step", 0), folder,
                         event.get("registered_name"))
        else:
            existing = Model.log(artifact_path=None, name=event["name"], run_id=self.run_id,
                                 step=event.get("step", 0), flavor=saved_model(folder),
                                 registered_model_name=event.get("registered_name"),
                                 validate_serving_input=False).model_id
        self.ledger.set_id(id_key(event.get("checkpoint", "")), existing)
