"""python -m mnist_exp.evaluate: data.path alone scores that folder under the training run's
dataset; a mistake in its overrides is the one line a run's would be, before TensorFlow is
imported and before Hydra makes a folder."""

from __future__ import annotations

import shutil

import mlflow
import numpy as np
import pytest

from helpers import own_lines, run_module
from mnist_exp.data.load import load_idx_folder

MISTAKES = [
    ([], "model_uri: missing; name the model to evaluate: model_uri=<a run id | a logged-model "
         "id m-... | runs:/<run id>/model | models:/<name>@<alias>>"),
    (["model_uri=abc", "data=nope"],
     "data=nope: no such option; allowed: fashion_mnist, mnist, mnist_sample"),
    (["model_uri=abc", "data.path={tmp}/nope"],
     "data.path: got '{tmp}/nope'; allowed: null or an existing folder of IDX files or a .npz "
     "file"),
    (["model_uri=abc", "data.max_tests=5"],
     "data.max_tests: unknown key; allowed keys here are name, path, validation_split, "
     "normalization, verify_checksums, max_train_samples, max_test_samples, mirror_invariant"),
]


@pytest.mark.parametrize(("overrides", "line"), MISTAKES, ids=[m[1][:24] for m in MISTAKES])
def test_a_mistake_is_one_line_before_anything_starts(tmp_path, overrides, line):
    result = run_module("mnist_exp.evaluate", *(o.format(tmp=tmp_path) for o in overrides),
                        cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert own_lines(result.stderr) == [f"mnist-exp: error: {line.format(tmp=tmp_path)}"]
    assert list(tmp_path.iterdir()) == []  # no outputs/, no store


def test_data_path_alone_scores_that_folder_as_the_training_runs_dataset(tiny_run, run, mini,
                                                                          tmp_path):
    """The tiny run trained on data=mnist_sample (its shipped folder, 300 test images drawn);
    data.path=<an .npz of 120 of its test digits> scores those, still as mnist_sample."""
    (x_train, y_train), (x_test, y_test) = load_idx_folder(mini)
    folder = tmp_path / "digits.npz"
    np.savez(folder, x_train=x_train[:600], y_train=y_train[:600], x_test=x_test[:120],
             y_test=y_test[:120])
    shutil.copy(tiny_run.workdir / "mlflow.db", tmp_path / "mlflow.db")
    result = run_module("mnist_exp.evaluate", f"model_uri={run.info.run_id}",
                        f"data.path={folder}", "hydra.run.dir=out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 120 mnist_sample test images" in result.stdout
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [evaluation] = client.search_runs([run.info.experiment_id],
                                      "tags.`mnist_exp.kind` = 'evaluation'")
    params = evaluation.data.params
    assert params["data.path"] == str(folder) and params["data.name"] == "mnist_sample"
    assert params["data.max_test_samples"] == "300"  # the training run's, kept
