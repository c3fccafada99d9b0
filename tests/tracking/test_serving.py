"""The model registry and serving: the best job of a sweep becomes models:/<name>@champion
(and stays it when a later sweep's best is worse), which `mlflow models serve` answers over
REST and `mnist_exp.predict` accepts."""

from __future__ import annotations

import json
import sys
import urllib.request

import mlflow
import numpy as np
import pytest

from helpers import TINY, run_module, serving, sweep_runs
from mnist_exp.data.load import load_idx_folder

pytestmark = pytest.mark.slow  # two sweeps, then a model server: ~60 s


@pytest.fixture(scope="module")
def champion(tmp_path_factory, mini):
    """A 2-job sweep that registers its models (the better one becomes the champion), then
    a 1-job sweep whose model learns nothing: registered too, but not the champion."""
    workdir = tmp_path_factory.mktemp("registry")

    def sweep(*args: str) -> str:
        result = run_module("mnist_exp.run", "-m", f"data.path={mini}",
                            "tracking.register_model=true", "tracking.keep_in_sweeps=all",
                            *args, cwd=workdir)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    best = sweep("data.max_train_samples=3000", "trainer.epochs=2",
                 "optimizer.learning_rate=1e-3,1e-4", "hydra.sweep.dir=sweep")
    worse = sweep(*TINY, "optimizer.learning_rate=1e-7", "hydra.sweep.dir=worse")
    return workdir, f"sqlite:///{workdir / 'mlflow.db'}", best, worse


def test_the_best_job_by_validation_is_the_champion_and_a_worse_sweep_leaves_it(champion):
    _, uri, best, worse = champion
    client, parents, _ = sweep_runs(uri)
    [first] = [p for p in parents if p.data.metrics["jobs"] == 2]
    version = client.get_model_version_by_alias("mnist-exp", "champion")
    assert version.run_id == first.data.tags["best_run_id"]
    assert f"models:/mnist-exp@champion is now version {version.version}\n" in best
    assert f"models:/mnist-exp@champion stays version {version.version} " in worse
    assert len(client.search_model_versions("name = 'mnist-exp'")) == 3  # all registered


def test_mlflow_models_serve_answers_a_digit(champion, mini):
    workdir, uri, _, _ = champion
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
    workdir, uri, _, _ = champion
    result = run_module("mnist_exp.predict", "models:/mnist-exp@champion", "0", "1",
                        cwd=workdir, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.split()[0] for line in result.stdout.strip().splitlines()] == [
        "test[0]", "test[1]"]
