"""A tracking server that goes away mid-run loses nothing (issue 14): a real `mlflow server`
on 127.0.0.1, stopped and started again by the tests, and `python -m mnist_exp.sync`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from helpers import ROOT, own_lines, run_module, start_module

sys.path.insert(0, str(ROOT / "scripts"))
from fault_proxy import MlflowServer as Server  # scripts/ is no package: found on sys.path

# The whole small dataset and batches of 32: ~0.3 s an epoch, so the server can be stopped
# while training runs.
LONG = ("data=mnist_sample", "data.max_test_samples=300", "trainer.batch_size=32",
        "tracking.system_metrics=false")
EPOCHS = 12


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path / "server")
    server.start()
    yield server
    server.stop()


def wait_for_epoch(process: subprocess.Popen, epoch: int) -> None:
    for line in process.stdout:
        if line.startswith(f"Epoch {epoch}/"):
            return
    pytest.fail(f"the run ended before epoch {epoch}")


def the_run(uri: str):
    mlflow.set_tracking_uri(uri)  # for models:/ URIs
    client = mlflow.MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "mnist_sample"]
    [run] = client.search_runs([experiment.experiment_id])
    return client, run


def assert_complete(client, run, epochs: int = EPOCHS) -> None:
    assert run.info.status == "FINISHED"
    for key in ("accuracy", "val_loss", "learning_rate"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(epochs)), key
    assert 0.5 < run.data.metrics["test_accuracy"] <= 1
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "confusion_matrix.png", "config.yaml", "hydra"} <= files
    [output] = run.outputs.model_outputs
    model = mlflow.keras.load_model(f"models:/{output.model_id}")
    assert model.predict(np.zeros((1, 28, 28), np.float32), verbose=0).shape == (1, 10)
    linked = client.get_logged_model(output.model_id).metrics
    assert "test_accuracy" in {m.key for m in linked}


def run_losing_the_server(server: Server, work: Path, flush_timeout_s: int):
    """A run (into work/run) whose server is stopped once its third epoch starts."""
    work.mkdir()
    run = start_module("mnist_exp.run", f"tracking.uri={server.url}", *LONG,
                       f"trainer.epochs={EPOCHS}", f"tracking.flush_timeout_s={flush_timeout_s}",
                       "hydra.run.dir=run", cwd=work)
    wait_for_epoch(run, 3)
    server.stop()
    return run


@pytest.mark.slow
def test_a_server_that_comes_back_before_the_end_gets_everything(server, tmp_path):
    work = tmp_path / "work"
    run = run_losing_the_server(server, work, flush_timeout_s=120)
    threading.Timer(1.0, server.start).start()
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
    lines = own_lines(out + err)  # the log's warnings go to stdout
    assert sum("not answering" in line for line in lines) == 1, lines
    assert sum("answers again" in line for line in lines) == 1, lines
    assert not [line for line in lines if "Retrying" in line or "Traceback" in line]
    client, logged = the_run(server.url)
    assert_complete(client, logged)
    assert not (work / "run" / "mlflow_record" / "files").exists()  # uploaded: copies gone


def test_a_server_that_stays_away_keeps_the_run_for_sync(server, tmp_path):
    work = tmp_path / "work"
    run = run_losing_the_server(server, work, flush_timeout_s=3)
    stopped = time.monotonic()
    out, err = run.communicate(timeout=300)
    assert time.monotonic() - stopped < 60
    assert run.returncode == 3, err[-3000:]
    lines = own_lines(out + err)
    assert sum("not answering (" in line for line in lines) == 1, lines
    record = work / "run" / "mlflow_record"
    assert own_lines(err)[-1] == (
        f"mnist-exp: error: tracking server {server.url} not answering; the run is kept in "
        f"{record}; upload it with: python -m mnist_exp.sync {record}")
    assert (record / "model" / "MLmodel").is_file()

    server.start()
    synced = run_module("mnist_exp.sync", "run", cwd=work)
    assert synced.returncode == 0, synced.stderr[-3000:]
    client, logged = the_run(server.url)
    assert f"run {logged.info.run_id} FINISHED" in synced.stdout  # the run made at the start
    assert_complete(client, logged)

    again = run_module("mnist_exp.sync", "run", cwd=work)
    assert again.returncode == 0 and "nothing to upload" in again.stdout
    assert len(client.get_metric_history(logged.info.run_id, "accuracy")) == EPOCHS


def test_offline_runs_record_locally_and_sync_uploads_them_once(tmp_path):
    store = f"sqlite:///{tmp_path / 'team.db'}"
    result = run_module("mnist_exp.run", "data=mnist_sample", "data.max_train_samples=600",
                        "data.max_test_samples=300", "trainer.epochs=2", "tracking.offline=true",
                        f"tracking.uri={store}", "hydra.run.dir=outputs/offline", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Recorded offline in" in result.stdout
    assert not (tmp_path / "team.db").exists()  # no store was touched
    # A run whose process died (kill -9, a crash) leaves a record with no end.
    died = tmp_path / "elsewhere" / "died" / "mlflow_record"
    shutil.copytree(tmp_path / "outputs" / "offline" / "mlflow_record", died)
    events = (died / "events.jsonl").read_text().splitlines()
    (died / "events.jsonl").write_text("\n".join(events[:len(events) // 2]) + "\n")
    synced = run_module("mnist_exp.sync", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr[-3000:]
    client, run = the_run(store)
    assert_complete(client, run, epochs=2)
    assert run.data.tags["mlflow.runName"].startswith("data=mnist_sample")
    again = run_module("mnist_exp.sync", cwd=tmp_path)
    assert again.returncode == 0 and "nothing to upload" in again.stdout
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2

    synced = run_module("mnist_exp.sync", "elsewhere", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert " KILLED" in synced.stdout
    runs = client.search_runs([run.info.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]


def test_offline_needs_no_resume_and_no_sweep(tmp_path):
    resumed = run_module("mnist_exp.run", "tracking.offline=true", "trainer.resume=true",
                         cwd=tmp_path)
    assert resumed.returncode == 2
    assert own_lines(resumed.stderr)[-1].startswith("mnist-exp: error: trainer.resume: got True")
    swept = run_module("mnist_exp.run", "-m", "tracking.offline=true", "trainer.epochs=1,2",
                       cwd=tmp_path)
    assert swept.returncode == 2
    assert own_lines(swept.stderr)[-1].startswith(
        "mnist-exp: error: tracking.offline=true: a sweep needs its tracking server")


@pytest.mark.slow
def test_a_parallel_sweep_that_loses_its_server_is_synced_whole(server, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    sweep = start_module("mnist_exp.run", "-m", f"tracking.uri={server.url}", *LONG,
                         f"trainer.epochs={EPOCHS}", "tracking.flush_timeout_s=3",
                         "optimizer.learning_rate=1e-3,3e-4", "hydra/launcher=joblib",
                         "hydra.launcher.n_jobs=2", "hydra.sweep.dir=sweep", cwd=work)
    client = mlflow.MlflowClient(server.url)
    deadline = time.monotonic() + 240
    while len(client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            "tags.`sweep.job` != ''")) < 2:  # both jobs started
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.3)
    server.stop()
    _out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 3, err[-3000:]
    assert own_lines(err)[-1] == (
        f"mnist-exp: error: tracking server {server.url} not answering; the sweep's runs and "
        "summary are kept in sweep; upload it with: python -m mnist_exp.sync sweep")

    server.start()
    synced = run_module("mnist_exp.sync", "sweep", cwd=work)
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert synced.stdout.count("uploaded ") == 2
    [experiment] = [e for e in client.search_experiments() if e.name == "mnist_sample"]
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("mnist_exp.sweep") == "parent"]
    jobs = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best_run_id"] in {r.info.run_id for r in jobs}
    assert "sweep_ranking.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    mlflow.set_tracking_uri(server.url)
    for job in jobs:
        assert job.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert_complete(client, job)
    assert not (work / "sweep" / "SUMMARY_PENDING").exists()
