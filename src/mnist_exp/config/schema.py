"""The run configuration's schema: every setting declared once, checked before anything
heavy is imported.

Each setting is one declaration below: type, default, allowed range and meaning (pydantic
models; a family of options, such as the optimizers, is a union told apart by `name`).
Hydra composes the YAML under conf/; `parse_config` checks it against these models and
reports the first problem as one line naming the key, the value and what is allowed, in
words derived from the same declaration (explain.py). Only light modules are imported
(omegaconf, pydantic), so a typo costs a fraction of a second, not the ten it takes to
import TensorFlow. The README's tables of settings are generated from this file
(scripts/config_table.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationError,
    model_validator,
)

from mnist_exp.config.explain import Allowed, conflict, options, sentence
from mnist_exp.errors import ConfigError, first_line


def _exists(path: str) -> str:
    if not Path(path).expanduser().exists():
        raise ValueError("no such file or folder")
    return path


# Kinds of value several settings share. Integers and numbers are strict (2.5 and true are
# no integer, true no number), as OmegaConf's typed configs were.
Count = Annotated[StrictInt, Field(ge=1)]
Fraction = Annotated[StrictFloat, Field(ge=0, lt=1)]
Positive = Annotated[StrictFloat, Field(gt=0)]
NonNegative = Annotated[StrictFloat, Field(ge=0)]
Layers = Annotated[list[Count], Field(min_length=1)]
Name = Annotated[str, StringConstraints(pattern=r"\S"), Allowed("a non-empty name")]
ExistingPath = Annotated[str, AfterValidator(_exists),
                         Allowed("an existing folder of IDX files or a .npz file")]
Activation = Literal["relu", "gelu", "elu", "selu", "leaky_relu", "silu", "tanh", "sigmoid"]


class Section(BaseModel):
    """A group of settings. Unknown keys and non-finite numbers are refused; a value set
    later (run.py caps trainer.threads in sweeps) is checked like one read from YAML; a
    number where text is expected (tracking.run_name=2024) is taken as text."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True,
                              coerce_numbers_to_str=True)


class DataConfig(Section):
    name: Literal["mnist", "fashion_mnist", "mnist_sample"] = Field(
        "mnist", description="digits, Zalando's clothes, or the sample of MNIST shipped here")
    path: ExistingPath | None = Field(
        None, description="a local copy: a folder of the four IDX files (.gz or not) or a "
                          "Keras-style .npz; null: a copy on this machine, else a download")
    validation_split: StrictFloat = Field(
        0.2, gt=0, lt=1, description="share of the training set held out (stratified)")
    normalization: Literal["rescale", "standardize", "none"] = Field(
        "rescale", description="pixels / 255, zero mean and unit variance, or raw 0-255")
    verify_checksums: bool = Field(True, description="official-looking files must match "
                                                     "the published checksums")
    max_train_samples: StrictInt | None = Field(None, ge=10, description="use only the first "
                                                "N (shuffled) samples; null: all")
    max_test_samples: StrictInt | None = Field(None, ge=1, description="likewise, test set")
    mirror_invariant: bool = Field(False, description="a mirrored image keeps its class "
                                                      "(clothes yes, digits no)")

    @model_validator(mode="after")
    def _split_leaves_samples_on_both_sides(self) -> DataConfig:
        n = self.max_train_samples
        if n is not None and not 1 <= round(n * self.validation_split) < n:
            raise conflict("validation_split", self.validation_split,
                           f"a split leaving 1 to {n - 1} of data.max_train_samples={n} "
                           "for validation")
        return self


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


class LRScheduleConfig(Section):
    name: Literal["none", "plateau", "cosine"] = Field(
        "none", description="plateau: multiply the rate by `factor` after `patience` epochs "
                            "without a better val_loss; cosine: from optimizer.learning_rate "
                            "down to min_lr over the epochs")
    factor: StrictFloat = Field(0.5, gt=0, lt=1, description="plateau: multiply the rate by this")
    patience: StrictInt = Field(2, ge=0, description="plateau: epochs without a better val_loss")
    min_lr: StrictFloat = Field(1e-5, ge=0, description="the rate's floor")


class EarlyStoppingConfig(Section):
    enabled: bool = Field(False, description="stop once `monitor` stops improving")
    monitor: Literal["val_loss", "val_accuracy", "loss", "accuracy"] = Field(
        "val_loss", description="the metric watched")
    patience: StrictInt = Field(3, ge=0, description="epochs to wait for an improvement")
    min_delta: StrictFloat = Field(0.0, ge=0, description="the least change that counts")
    restore_best_weights: bool = Field(True, description="keep the best epoch's weights")


class AugmentConfig(Section):
    max_shift: StrictInt = Field(0, ge=0, le=8, description="move training images by up to "
                                                            "this many pixels in x and y")
    horizontal_flip: bool = Field(False, description="mirror half of the training images")


