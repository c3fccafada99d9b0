"""`python -m mnist_exp.predict` on real images made from test digits."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import tensorflow as tf

from helpers import own_lines, run_module
from mnist_exp.data.images import load_image, to_mnist_frame
from mnist_exp.data.load import load_idx_folder


@pytest.fixture(scope="module")
def digits(mini):
    (_, _), (x_test, y_test) = load_idx_folder(mini)
    return x_test, y_test


def write_png(path, pixels):
    array = np.asarray(pixels, dtype=np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    path.write_bytes(tf.io.encode_png(array).numpy())
    return path


def test_a_28x28_png_is_the_digit_itself(tmp_path, digits):
    x_test, _ = digits
    png = write_png(tmp_path / "digit.png", x_test[0])
    np.testing.assert_array_equal(load_image(png), x_test[0].astype(np.float32))


def test_light_background_is_inverted(tmp_path, digits):
    x_test, _ = digits
    png = write_png(tmp_path / "paper.png", 255 - x_test[1])
    np.testing.assert_array_equal(load_image(png), x_test[1].astype(np.float32))


def test_a_large_photo_style_image_is_reframed_like_mnist(tmp_path, digits):
    x_test, _ = digits
    big = np.kron(255 - x_test[2].astype(np.float32), np.ones((9, 9)))  # 252x252, on paper
    canvas = np.full((300, 400), 255.0)
    canvas[20:272, 100:352] = big
    rgb = np.repeat(canvas[..., None], 3, axis=2)
    frame = load_image(write_png(tmp_path / "photo.png", rgb))
    assert frame.shape == (28, 28)
    correlation = np.corrcoef(frame.ravel(), x_test[2].ravel())[0, 1]
    assert correlation > 0.8


def test_a_blank_image_gives_a_blank_frame():
    assert not to_mnist_frame(np.full((50, 40), 255.0)).any()


def test_predict_cli_on_a_png_and_a_test_index(tiny_run, tmp_path, digits, mini):
    x_test, y_test = digits
    client = mlflow.MlflowClient(tiny_run.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sample").experiment_id])
    mlflow.set_tracking_uri(tiny_run.tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    expected = np.asarray(model.predict(x_test[:2].astype(np.float32)))

    png = write_png(tmp_path / "digit.png", x_test[0])
    figure = tmp_path / "figures" / "predictions.png"
    result = run_module("mnist_exp.predict", run.info.run_id, str(png), "1",
                        "--figure", str(figure), cwd=tiny_run.workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:2] == [str(png), str(expected[0].argmax())]
    assert f"p={expected[0].max():.3f}" in lines[0]
    assert lines[1].split()[:2] == ["test[1]", str(expected[1].argmax())]
    assert f"(true: {y_test[1]})" in lines[1]
    assert figure.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("model", "inputs", "message"), [
    ("0" * 32, ["1"], "cannot load model"),
    (None, ["not-an-image.txt"], "not a readable PNG, JPEG, GIF or BMP image"),
    (None, ["99999"], "out of range"),
])
def test_predict_cli_errors_are_one_line(tiny_run, tmp_path, model, inputs, message):
    client = mlflow.MlflowClient(tiny_run.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sample").experiment_id])
    (tmp_path / "not-an-image.txt").write_text("hello")
    args = [model or run.info.run_id, *[str(tmp_path / i) if "." in i else i for i in inputs]]
    result = run_module("mnist_exp.predict", *args, cwd=tiny_run.workdir)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(own_lines(result.stderr)) == 1, result.stderr
