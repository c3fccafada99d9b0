"""A run that finished while its store refused part of it is not left RUNNING there (issue
25): the store's run is FAILED and tagged mnist_exp.incomplete until sync brings the rest,
which ends it FINISHED and takes the tag off."""

from __future__ import annotations

import mlflow
import pytest

from mnist_exp.config.schema import TrackingConfig
from mnist_exp.errors import StoreRefused
from mnist_exp.tracking.record import RECORD_DIR
from mnist_exp.tracking.runs import INCOMPLETE, tracked_run
from mnist_exp.tracking.store import prepare_experiment
from mnist_exp.tracking.upload import upload_folder


def test_a_finished_run_its_store_refused_part_of_is_failed_until_synced(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = mlflow.MlflowClient(uri)
    settings = TrackingConfig(system_metrics=False, flush_timeout_s=5)
    folder = tmp_path / RECORD_DIR
    with pytest.raises(StoreRefused), tracked_run(
            uri, prepare_experiment(uri, "incomplete"), "r", {}, folder, settings) as tracker:
        client.delete_run(tracker.run_id)  # deleted in the UI by mistake: writes refused
        tracker.emit("metrics", values={"loss": 1.0}, step=0, timestamp=2)
        client.restore_run(tracker.run_id)  # and brought back before the run ended
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED" and "loss" not in run.data.metrics
    assert str(folder) in run.data.tags[INCOMPLETE]

    assert upload_folder(tmp_path) == []
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["loss"] == 1.0
    assert INCOMPLETE not in run.data.tags
