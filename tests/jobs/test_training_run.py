"""The whole runner on tiny real data, read back from the tracking store it wrote."""

from __future__ import annotations

import subprocess
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

import mnist_exp
from helpers import TINY, compose_config
from mnist_exp.config.schema import parse_config
from mnist_exp.data.load import load_idx_folder
from mnist_exp.jobs.training import RunContext, run_experiment
from mnist_exp.training.model import build_optimizer


def test_default_store_is_mlflow_db_with_artifacts_in_mlruns(tiny_run, client):
    assert (tiny_run.workdir / "mlflow.db").is_file()
    experiment = client.get_experiment_by_name("mnist_sample")
    assert experiment.artifact_location == (tiny_run.workdir / "mlruns").as_uri()
    assert not (tiny_run.workdir / "outputs" / "runs").exists()  # hydra.run.dir redirected
    assert not list(tiny_run.workdir.glob("outputs/checkpoints/*"))  # removed once finished


def test_run_finished_with_the_whole_config_as_params(run):
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["trainer.epochs"] == "2"
    assert params["model.hidden_units"] == "[128, 32]"
    assert params["optimizer.name"] == "adam"
    assert params["data.max_train_samples"] == "600"
    assert params["trainer.early_stopping.patience"] == "3"


def test_per_epoch_history(client, run):
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert [m.step for m in history] == [0, 1], metric
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
    assert losses[1] < losses[0]


def test_final_test_metrics(run):
    metrics = run.data.metrics
    assert 0.6 < metrics["test_accuracy"] <= 1.0  # 2 epochs on 480 digits learn something
    assert metrics["test_loss"] > 0
    for stat in ("precision", "recall", "f1"):
        per_class = [metrics[f"test_{stat}_{i}"] for i in range(10)]
        assert all(0 <= v <= 1 for v in per_class)
        assert metrics[f"test_{stat}_macro"] == pytest.approx(np.mean(per_class), abs=1e-6)
    assert 0 < metrics["final_val_accuracy"] <= 1


def test_summary_names_accuracy_run_and_how_to_browse(tiny_run, run):
    out = tiny_run.process.stdout
    assert f"Test accuracy {run.data.metrics['test_accuracy']:.4f}" in out
    assert run.info.run_id in out
    assert "mlflow ui" in out


def test_artifacts(client, run):
    def walk(path=None):
        for item in client.list_artifacts(run.info.run_id, path):
            yield from walk(item.path) if item.is_dir else [item.path]

    artifacts = set(walk())
    assert {"curves.png", "confusion_matrix.png", "sample_predictions.png",
            "classification_report.txt", "classification_report.json", "config.yaml",
            "hydra/config.yaml", "hydra/overrides.yaml", "model_summary.txt"} <= artifacts
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="curves.png")
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/classification_report.txt")
    assert "precision" in report and "macro avg" in report


def test_model_loads_and_predicts_like_keras(client, run, mini):
    [output] = run.outputs.model_outputs
    uri = f"models:/{output.model_id}"
    (_, _), (x_test, _) = load_idx_folder(mini)
    images = x_test[:64].astype(np.float32)
    by_pyfunc = np.asarray(mlflow.pyfunc.load_model(uri).predict(images))
    by_keras = mlflow.keras.load_model(uri).predict(images, verbose=0)
    np.testing.assert_allclose(by_pyfunc, by_keras, rtol=1e-6)
    assert by_pyfunc.shape == (64, 10)
    np.testing.assert_allclose(by_pyfunc.sum(axis=1), 1, rtol=1e-5)
    model = mlflow.models.get_model_info(uri)
    assert model.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 28, 28)
    assert model.saved_input_example_info is not None
    by_run_uri = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(images)
    np.testing.assert_allclose(np.asarray(by_run_uri), by_pyfunc, rtol=1e-6)


def test_datasets_and_tags(run):
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"}
    assert all(d.digest for d in inputs.values())
    assert '"features_shape": [480, 28, 28]' in inputs["training"].profile
    assert '"features_shape": [300, 28, 28]' in inputs["test"].profile
    tags = run.data.tags
    assert "trainer.epochs=2" in tags["overrides"]
    assert tags["mnist_exp.version"]
    state = git_state_of_the_package()
    if state is None:  # not a git checkout: the run claims no commit
        assert "git.dirty" not in tags and "mlflow.source.git.commit" not in tags
    else:
        assert (tags["mlflow.source.git.commit"], tags["git.dirty"]) == state


