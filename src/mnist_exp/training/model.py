"""The network and its optimizer, built from the config.

Normalisation is the model's first layer, so the logged model takes raw pixels
(0-255) and whoever serves or reuses it cannot forget to scale them.
"""

from __future__ import annotations

import keras
import numpy as np

from mnist_exp.config.schema import CNNConfig, MLPConfig, ModelConfig, OptimizerConfig
from mnist_exp.data.load import IMAGE_SHAPE


def build_model(
    cfg: ModelConfig,
    *,
    num_classes: int,
    normalization: str = "rescale",
    train_images: np.ndarray | None = None,
) -> keras.Model:
    """Input (28, 28) raw pixels -> normalise -> [conv blocks] -> Flatten -> hidden Dense
    layers -> softmax over the classes.

    `train_images` supplies the pixel mean and variance for normalization="standardize".
    """
    layers: list[keras.layers.Layer] = _normalization(normalization, train_images)
    if isinstance(cfg, CNNConfig):
        layers.append(keras.layers.Reshape((*IMAGE_SHAPE, 1)))
        for filters in cfg.filters:  # a block: convolution, 2x2 max-pooling, dropout
            layers += [keras.layers.Conv2D(filters, cfg.kernel_size, padding="same",
                                           activation=cfg.activation),
                       keras.layers.MaxPooling2D()]
            if cfg.dropout > 0:
                layers.append(keras.layers.Dropout(cfg.dropout))
    layers.append(keras.layers.Flatten())
    for units in cfg.hidden_units:
        if isinstance(cfg, MLPConfig) and cfg.batch_norm:  # Dense -> BatchNorm -> activation
            layers += [keras.layers.Dense(units, use_bias=False),
                       keras.layers.BatchNormalization(),
                       keras.layers.Activation(cfg.activation)]
        else:
            layers.append(keras.layers.Dense(units, activation=cfg.activation))
        if cfg.dropout > 0:
            layers.append(keras.layers.Dropout(cfg.dropout))
    layers.append(keras.layers.Dense(num_classes, activation="softmax"))
    return keras.Sequential([keras.Input(shape=IMAGE_SHAPE, name="pixels"), *layers],
                            name=cfg.name)


def compile_model(model: keras.Model, optimizer: OptimizerConfig, *,
                  label_smoothing: float = 0.0, steps_per_execution: int = 1,
                  jit_compile: bool = False) -> keras.Model:
    """Attach the optimizer, the categorical cross-entropy loss and accuracy.

    Keras' sparse cross-entropy (class indices as targets) has no label smoothing, so with
    smoothing the loss is the one-hot form and the labels must be fed one-hot (see
    `one_hot_targets`); both are built-in Keras objects, so the saved model loads anywhere.
    `steps_per_execution` runs that many batches per call into TensorFlow (no Python in
    between) and `jit_compile` fuses each step with XLA: the same math, less overhead.
    """
    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
            if label_smoothing else keras.losses.SparseCategoricalCrossentropy())
    model.compile(optimizer=build_optimizer(optimizer),
                  loss=loss,
                  metrics=["accuracy"],
                  steps_per_execution=steps_per_execution,
                  jit_compile=jit_compile)
    return model


def one_hot_targets(model: keras.Model) -> bool:
    """Whether the compiled loss wants one-hot labels rather than class indices."""
    return isinstance(model.loss, keras.losses.CategoricalCrossentropy)


def build_optimizer(cfg: OptimizerConfig) -> keras.optimizers.Optimizer:
    """The Keras optimizer that cfg's schema names (its `keras_class`), with every field but
    `name` as its argument: the schema is the only list of optimizers."""
    return getattr(keras.optimizers, cfg.keras_class)(**cfg.model_dump(exclude={"name"}))


def _normalization(kind: str, train_images: np.ndarray | None) -> list[keras.layers.Layer]:
    if kind == "rescale":
        return [keras.layers.Rescaling(1 / 255, name="rescale")]
    if kind == "standardize":
        if train_images is None:
            raise ValueError("normalization='standardize' needs the training images")
        pixels = train_images.astype(np.float64)
        return [keras.layers.Normalization(axis=None, mean=pixels.mean(),
                                           variance=pixels.var(), name="standardize")]
    return []
