"""Scoring a model on labelled images: loss, accuracy, per-class report, confusion matrix
(training's once-only test evaluation, and python -m mnist_exp.evaluate's)."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

from mnist_exp.data.load import Dataset


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    labels: np.ndarray
    probabilities: np.ndarray
    confusion: np.ndarray
    report: dict
    report_text: str

    def metrics(self, prefix: str = "test") -> dict[str, float]:
        """Loss, accuracy, macro averages and per-class precision/recall/F1 (by class index)."""
        out = {f"{prefix}_loss": self.loss, f"{prefix}_accuracy": self.accuracy}
        macro = self.report["macro avg"]
        for stat in ("precision", "recall", "f1-score"):
            name = stat.removesuffix("-score")
            out[f"{prefix}_{name}_macro"] = macro[stat]
            for index, class_name in enumerate(self.report["class_names"]):
                out[f"{prefix}_{name}_{index}"] = self.report[class_name][stat]
        return out


def predict_probabilities(model: keras.Model, images: np.ndarray,
                          batch_size: int = 1024) -> np.ndarray:
    """The model called directly on large batches: for a few thousand images this beats
    model.predict, which would first trace and XLA-compile a predict function."""
    return np.concatenate([keras.ops.convert_to_numpy(model(images[i: i + batch_size],
                                                            training=False))
                           for i in range(0, len(images), batch_size)])


def score(
    model: keras.Model, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...],
    batch_size: int = 1024,
) -> Evaluation:
    """One pass over the images; loss (Keras' own function), accuracy, per-class report and
    confusion matrix computed from its predictions."""
    probabilities = predict_probabilities(model, images, batch_size)
    predicted = probabilities.argmax(axis=1)
    loss = np.mean(keras.losses.sparse_categorical_crossentropy(labels, probabilities))
    accuracy = np.mean(predicted == labels)
    indices = list(range(len(class_names)))
    report = classification_report(labels, predicted, labels=indices, target_names=class_names,
                                   output_dict=True, zero_division=0)
    report["class_names"] = list(class_names)
    text = classification_report(labels, predicted, labels=indices, target_names=class_names,
                                 digits=4, zero_division=0)
    return Evaluation(
        loss=float(loss),
        accuracy=float(accuracy),
        labels=np.asarray(labels),
        probabilities=probabilities,
        confusion=confusion_matrix(labels, predicted, labels=indices),
        report=report,
        report_text=text,
    )


def score_held_out(model: keras.Model, data: Dataset,
                   batch_size: int = 1024) -> tuple[Evaluation, Evaluation]:
    """The trained model's validation and test scores. The validation score (with early
    stopping, the best epoch's, not the last's) is what sweeps optimise; the test set is
    touched once, after it."""
    val = score(model, data.x_val, data.y_val, data.class_names, batch_size)
    return val, score(model, data.x_test, data.y_test, data.class_names, batch_size)