def git_state_of_the_package() -> tuple[str, str] | None:
    """HEAD and whether tracked files differ from it ("true"/"false", as the tags say it),
    asked of git in the folder the package is imported from; None outside a checkout (an
    installed wheel, an unpacked archive) or without git. (Files edited between the run
    and this test would change the answer: the suite expects a tree nobody edits.)"""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=Path(mnist_exp.__file__).parent,
                              capture_output=True, text=True, timeout=30)
    try:
        head = git("rev-parse", "HEAD")
    except FileNotFoundError:
        return None
    if head.returncode != 0:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    assert status.returncode == 0, status.stderr
    return head.stdout.strip(), str(bool(status.stdout.strip())).lower()


def test_same_seed_same_result_in_process(mini, tmp_path):
    # The default fast path (XLA on CPU) repeats exactly; trainer.deterministic=true would
    # also switch TensorFlow's op determinism on for the rest of this process.
    def once(tag):
        config = parse_config(compose_config(
            f"data.path={mini}", *TINY,
            "tracking.log_model=false", f"tracking.uri=sqlite:///{tmp_path / 'db.sqlite'}",
            f"tracking.run_name={tag}"))
        return run_experiment(config, RunContext(launch_dir=tmp_path, progress_bar=False))

    first, second = once("a"), once("b")
    assert first.test_accuracy == second.test_accuracy
    assert first.val_accuracy == second.val_accuracy
    assert first.run_id != second.run_id and first.model_uri is None


def test_adamw_trains_and_is_recorded_with_its_weight_decay(mini, tmp_path):
    """An optimizer added by its schema class and YAML alone: composed, built as Keras'
    AdamW (model.py has no list of optimizers), trained, and recorded."""
    uri = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = parse_config(compose_config(
        f"data.path={mini}", *TINY, "optimizer=adamw", "optimizer.weight_decay=0.01",
        "tracking.log_model=false", f"tracking.uri={uri}"))
    result = run_experiment(config, RunContext(launch_dir=tmp_path, progress_bar=False))
    run = mlflow.MlflowClient(uri).get_run(result.run_id)
    params = run.data.params
    assert (params["optimizer.name"], params["optimizer.weight_decay"]) == ("adamw", "0.01")
    built = build_optimizer(config.optimizer)  # what the run trained with
    assert type(built) is keras.optimizers.AdamW
    assert built.weight_decay == pytest.approx(0.01)
    assert not [key for key in params if key.startswith("optimizer_")]  # no echo of Keras'
    losses = [m.value for m in mlflow.MlflowClient(uri).get_metric_history(result.run_id,
                                                                           "loss")]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert result.test_accuracy > 0.6


def test_the_schedule_starts_at_the_configured_rate_and_each_param_is_logged_once(
        mini, tmp_path):
    """The cosine schedule starts from optimizer.learning_rate as configured (not as read
    back from Keras), and the run records each setting under one name only."""
    uri = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = parse_config(compose_config(
        f"data.path={mini}", *TINY, "optimizer.learning_rate=0.003",
        "trainer.lr_schedule.name=cosine", "trainer.lr_schedule.min_lr=0.0001",
        "tracking.log_model=false", f"tracking.uri={uri}"))
    result = run_experiment(config, RunContext(launch_dir=tmp_path, progress_bar=False))
    client = mlflow.MlflowClient(uri)
    rates = [m.value for m in client.get_metric_history(result.run_id, "learning_rate")]
    assert rates == pytest.approx([0.003, 0.0001], rel=1e-5)
    params = client.get_run(result.run_id).data.params
    assert float(params["optimizer.learning_rate"]) == pytest.approx(rates[0], rel=1e-6)
    plain = {}
    for key, value in params.items():
        plain.setdefault((key.replace("optimizer_", "optimizer."), value), []).append(key)
    assert [keys for keys in plain.values() if len(keys) > 1] == []


def test_a_run_that_raises_is_marked_failed_with_the_error(tmp_path):
    from mnist_exp.tracking import runs as tracking
    from mnist_exp.tracking.store import prepare_experiment

    uri = f"sqlite:///{tmp_path / 'db.sqlite'}"
    experiment_id = prepare_experiment(uri, "failing")
    from mnist_exp.config.schema import TrackingConfig

    with pytest.raises(RuntimeError), tracking.tracked_run(
            uri, experiment_id, "boom", {}, tmp_path / "record", TrackingConfig()) as tracker:
        raise RuntimeError("disk full")
    run = mlflow.MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: disk full"


def test_colliding_writes_are_retried_and_other_errors_are_not():
    from mlflow.exceptions import MlflowException

    from mnist_exp.tracking.upload import retrying as _retrying

    calls = []

    def collides_twice():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets")
        return "linked"

    assert _retrying(collides_twice) == "linked" and len(calls) == 3

    def fails_otherwise():
        calls.append(1)
        raise MlflowException("no such run")

    calls.clear()
    with pytest.raises(MlflowException, match="no such run"):
        _retrying(fails_otherwise)
    assert len(calls) == 1
