"""Predict digits with a logged model: `python -m mnist_exp.predict MODEL INPUT [INPUT ...]`.

MODEL is a run id (its model is used), a logged-model id (m-...), or any MLflow model
URI (runs:/..., models:/..., a local folder). Each INPUT is an image file (PNG, JPEG,
GIF, BMP; any size, light or dark background) or an index into the test set of the
dataset the run was trained on. Prints the predicted class and its probability for
each, and with --figure saves them as a grid.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_exp.cli.native_log import quiet_native_startup
from mnist_exp.cli.process_exit import exit_after
from mnist_exp.errors import UserError, exit_with
from mnist_exp.tracking.model_refs import load_model


@dataclass(frozen=True)
class Predictions:
    names: list[str]
    images: np.ndarray  # (N, 28, 28) model inputs
    probabilities: np.ndarray  # (N, classes)
    true_labels: list[int | None]  # known for test-set inputs
    class_names: tuple[str, ...]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_exp.predict", description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run id, logged-model id (m-...), or model URI")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image file, or index into the test set")
    parser.add_argument("--figure", type=Path, help="save a figure of the predictions here")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db")
    parser.add_argument("--dataset", choices=["mnist", "fashion_mnist"], default=None,
                        help="for test-set indices; default: the run's data.name")
    parser.add_argument("--data-path", default=None,
                        help="for test-set indices; default: the run's data.path")
    return parser.parse_args(argv)


def predict(model_ref: str, inputs: list[str], dataset: str | None = None,
            data_path: str | None = None) -> Predictions:
    """Load the model, bring every input to the model's form, predict."""
    import keras
    import mlflow

    from mnist_exp.data.images import load_image
    from mnist_exp.data.load import CLASS_NAMES, load_arrays

    keras.utils.disable_interactive_logging()  # no progress bar between the answers
    model, _ = load_model(model_ref, mlflow.pyfunc.load_model)
    params = run_params(model.metadata.run_id)
    dataset = dataset or params.get("data.name", "mnist")
    if data_path is None and params.get("data.path") not in (None, "None"):
        data_path = params["data.path"]

    images, names, truths = [], [], []
    test_set = None
    for item in inputs:
        if item.isdigit() and not Path(item).exists():
            if test_set is None:
                _, test_set, _ = load_arrays(dataset, data_path)
            index = int(item)
            if index >= len(test_set[1]):
                raise UserError(f"test index {index} out of range; the {dataset} test set has "
                                f"{len(test_set[1])} images")
            images.append(test_set[0][index].astype(np.float32))
            names.append(f"test[{index}]")
            truths.append(int(test_set[1][index]))
        else:
            images.append(load_image(Path(item)))
            names.append(item)
            truths.append(None)
    batch = np.stack(images).astype(np.float32)
    probabilities = np.asarray(model.predict(batch))
    return Predictions(names, batch, probabilities, truths, CLASS_NAMES[dataset])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr is ours
    try:
        with quiet_native_startup():
            import tensorflow  # noqa: F401
        import mlflow

        from mnist_exp.tracking.store import resolve_tracking_uri

        mlflow.set_tracking_uri(resolve_tracking_uri(args.tracking_uri, Path.cwd()))
        result = predict(args.model, args.inputs, args.dataset, args.data_path)
    except UserError as e:
        exit_with(e)
    names = result.class_names
    width = max(len(name) for name in result.names)
    for name, probs, truth in zip(result.names, result.probabilities, result.true_labels,
                                  strict=True):
        known = "" if truth is None else f"  (true: {names[truth]})"
        print(f"{name:<{width}}  {names[probs.argmax()]}  p={probs.max():.3f}{known}")
    if args.figure:
        from mnist_exp.evaluation.figures import plot_predictions

        figure = plot_predictions(result.images, result.true_labels, result.probabilities,
                                  names, titles=result.names,
                                  columns=min(8, len(result.names)))
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.figure, dpi=120)
        print(f"figure: {args.figure}")
    return 0


def run_params(run_id: str | None) -> dict[str, str]:
    """The params of the run that logged a model ({} if unknown or unreachable)."""
    if not run_id:
        return {}
    import mlflow

    try:
        return mlflow.MlflowClient().get_run(run_id).data.params
    except Exception:  # a model copied out of its store still predicts; defaults apply
        return {}


def cli() -> None:
    """The `mnist-exp-predict` command: main, then the quick exit of process_exit.py."""
    exit_after(main)


if __name__ == "__main__":
    cli()