class TrainerConfig(Section):
    epochs: Count = Field(25, description="passes over the training set")
    batch_size: Count = Field(32, description="samples per training step")
    seed: StrictInt = Field(42, ge=0, lt=2**32, description="seeds Python, NumPy, TensorFlow "
                                                            "and the validation split")
    deterministic: bool = Field(False, description="TensorFlow's op determinism (slower)")
    resume: bool = Field(False, description="continue an interrupted run of this config")
    steps_per_execution: Count = Field(64, description="batches per call into TensorFlow (1: "
                                                       "a Python round trip per batch)")
    jit_compile: bool = Field(True, description="compile the training step with XLA")
    eval_batch_size: Count = Field(1024, description="batch size for validation and test")
    threads: StrictInt = Field(0, ge=0, description="TensorFlow's thread pools (0: its default, "
                                                    "one per core)")
    compile_cache: bool = Field(True, description="keep XLA's compiled steps on disk for "
                                                  "later runs and sweep jobs")
    compile_cache_dir: str | None = Field(None, description="null: $XDG_CACHE_HOME/mnist-exp/"
                                                            "xla, else ~/.cache/mnist-exp/xla")
    reuse_model: bool = Field(True, description="jobs in one process (a sweep's, a study's) "
                                                "train the model an earlier job traced and "
                                                "compiled, when only its values differ")
    label_smoothing: Fraction = Field(0.0, description="s: the true class's target is 1 - s + "
                                                       "s/10, every other class's s/10")
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class TrackingConfig(Section):
    uri: str | None = Field(None, description="the tracking store; null: $MLFLOW_TRACKING_URI "
                                              "when set, else mlflow.db in the launch folder")
    experiment_name: Name = Field("mnist", description="the MLflow experiment (conf/ names it "
                                                       "after data.name)")
    run_name: Name | None = Field(None, description="null: named after the preset and the "
                                                    "command-line overrides")
    log_model: bool = Field(True, description="log the model (Keras flavour, signature)")
    register_model: bool = Field(False, description="register the logged model as a new "
                                                    "version of registered_model_name")
    registered_model_name: Name = Field("mnist-exp", description="the registered model")
    system_metrics: bool = Field(True, description="record CPU, memory, disk and network use "
                                                   "(and GPUs, with pynvml) as system/* metrics")
    system_metrics_interval: Positive = Field(10.0, description="seconds between system metric "
                                                                "samples")
    tags: dict[str, str] = Field({}, description="added to the run's tags, e.g. "
                                                 "'+tracking.tags.team=vision'")
    description: str | None = Field(None, description="the run's description in mlflow ui "
                                                       "(tag mlflow.note.content)")
    checkpoint_every: Count | None = Field(None, description="every N epochs, log the model "
                                                             "as a checkpoint LoggedModel with "
                                                             "its validation metrics; null: off")
    offline: bool = Field(False, description="record the run locally only, to upload later "
                                             "with python -m mnist_exp.sync")
    flush_timeout_s: NonNegative = Field(30.0, description="seconds a run's end waits for an "
                                                           "unreachable server before keeping "
                                                           "the run locally (exit 3)")

    @model_validator(mode="after")
    def _registers_only_a_logged_model(self) -> TrackingConfig:
        if self.register_model and not self.log_model:
            raise conflict("register_model", True, "false while tracking.log_model is false "
                                                   "(there is no model to register)")
        return self


class Config(Section):
    data: DataConfig
    model: ModelConfig
    optimizer: OptimizerConfig
    trainer: TrainerConfig
    tracking: TrackingConfig

    @model_validator(mode="after")
    def _sections_agree(self) -> Config:
        d, t, schedule = self.data, self.trainer, self.trainer.lr_schedule
        if d.max_train_samples is not None:
            left = d.max_train_samples - round(d.max_train_samples * d.validation_split)
            if t.batch_size > left:
                raise conflict("trainer.batch_size", t.batch_size,
                               f"at most the {left} training samples left by "
                               "data.max_train_samples and data.validation_split")
        if schedule.name != "none" and schedule.min_lr >= self.optimizer.learning_rate:
            raise conflict("trainer.lr_schedule.min_lr", schedule.min_lr,
                           "a number >= 0, below optimizer.learning_rate")
        if t.augment.horizontal_flip and not d.mirror_invariant:
            raise conflict("trainer.augment.horizontal_flip", True,
                           f"false for {d.name}: a mirrored image changes its class "
                           "(data.mirror_invariant)")
        if t.resume and self.tracking.offline:
            raise conflict("trainer.resume", True, "false with tracking.offline=true (a resumed "
                                                   "run reopens its run on the tracking server)")
        return self


S = TypeVar("S", bound=Section)


class EvaluationTrackingConfig(TrackingConfig):
    experiment_name: Name | None = Field(None, description="null: the experiment named after "
                                                           "the evaluated data")


class EvaluationConfig(Section):
    """python -m mnist_exp.evaluate: a logged model scored on a test set."""

    model_uri: Name = Field(description="a run id, a logged-model id (m-...) or a model URI "
                                        "(runs:/<run id>/model, models:/<name>@<alias>)")
    data: DataConfig | None = Field(None, description="null: the training run's data settings")
    seed: StrictInt | None = Field(None, ge=0, lt=2**32, description="draws the "
                                   "data.max_*_samples samples; null: the training run's "
                                   "trainer.seed")
    tracking: EvaluationTrackingConfig


def parse_config(cfg: DictConfig | dict, schema: type[S] = Config) -> S:
    """Check a composed config against the schema (a training run's, or another entry
    point's); raise ConfigError, one line, on the first problem (an unknown key before any
    other)."""
    try:
        raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    except OmegaConfBaseException as e:
        raise ConfigError(f"{getattr(e, 'full_key', None) or 'config'}: {first_line(e)}") from None
    raw = dict(raw)
    raw.pop("experiment", None)  # the preset's name, when a preset sets one
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        errors = sorted(e.errors(), key=lambda error: error["type"] != "extra_forbidden")
        raise ConfigError(sentence(errors[0], raw, schema)) from None


def to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts and lists, e.g. for YAML or MLflow params."""
    return config.model_dump()
