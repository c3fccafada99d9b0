"""A tracking server whose database goes away while the server itself still answers
(issue 25): its `/health` says yes, its API refuses, and a run must warn once, not once a
second. A real `mlflow server` over a SQLite file that the test locks (an exclusive
transaction, as a stuck writer or a backup would hold it) for a while during a run."""

from __future__ import annotations

import sqlite3
import sys
import threading
import urllib.request

import mlflow
import pytest

from helpers import own_lines, run_module, serving, start_module

EPOCHS = 6
OUTAGE_S = 15.0  # spans several of the tracker's tries (every 5 s, every 1 s at the end)


@pytest.mark.slow
def test_a_database_outage_behind_a_live_server_warns_once(tmp_path, monkeypatch):
    # A request the locked database holds is given up after 2 s (the user's setting), not
    # the 10 s the run would choose: the outage then spans more tries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    database = tmp_path / "server.db"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
               f"sqlite:///{database}", "--artifacts-destination", str(tmp_path / "artifacts"),
               "--workers", "1"]
    with serving(command, ready="/health", cwd=tmp_path,
                 env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}) as url:
        run = start_module("mnist_exp.run", f"tracking.uri={url}", "data=mnist_sample",
                           "data.max_test_samples=300", "trainer.batch_size=32",
                           "tracking.system_metrics=false", f"trainer.epochs={EPOCHS}",
                           "tracking.flush_timeout_s=90", "hydra.run.dir=run", cwd=tmp_path)
        for line in run.stdout:
            if line.startswith("Epoch 2/"):
                break
        lock = sqlite3.connect(database, timeout=30, isolation_level=None, check_same_thread=False)
        lock.execute("BEGIN EXCLUSIVE")  # every read and write of the server's now waits
        urllib.request.urlopen(f"{url}/health", timeout=2).close()  # the server answers
        released = threading.Timer(OUTAGE_S, lock.execute, ["COMMIT"])
        released.start()
        out, err = run.communicate(timeout=600)
        released.join()
        lines = own_lines(out + err)  # the log's warnings go to stdout
        assert run.returncode == 0, err[-3000:]
        assert sum("not answering (" in line for line in lines) == 1, lines
        assert sum("answers again" in line for line in lines) == 1, lines
        assert not [line for line in lines if "Traceback" in line]

        synced = run_module("mnist_exp.sync", "run", cwd=tmp_path)
        assert synced.returncode == 0, synced.stderr[-3000:]
        client = mlflow.MlflowClient(url)
        [experiment] = [e for e in client.search_experiments() if e.name == "mnist_sample"]
        [logged] = client.search_runs([experiment.experiment_id])
        assert logged.info.status == "FINISHED"
        for key in ("accuracy", "val_loss", "learning_rate"):
            steps = sorted(m.step for m in client.get_metric_history(logged.info.run_id, key))
            assert steps == list(range(EPOCHS)), key
        assert "test_accuracy" in logged.data.metrics
        files = {a.path for a in client.list_artifacts(logged.info.run_id)}
        assert {"curves.png", "confusion_matrix.png", "config.yaml"} <= files
        assert logged.outputs.model_outputs
