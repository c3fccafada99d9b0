"""MLflow 3's model-centred records, read back through MLflow's client: the kept model as a
LoggedModel with its linked metrics, system metrics, tags and note, the experiment's kind,
and `python -m mnist_exp.evaluate` reproducing a training run's test accuracy."""

from __future__ import annotations

import shutil

import mlflow
import pytest

from helpers import SECRET, run_module
from mnist_exp.config.schema import EvaluationConfig
from mnist_exp.tracking.store import EXPERIMENT_KIND, MODEL_TRAINING, prepare_experiment


@pytest.fixture(scope="module")
def model(run):
    [model] = mlflow.search_logged_models([run.info.experiment_id], output_format="list")
    return model


def test_kept_model_carries_its_test_and_validation_metrics(run, model):
    assert model.source_run_id == run.info.run_id
    digests = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
    linked = {(m.key, m.dataset_name): m for m in model.metrics}
    for key, split in [("test_accuracy", "test"), ("test_loss", "test"),
                       ("test_f1_macro", "test"), ("final_val_accuracy", "validation")]:
        metric = linked[key, f"mnist_sample-{split}"]
        assert metric.value == run.data.metrics[key]  # still the run's metric too
        assert metric.model_id == model.model_id and metric.run_id == run.info.run_id
        assert metric.dataset_digest == digests[f"mnist_sample-{split}"]


def test_system_metrics_tags_and_note_are_recorded(run):
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert key in run.data.metrics
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0
    tags = run.data.tags
    assert tags["team"] == "vision"
    assert tags["mlflow.note.content"] == "A tiny smoke run"
    assert tags["mnist_exp.kind"] == "training"


def test_experiments_are_marked_for_the_model_training_view(client, run, tmp_path):
    assert client.get_experiment(run.info.experiment_id).tags[EXPERIMENT_KIND] == MODEL_TRAINING
    uri = f"sqlite:///{tmp_path / 'db.sqlite'}"
    older = mlflow.MlflowClient(uri).create_experiment("older")  # made before we marked them
    assert prepare_experiment(uri, "older") == older
    assert mlflow.MlflowClient(uri).get_experiment(older).tags[EXPERIMENT_KIND] == MODEL_TRAINING


def test_evaluate_reproduces_the_training_runs_test_accuracy(tiny_run, run, model,
                                                           tmp_path):
    """The entry point, by run id, on a copy of the store: the training run's data settings
    and seed draw the same 300 test images, and the score is the same to the last bit."""
    shutil.copy(tiny_run.workdir / 'mlflow.db', tmp_path / "mlflow.db")
    process = run_module("mnist_exp.evaluate", f"model_uri={run.info.run_id}",
                         "hydra.run.dir=hydra_out", cwd=tmp_path,
                         env={"MNIST_EXP_TEST_SECRET": SECRET})
    assert process.returncode == 0, process.stderr[-3000:]
    assert "on 300 mnist_sample test images" in process.stdout
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [evaluation] = client.search_runs([run.info.experiment_id],
                                      "tags.`mnist_exp.kind` = 'evaluation'")
    assert evaluation.info.status == "FINISHED"
    assert evaluation.data.metrics["test_accuracy"] == run.data.metrics["test_accuracy"]
    assert evaluation.data.tags["mnist_exp.model_id"] == model.model_id
    assert evaluation.info.run_id in process.stdout
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert {"confusion_matrix.png", "sample_predictions.png",
            "classification_report.txt"} <= artifacts
    linked = [m for m in client.get_logged_model(model.model_id).metrics
              if m.run_id == evaluation.info.run_id and m.key == "test_accuracy"]
    assert [m.dataset_name for m in linked] == ["mnist_sample-test"]


def test_evaluating_on_another_dataset_says_what_it_measured(tiny_run, run, model, mini,
                                                            tmp_path, caplog):
    """A digit model scored on data named fashion_mnist (here the digits themselves, the
    only images in the checkout): a warning, and the data's own class names."""
    from mnist_exp.jobs.evaluation import run_evaluation

    shutil.copy(tiny_run.workdir / 'mlflow.db', tmp_path / "mlflow.db")
    config = EvaluationConfig.model_validate({
        "model_uri": model.model_id,
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "system_metrics": False},
        "data": {"name": "fashion_mnist", "path": str(mini), "max_test_samples": 100}})
    result = run_evaluation(config)
    assert "trained on mnist_sample; measuring it on fashion_mnist" in caplog.text
    assert result.class_names[0] == "T-shirt/top" and result.test_images == 100
    assert result.model_id == model.model_id
    evaluation = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(
        result.run_id)
    assert evaluation.data.params["data.name"] == "fashion_mnist"
    assert evaluation.info.experiment_id != run.info.experiment_id  # the data's experiment


@pytest.mark.parametrize("model_uri", ["models:/mnist-exp@champion", "0" * 32])
def test_an_unknown_model_is_one_line_and_exit_2(model_uri, tmp_path):
    process = run_module("mnist_exp.evaluate", f"model_uri={model_uri}",
                         "hydra.run.dir=hydra_out", cwd=tmp_path)
    assert process.returncode == 2, process.stderr[-3000:]
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mnist-exp: error: cannot load model")
    store = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert store.search_runs([e.experiment_id for e in store.search_experiments()]) == []



def test_checkpoints_are_logged_models_with_their_validation_metrics(tmp_path):
    result = run_module("mnist_exp.run", "data=mnist_sample", "data.max_train_samples=600",
                        "data.max_test_samples=300", "trainer.epochs=3",
                        "tracking.checkpoint_every=2", "tracking.system_metrics=false",
                        "hydra.run.dir=out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sample").experiment_id])
    models = {m.name: m for m in client.search_logged_models([run.info.experiment_id])}
    assert set(models) == {"model", "checkpoint-epoch-2"}
    checkpoint = models["checkpoint-epoch-2"]
    assert checkpoint.source_run_id == run.info.run_id
    linked = {m.key: m for m in checkpoint.metrics}
    assert set(linked) == {"val_accuracy", "val_loss"}
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                  "val_accuracy")}
    assert sorted(history) == [0, 1, 2]  # each epoch once: the checkpoint's are linked
    assert linked["val_accuracy"].step == 1 and linked["val_accuracy"].value == history[1]
    assert linked["val_accuracy"].dataset_name == "mnist_sample-validation"
    steps = {o.model_id: o.step for o in run.outputs.model_outputs}
    assert steps[checkpoint.model_id] == 1
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert mlflow.keras.load_model(f"models:/{checkpoint.model_id}").count_params() > 0
