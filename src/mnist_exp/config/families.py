"""The families of options told apart by `name` (model=mlp|cnn, optimizer=adam|...): each
option's settings, and the union Hydra's choice of option is checked against."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

from pydantic import Field, StrictFloat, StrictInt

from mnist_exp.config.explain import options
from mnist_exp.config.kinds import Activation, Fraction, Layers, Positive, Section


class MLPConfig(Section):
    name: Literal["mlp"] = "mlp"
    hidden_units: Layers = Field([128, 32], description="units of each hidden Dense layer")
    activation: Activation = Field("relu", description="the hidden layers' activation")
    dropout: Fraction = Field(0.0, description="dropout after each hidden layer (0: none)")
    batch_norm: bool = Field(False, description="batch normalisation between each hidden "
                                                "Dense layer and its activation")


class CNNConfig(Section):
    name: Literal["cnn"] = "cnn"
    filters: Layers = Field([32, 64], description="a block each: conv, 2x2 max-pool, dropout")
    kernel_size: StrictInt = Field(3, ge=1, le=7, description="side of each convolution kernel")
    hidden_units: Layers = Field([128], description="units of each Dense layer after them")
    activation: Activation = Field("relu", description="the convolutions' and Dense layers' "
                                                       "activation")
    dropout: Fraction = Field(0.25, description="dropout after each block and layer (0: none)")


ModelConfig = Annotated[MLPConfig | CNNConfig, Field(discriminator="name")]

# What every optimizer takes: a rate, decoupled weight decay, clipping.
LearningRate = Annotated[Positive, Field(description="step size (a schedule's start)")]
WeightDecay = Annotated[StrictFloat | None, Field(ge=0, description="decoupled weight decay")]
ClipNorm = Annotated[Positive | None, Field(description="clip each gradient to this norm")]
Epsilon = Annotated[Positive, Field(description="added to the denominator, for stability")]


class AdamConfig(Section):
    keras_class: ClassVar[str] = "Adam"  # the class in keras.optimizers that this builds
    name: Literal["adam"] = "adam"
    learning_rate: LearningRate = 1e-3
    beta_1: Fraction = Field(0.9, description="decay rate of the gradient's running mean")
    beta_2: Fraction = Field(0.999, description="decay rate of its running mean square")
    epsilon: Epsilon = 1e-7
    amsgrad: bool = Field(False, description="divide by the largest mean square so far")
    weight_decay: WeightDecay = None
    clipnorm: ClipNorm = None


class AdamWConfig(AdamConfig):
    """Adam's settings, with decoupled weight decay always on (Keras' default 0.004)."""

    keras_class: ClassVar[str] = "AdamW"
    name: Literal["adamw"] = "adamw"
    weight_decay: StrictFloat = Field(0.004, ge=0, description="decoupled weight decay")


class SGDConfig(Section):
    keras_class: ClassVar[str] = "SGD"
    name: Literal["sgd"] = "sgd"
    learning_rate: LearningRate = 1e-2
    momentum: Fraction = Field(0.0, description="share of the previous step carried over")
    nesterov: bool = Field(False, description="Nesterov momentum")
    weight_decay: WeightDecay = None
    clipnorm: ClipNorm = None


class RMSpropConfig(Section):
    keras_class: ClassVar[str] = "RMSprop"
    name: Literal["rmsprop"] = "rmsprop"
    learning_rate: LearningRate = 1e-3
    rho: Fraction = Field(0.9, description="decay rate of the gradient's running mean square")
    momentum: Fraction = Field(0.0, description="share of the previous step carried over")
    epsilon: Epsilon = 1e-7
    centered: bool = Field(False, description="divide by the variance, not the mean square")
    weight_decay: WeightDecay = None
    clipnorm: ClipNorm = None


OptimizerConfig = Annotated[AdamConfig | AdamWConfig | SGDConfig | RMSpropConfig,
                            Field(discriminator="name")]
MODELS = options(get_args(ModelConfig)[0])  # each family's options, by name
OPTIMIZERS = options(get_args(OptimizerConfig)[0])
