"""What a sweep's job pays besides its training: its data loaded once per process, and its
model and figures kept only when it improves on the sweep's best so far
(tracking.keep_in_sweeps)."""

from __future__ import annotations

import os
import shutil

import mlflow
import pytest

from helpers import MINI, compose_config
from mnist_exp.config.schema import TrackingConfig, parse_config
from mnist_exp.jobs import training
from mnist_exp.tracking.models import improves_on_sweep
from mnist_exp.tracking.store import SweepInfo
from mnist_exp.tracking.upload import HTTP_LIMITS


def config_for(*overrides: str):
    return parse_config(compose_config("data=mnist_sample", *overrides))


def test_a_process_loads_the_same_data_once_and_nobody_may_change_it():
    first = training._load_data(config_for())
    assert training._load_data(config_for()) is first
    assert not first.x_train.flags.writeable and not first.y_test.flags.writeable
    other_split = training._load_data(config_for("data.validation_split=0.25"))
    assert other_split is not first
    assert len(other_split.y_val) > len(first.y_val)


def test_files_changed_between_two_jobs_are_read_again(tmp_path):
    copy = shutil.copytree(MINI, tmp_path / "digits")
    config = config_for(f"data.path={copy}")
    first = training._load_data(config)
    assert training._load_data(config) is first
    labels = copy / "train-labels-idx1-ubyte.gz"
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))
    assert training._load_data(config) is not first


@pytest.fixture
def sweep(tmp_path) -> SweepInfo:
    """A sweep's store with one finished job at validation accuracy 0.9, and one running
    job (no status of FINISHED yet) at 0.95."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("sweep", artifact_location=f"{tmp_path}/mlruns")
    parent = client.create_run(experiment, tags={"mnist_exp.sweep": "parent"})
    for value, finished in ((0.9, True), (0.95, False)):
        job = client.create_run(experiment, tags={"mlflow.parentRunId": parent.info.run_id})
        client.log_metric(job.info.run_id, "final_val_accuracy", value)
        if finished:
            client.set_terminated(job.info.run_id)
    return SweepInfo(uri, experiment, parent.info.run_id, "sweep")


def test_a_sweep_job_keeps_its_model_and_figures_only_if_no_finished_job_was_better(sweep):
    improving = TrackingConfig()
    assert improving.keep_in_sweeps == "improving"  # the default
    assert improves_on_sweep(improving, sweep, 0.95)
    assert improves_on_sweep(improving, sweep, 0.9)  # a tie may be the best: kept
    assert not improves_on_sweep(improving, sweep, 0.89)


def test_a_single_run_or_keep_in_sweeps_all_keeps_everything(sweep):
    assert improves_on_sweep(TrackingConfig(), None, 0.1)
    assert improves_on_sweep(TrackingConfig(keep_in_sweeps="all"), sweep, 0.1)


def test_a_store_that_cannot_answer_keeps_them(sweep, monkeypatch):
    for name, value in HTTP_LIMITS.items():  # as a run's tracking sets them
        monkeypatch.setenv(name, value)
    away = SweepInfo("http://127.0.0.1:9", sweep.experiment_id, sweep.parent_run_id, "sweep")
    assert improves_on_sweep(TrackingConfig(), away, 0.1)
    assert improves_on_sweep(TrackingConfig(offline=True), sweep, 0.1)
