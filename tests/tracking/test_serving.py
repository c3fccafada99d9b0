"""The model registry and serving: the best job of a sweep becomes models:/<name>@champion,
which `mlflow models serve` answers over REST and `mnist_exp.predict` accepts."""

from __future__ import annotations

import json
import sys
import urllib.request

import mlflow
import numpy as np
import pytest

from helpers import run_module, serving
from mnist_exp.data.load import load_idx_folder

pytestmark = pytest.mark.slow  # a sweep, then a model server: ~45 s


@pytest.fixture(scope="module")
def champion(tmp_path_factory, mini):
    """A 2-job sweep that registers its models; the better one is the champion."""
    workdir = tmp_path_factory.mktemp("registry")
    result = run_module("mnist_exp.run", "-m", f"data.path={mini}", "data.max_train_samples=3000",
                        "trainer.epochs=2", "optimizer.learning_rate=1e-3,1e-4",
                        "tracking.register_model=true", "hydra.sweep.dir=sweep", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "models:/mnist-exp@champion is now version" in result.stdout
    return workdir, f"sqlite:///{workdir / 'mlflow.db'}"


def test_the_best_job_by_validation_is_the_champion(champion):
    _, uri = champion
    client = mlflow.MlflowClient(uri)
    version = client.get_model_version_by_alias("mnist-exp", "champion")
    runs = client.search_runs([client.get_experiment_by_name("mnist").experiment_id],
                              filter_string="tags.`mnist_exp.sweep` = 'parent'")
    assert version.run_id == runs[0].data.tags["best_run_id"]
    assert len(client.search_model_versions("name = 'mnist-exp'")) == 2


def test_mlflow_models_serve_answers_a_digit(champion, mini):
    workdir, uri = champion
    (_, _), (x_test, y_test) = load_idx_folder(mini)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/mnist-exp@champion")
    local = np.asarray(model.predict(x_test[:50].astype(np.float32))).argmax(axis=1)
    index = int(np.flatnonzero(local == y_test[:50])[0])  # a digit the champion gets right

    with serving([sys.executable, "-m", "mlflow", "models", "serve",
                  "-m", "models:/mnist-exp@champion", "--env-manager", "local"],
                 ready="/ping", cwd=workdir, env={"MLFLOW_TRACKING_URI": uri}) as url:
        body = json.dumps({"inputs": [x_test[index].astype(np.float32).tolist()]}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
    probabilities = np.asarray(answer["predictions"])
    assert probabilities.shape == (1, 10)
    assert probabilities.argmax() == y_test[index]


def test_predict_accepts_the_champion_alias(champion):
    workdir, uri = champion
    result = run_module("mnist_exp.predict", "models:/mnist-exp@champion", "0", "1",
                        cwd=workdir, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.split()[0] for line in result.stdout.strip().splitlines()] == [
        "test[0]", "test[1]"]
