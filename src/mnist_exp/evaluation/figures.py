"""Figures of a run: learning curves, confusion matrix, sample predictions.

Built on matplotlib's object API (no pyplot state), so they are safe in parallel jobs
and need no display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn.metrics import ConfusionMatrixDisplay

if TYPE_CHECKING:
    from mnist_exp.evaluation.scoring import Evaluation


def plot_curves(history: dict[str, list[float]]) -> Figure:
    """Training and validation loss and accuracy per epoch, side by side."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        epochs = np.arange(1, len(history[metric]) + 1)
        ax.plot(epochs, history[metric], marker="o", markersize=3, label="training")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", markersize=3,
                    label="validation")
        ax.set(title=metric.capitalize(), xlabel="epoch", ylabel=metric)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def plot_confusion_matrix(confusion: np.ndarray, class_names: tuple[str, ...]) -> Figure:
    """Counts of test images by true (rows) and predicted (columns) class."""
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
    long_names = max(len(name) for name in class_names) > 2
    ConfusionMatrixDisplay(confusion, display_labels=list(class_names)).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d",
        xticks_rotation=45 if long_names else "horizontal")
    accuracy = np.trace(confusion) / confusion.sum()
    ax.set_title(f"Test set confusion matrix (accuracy {accuracy:.2%})")
    return fig


def plot_predictions(
    images: np.ndarray,
    labels: Sequence[int | None] | None,
    probabilities: np.ndarray,
    class_names: tuple[str, ...],
    titles: list[str] | None = None,
    columns: int = 8,
) -> Figure:
    """A grid of images with predicted class and probability; mistakes framed in red. A
    label of None (or labels=None) means the truth is unknown.

    Drawn as one mosaic in a single axes: an axes per image costs ten times as much.
    """
    count, (height, width) = len(images), images.shape[1:3]
    rows = math.ceil(count / columns)
    cell_h, cell_w = height + 14, width + 4  # room for two lines of caption above each tile
    mosaic = np.zeros((rows * cell_h, columns * cell_w), np.float32)
    fig = Figure(figsize=(1.5 * columns, 1.75 * rows), layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    predicted = probabilities.argmax(axis=1)
    for i in range(count):
        top, left = (i // columns) * cell_h + 12, (i % columns) * cell_w + 2
        mosaic[top: top + height, left: left + width] = images[i]
        truth = None if labels is None else labels[i]
        wrong = truth is not None and predicted[i] != truth
        head = titles[i] if titles else ""
        if truth is not None:
            head = f"{head} true {class_names[truth]}".strip()
        guess = f"{'✗ ' if wrong else ''}{class_names[predicted[i]]} " \
                f"({probabilities[i, predicted[i]]:.0%})"
        ax.text(left + width / 2, top - 2, f"{head}\n{guess}", ha="center", va="bottom",
                fontsize=7, color="crimson" if wrong else "black")
        if wrong:
            ax.add_patch(Rectangle((left - 1.5, top - 1.5), width + 2, height + 2, fill=False,
                                   edgecolor="crimson", linewidth=1.5))
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    return fig


def pick_samples(labels: np.ndarray, probabilities: np.ndarray, count: int = 32,
                 mistakes: int = 8) -> np.ndarray:
    """The first test images, with the most confident mistakes put last so some always show."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]])][:mistakes]
    right = np.setdiff1d(np.arange(len(labels)), wrong)[: count - len(wrong)]
    return np.concatenate([right, wrong]).astype(int)


def test_figures(test: Evaluation, images: np.ndarray,
                 class_names: tuple[str, ...]) -> dict[str, Figure]:
    """The confusion matrix and a grid of sample predictions (mistakes in red) of a test
    evaluation of `images`, by artifact name."""
    picked = pick_samples(test.labels, test.probabilities)
    return {
        "confusion_matrix.png": plot_confusion_matrix(test.confusion, class_names),
        "sample_predictions.png": plot_predictions(
            images[picked], test.labels[picked], test.probabilities[picked], class_names),
    }


def run_figures(history: dict[str, list[float]], test: Evaluation,
                images: np.ndarray, class_names: tuple[str, ...]) -> dict[str, Figure]:
    """A training run's figures: its learning curves and its test figures, by artifact name."""
    return {"curves.png": plot_curves(history), **test_figures(test, images, class_names)}
