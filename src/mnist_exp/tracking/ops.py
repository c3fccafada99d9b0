"""The uploader's appliers for the events beside a run's own (replay.py dispatches): a
registered model's alias, tags taken off a run, a saved model logged as it was saved (and
one an earlier try left half-logged, finished), and the retry of a write parallel jobs
collide on. Each is safe to repeat: replaying a record after a failure applies its events
again."""

from __future__ import annotations

import os
import random
import shutil
import time
import types
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.utils.file_utils import TempDir


def set_alias(client: mlflow.MlflowClient, event: dict[str, Any]) -> None:
    """An `alias` event: the alias (a sweep's champion) given to that version; giving it
    again to the same version changes nothing."""
    client.set_registered_model_alias(event["name"], event["alias"], str(event["version"]))


def untag(client: mlflow.MlflowClient, run_id: str, event: dict[str, Any]) -> None:
    """An `untag` event: those tags taken off the run; one it no longer has is done."""
    held = client.get_run(run_id).data.tags
    for key in event["keys"]:
        if key in held:
            client.delete_tag(run_id, key)


def id_key(checkpoint: str) -> str:
    """Where the record keeps a logged model's id: the run's model, or a checkpoint's."""
    return f"model_id:{checkpoint}" if checkpoint else "model_id"


def saved_model(folder: Path) -> types.SimpleNamespace:
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


def finish_model(client: mlflow.MlflowClient, run_id: str, model_id: str, step: int,
                 folder: Path, registered_name: str | None) -> None:
    """Finish, step by step, the logged model an earlier try created and then lost the store
    (what Model.log does, each step skipped or safe to repeat). Model.log itself cannot be
    given the model again: it links the model to the run anew, which the store refuses."""
    run = client.get_run(run_id)
    if model_id not in {o.model_id for o in (run.outputs.model_outputs if run.outputs else [])}:
        client.log_outputs(run_id, [LoggedModelOutput(model_id, step=step)])
    # The run's points at the model's step, linked to it, as Model.log links them; a point
    # the store holds already is not doubled.
    points = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id,
                     dataset_name=m.dataset_name, dataset_digest=m.dataset_digest)
              for key in run.data.metrics for m in client.get_metric_history(run_id, key)
              if m.step == step]
    if points:
        client.log_batch(run_id, metrics=points)
    model = client.get_logged_model(model_id)
    if model.status != LoggedModelStatus.READY:
        with TempDir() as tmp:
            local = tmp.path("model")
            saved_model(folder).save_model(local, Model(
                artifact_path=model.artifact_location, model_uuid=model_id, run_id=run_id,
                model_id=model_id))
            client.log_model_artifacts(model_id, local)
        client.finalize_logged_model(model_id, LoggedModelStatus.READY)
    if registered_name and not any(
            v.model_id == model_id
            for v in client.search_model_versions(f"name = '{registered_name}'")):
        mlflow.register_model(f"models:/{model_id}", registered_name)


def retrying(write: Any, attempts: int = 6) -> Any:
    """An MLflow write that parallel jobs on one store can collide on: two jobs inserting
    the same dataset at once (a unique constraint fails for the second, in SQLite or, through
    a tracking server, in PostgreSQL; on retry it finds the first's row), or a SQLite
    database briefly locked. Retried with backoff."""
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
