"""Nothing lost, nothing left running: interruption and resume, divergence, unreachable
tracking, untrusted input, secrets."""

from __future__ import annotations

import gzip
import signal
import socket
import subprocess
import sys

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf

from helpers import SECRET, TINY, own_lines, run_module, start_module
from mnist_exp.data.load import load_idx_folder
from mnist_exp.errors import DataError


def runs_of(workdir, experiment="mnist"):
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([found.experiment_id]) if found else [])


@pytest.mark.parametrize("stop", [signal.SIGINT,
                                  pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
                         ids=["ctrl-c", "kill"])
def test_interrupted_run_is_killed_then_resumed_into_the_same_run(mini, tmp_path, stop):
    args = [f"data.path={mini}", "data.max_train_samples=3000", "trainer.epochs=12",
            "data.max_test_samples=200", "tracking.log_model=false", "hydra.run.dir=out"]
    process = start_module("mnist_exp.run", *args, cwd=tmp_path)
    for line in process.stdout:  # wait until three epochs have finished
        if "Epoch 4/12" in line:
            break
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "trainer.resume=true" in stderr

    client, [run] = runs_of(tmp_path)
    assert run.info.status == "KILLED"
    done = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert done[:3] == [0, 1, 2]
    saved = list((tmp_path / "outputs" / "checkpoints").glob("*/run_id"))
    assert [p.read_text() for p in saved] == [run.info.run_id]

    resumed = run_module("mnist_exp.run", *args, "trainer.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    client, [again] = runs_of(tmp_path)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(set(steps)) == list(range(12))
    assert "test_accuracy" in again.data.metrics
    assert not list((tmp_path / "outputs" / "checkpoints").glob("*/run_id"))


@pytest.mark.slow
def test_a_run_killed_outright_is_ended_killed_by_sync(mini, tmp_path):
    """SIGKILL leaves no end event; every event before it reached the store, so the record
    lacks nothing but its end, which sync must still add."""
    args = [f"data.path={mini}", "data.max_train_samples=3000", "trainer.epochs=12",
            "data.max_test_samples=200", "tracking.log_model=false", "hydra.run.dir=out"]
    process = start_module("mnist_exp.run", *args, cwd=tmp_path)
    for line in process.stdout:
        if "Epoch 4/12" in line:
            break
    process.kill()
    process.communicate(timeout=120)
    _, [run] = runs_of(tmp_path)
    assert run.info.status == "RUNNING"

    synced = run_module("mnist_exp.sync", "out", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr[-2000:]
    client, [run] = runs_of(tmp_path)
    assert run.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")][:3] \
        == [0, 1, 2]


def test_the_tracking_store_runs_on_pythons_own_sqlite():
    """TensorFlow carries a private SQLite with global symbols; once mnist_exp is imported,
    the MLflow store still gets the SQLite that Python's binding was built against."""
    query = "sqlite3.connect(':memory:').execute('select sqlite_version()').fetchone()[0]"

    def version(imports: str) -> str:
        out = subprocess.run([sys.executable, "-c", f"{imports}; print({query})"],
                             capture_output=True, text=True, check=True)
        return out.stdout.split()[-1]

    own = version("import sqlite3")
    assert version("import mnist_exp.cli.run, tensorflow, sqlite3") == own


def test_a_diverging_run_stops_fails_and_says_why(mini, tmp_path):
    result = run_module("mnist_exp.run", f"data.path={mini}", *TINY, "optimizer=sgd",
                        "optimizer.learning_rate=1e12", "hydra.run.dir=out", cwd=tmp_path)
    assert result.returncode == 2
    [line] = own_lines(result.stderr)
    assert "loss became nan" in line and "optimizer.learning_rate" in line
    client, [run] = runs_of(tmp_path)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("TrainingDiverged: loss became nan")
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 1  # stopped at once


def test_in_a_sweep_a_diverging_job_fails_and_the_others_go_on(mini, tmp_path):
    result = run_module("mnist_exp.run", "-m", f"data.path={mini}", *TINY, "optimizer=sgd",
                        "optimizer.learning_rate=1e12,0.05", "hydra.sweep.dir=sweep",
                        cwd=tmp_path)
    assert result.returncode == 2  # the sweep fails as its diverged job did alone...
    assert "1 job(s) failed" in result.stderr
    _, runs = runs_of(tmp_path)
    [parent] = [r for r in runs if r.data.tags.get("mnist_exp.sweep") == "parent"]
    statuses = {r.data.params["optimizer.learning_rate"]: r.info.status for r in runs
                if r is not parent}
    assert statuses == {"1000000000000.0": "FAILED", "0.05": "FINISHED"}  # ...after all ran
    assert parent.info.status == "FINISHED" and parent.data.metrics["failed_jobs"] == 1
    assert "loss became nan" in (tmp_path / "sweep" / "0" / "FAILED").read_text()


@pytest.mark.parametrize("server", ["closed port", "silent"])
def test_unreachable_tracking_server_stops_before_any_work(tmp_path, server):
    listener = None
    port = 9
    if server == "silent":  # accepts connections, never answers
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
    try:
        uri = f"http://alice:hunter2@127.0.0.1:{port}"
        result = run_module("mnist_exp.run", f"tracking.uri={uri}", "hydra.run.dir=out",
                            cwd=tmp_path, timeout=120)
    finally:
        if listener:
            listener.close()
    assert result.returncode == 2
    [line] = own_lines(result.stderr)
    assert f"http://alice:***@127.0.0.1:{port}" in line and "does not answer" in line
    assert "hunter2" not in result.stdout + result.stderr


def test_params_and_tags_hold_no_environment_secrets(tiny_run):
    client = mlflow.MlflowClient(tiny_run.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sample").experiment_id])
    recorded = " ".join([*run.data.params.values(), *run.data.tags.values()])
    assert SECRET not in recorded
    assert not any(key.startswith(("env", "MNIST_EXP")) for key in run.data.params)


def test_images_of_the_wrong_size_are_refused(mini, tmp_path):
    for f in mini.glob("*.gz"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    header = b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (2, 32, 32))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(2048)))
    with pytest.raises(DataError, match="images are 32x32; expected 28x28"):
        load_idx_folder(tmp_path)


def _png(pixels) -> bytes:
    return tf.io.encode_png(np.asarray(pixels, np.uint8)[..., None]).numpy()


BAD_IMAGES = {
    "empty.png": (b"", "empty file"),
    "notes.txt": (b"just some text", "not a readable"),
    "cut.png": (_png(np.zeros((28, 28)))[:40], "not a readable"),
    "bomb.png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big") * 2
                 + b"\x08\x00\x00\x00\x00" + bytes(64), "pixels; images over"),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_predict_refuses_untrusted_images_with_one_line(tiny_run, tmp_path, name):
    content, message = BAD_IMAGES[name]
    (tmp_path / name).write_bytes(content)
    client = mlflow.MlflowClient(tiny_run.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sample").experiment_id])
    result = run_module("mnist_exp.predict", run.info.run_id, str(tmp_path / name),
                        cwd=tiny_run.workdir)
    assert result.returncode == 2
    [line] = own_lines(result.stderr)
    assert name in line and message in line


def test_models_with_arbitrary_code_are_not_loaded(tmp_path):
    uri = f"sqlite:///{tmp_path / 'db.sqlite'}"
    mlflow.set_tracking_uri(uri)
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Lambda(lambda x: x * 2),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    with mlflow.start_run():
        info = mlflow.keras.log_model(model, name="model", pip_requirements=["keras"])
    (tmp_path / "digit.png").write_bytes(_png(np.zeros((28, 28))))
    result = run_module("mnist_exp.predict", info.model_uri, "digit.png", cwd=tmp_path,
                        env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 2
    [line] = own_lines(result.stderr)
    assert "cannot load model" in line and "safe_mode" in line
