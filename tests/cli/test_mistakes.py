"""Mistakes that show only once the data, the machine or the tracking store is known: one
line each, a non-zero exit, nothing left behind, and never a meaningless result."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from helpers import TINY, compose_config, own_lines, run_module
from mnist_exp.config.preflight import check_fits_data, parameter_count
from mnist_exp.config.schema import parse_config
from mnist_exp.data.load import load_idx_folder, load_npz
from mnist_exp.errors import DataError, RequestError

# (override, what the one line must say); {tmp} is the test's folder.
BEFORE_ANY_WORK = [
    ("tracking.uri=foo://x", "unknown scheme foo://"),
    ("tracking.uri=postgresql+pg8000://alice:hunter2@127.0.0.1/db", "pip install pg8000"),
    ("tracking.uri={tmp}/runs", "MLflow 3 retired that file store"),
    ("tracking.uri=sqlite:///{tmp}/missing/mlflow.db", "missing does not exist"),
    ("model.hidden_units=[100000000]", "79,500,000,010 parameters"),
    ("hydra.run.dir={tmp}/a-file/run", "cannot write there (Not a directory)"),
    ("trainer.epochs=[1", "cannot read the override 'trainer.epochs=[1'"),
]


@pytest.mark.parametrize(("override", "message"), BEFORE_ANY_WORK,
                         ids=[o.split("=")[0] + ":" + m[:20] for o, m in BEFORE_ANY_WORK])
def test_a_store_machine_or_folder_that_cannot_work_costs_one_line(tmp_path, override, message):
    (tmp_path / "a-file").write_text("not a folder")
    result = run_module("mnist_exp.run", "data=mnist_sample",
                        override.format(tmp=tmp_path), cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    [line] = own_lines(result.stderr)
    assert line.startswith("mnist-exp: error: ") and message in line
    assert "hunter2" not in line
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_batch_larger_than_the_training_split_stops_before_any_run(tmp_path):
    result = run_module("mnist_exp.run", "data=mnist_sample", "trainer.batch_size=100000",
                        cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = own_lines(result.stderr)
    assert "trainer.batch_size=100000 is larger than the 6400 training samples" in line
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_an_unexpected_error_is_one_line_with_the_traceback_in_the_log(tmp_path):
    (tmp_path / "mlruns").write_text("a file where the artifact folder should be")
    args = ("data=mnist_sample", *TINY, "hydra.run.dir=out")
    result = run_module("mnist_exp.run", *args, cwd=tmp_path)
    assert result.returncode == 1
    [line] = own_lines(result.stderr)
    assert "unexpected" in line and "HYDRA_FULL_ERROR=1" in line
    assert "Traceback" in (tmp_path / "out" / "run.log").read_text()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sample").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["error"]

    debug = run_module("mnist_exp.run", *args, cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


@pytest.fixture(scope="module")
def digits(mini):
    (x_train, y_train), (x_test, y_test) = load_idx_folder(mini)
    return x_train[:600], y_train[:600], x_test[:300], y_test[:300]


def _npz(tmp_path, digits, x=None, y=None):
    x_train, y_train, x_test, y_test = digits
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x_train if x is None else x, y_train=y_train if y is None else y,
             x_test=x_test, y_test=y_test)
    return path


UNDERSTOOD = {  # what people save as MNIST, read back as the same digits
    "floats in [0, 1]": lambda x, y: (x / 255.0, y),
    "float32 in [0, 1]": lambda x, y: ((x / 255).astype(np.float32), y),
    "whole floats in [0, 255]": lambda x, y: (x.astype(np.float64), y),
    "int64 pixels": lambda x, y: (x.astype(np.int64), y),
    "flattened (N, 784)": lambda x, y: (x.reshape(len(x), -1), y),
    "channel axis (N, 28, 28, 1)": lambda x, y: (x[..., None], y),
    "one-hot labels": lambda x, y: (x, np.eye(10)[y]),
    "float labels": lambda x, y: (x, y.astype(np.float32)),
}


@pytest.mark.parametrize("form", list(UNDERSTOOD))
def test_common_forms_of_saved_images_are_understood(tmp_path, digits, form):
    x, y = UNDERSTOOD[form](digits[0], digits[1])
    (x_train, y_train), _ = load_npz(_npz(tmp_path, digits, x, y))
    assert x_train.dtype == np.uint8 and y_train.dtype == np.uint8
    np.testing.assert_array_equal(x_train, digits[0])
    np.testing.assert_array_equal(y_train, digits[1])


REFUSED = {  # (images, labels) from the real ones -> what the line must say
    "NaN pixels": (lambda x, y: (np.where(x > 200, np.nan, x / 255), y), "NaN"),
    "standardised pixels": (lambda x, y: ((x - x.mean()) / x.std(), y), "standardised?"),
    "pixels above 255": (lambda x, y: (x.astype(np.int32) * 4, y), "to 1020; expected 0-255"),
    "fractional 0-255 floats": (lambda x, y: (x * 0.7 + 0.3, y), "not whole numbers"),
    "text pixels": (lambda x, y: (x.astype(str), y), "images of type <U3"),
    "negative labels": (lambda x, y: (x, y.astype(np.int64) - 1), "labels from -1 to 8"),
    "labels above 9": (lambda x, y: (x, y.astype(np.int64) + 1), "labels from 1 to 10"),
    "fractional labels": (lambda x, y: (x, y + 0.5), "not whole numbers"),
    "32x32 images": (lambda x, y: (np.zeros((len(x), 32, 32), np.uint8), y), "(600, 32, 32)"),
    "labels of two columns": (lambda x, y: (x, np.stack([y, y], 1)), "labels of shape (600, 2)"),
}


@pytest.mark.parametrize("form", list(REFUSED))
def test_data_that_is_not_what_it_claims_is_refused_naming_file_and_array(tmp_path, digits,
                                                                          form):
    change, message = REFUSED[form]
    path = _npz(tmp_path, digits, *change(digits[0], digits[1]))
    with pytest.raises(DataError) as caught:
        load_npz(path)
    assert str(path) in str(caught.value) and "_train" in str(caught.value)
    assert message in str(caught.value)


@pytest.mark.slow
def test_float_images_in_0_1_train_to_a_real_accuracy_end_to_end(tmp_path, digits):
    path = _npz(tmp_path, digits, digits[0] / 255.0)
    result = run_module("mnist_exp.run", f"data.path={path}", "trainer.epochs=3",
                        "tracking.log_model=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "float pixels in [0, 1]; scaled back to 0-255" in result.stdout
    accuracy = float(result.stdout.split("Test accuracy ")[1].split()[0])
    assert accuracy > 0.6  # cast to bytes instead, every pixel is 0 or 1: about 0.12


@pytest.mark.parametrize(("labels", "images", "message"), [
    (np.zeros(500, np.uint8), None, "only class [0]"),
    (None, np.zeros((500, 28, 28), np.uint8), "the same flat value 0"),
])
def test_data_that_cannot_teach_anything_is_refused(labels, images, message):
    config = parse_config(compose_config())
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 500) if labels is None else labels
    x = rng.integers(0, 256, (500, 28, 28)) if images is None else images
    with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_fits_data(config, y, y[:100], x)


def test_the_parameter_estimate_matches_keras():
    from mnist_exp.training.model import build_model

    counts = set()
    for overrides in [(), ("model=cnn",), ("model.batch_norm=true",)]:
        config = parse_config(compose_config(*overrides))
        model = build_model(config.model, num_classes=10)
        assert parameter_count(config) == model.count_params(), overrides
        # the network the config names: raw 28x28 pixels in, one probability per class out
        assert (model.name, model.input_shape, model.output_shape) == (
            config.model.name, (None, 28, 28), (None, 10)), overrides
        counts.add(model.count_params())
    assert len(counts) == 3  # three different networks, not one estimated three times
