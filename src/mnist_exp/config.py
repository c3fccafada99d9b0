"""The run configuration's schema, checked before anything heavy is imported.

Hydra composes the YAML under conf/; `parse_config` turns the result into typed
dataclasses or stops with one sentence that names the key, the value given and
what is allowed. Only light modules (omegaconf) are imported here, so a typo costs
a second, not the ten it takes to import TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

DATASETS = ("mnist", "fashion_mnist", "mnist_sample")
NORMALIZATIONS = ("rescale", "standardize", "none")
ACTIVATIONS = ("relu", "gelu", "elu", "selu", "leaky_relu", "silu", "tanh", "sigmoid")
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")
SCHEDULES = ("none", "plateau", "cosine")


class UserError(Exception):
    """A mistake the user can fix: shown as one line, without a traceback."""


class ConfigError(UserError):
    """A configuration value that is missing, mistyped or out of range."""


@dataclass
class DataConfig:
    name: str = "mnist"
    path: str | None = None
    validation_split: float = 0.2
    normalization: str = "rescale"
    verify_checksums: bool = True
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    mirror_invariant: bool = False  # does a left-right mirrored image keep its class?


@dataclass
class MLPConfig:
    name: str = "mlp"
    hidden_units: list[int] = field(default_factory=lambda: [128, 32])
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False


@dataclass
class CNNConfig:
    name: str = "cnn"
    filters: list[int] = field(default_factory=lambda: [32, 64])  # one conv block each
    kernel_size: int = 3
    hidden_units: list[int] = field(default_factory=lambda: [128])
    activation: str = "relu"
    dropout: float = 0.25


ModelConfig = MLPConfig | CNNConfig
MODELS: dict[str, type] = {"mlp": MLPConfig, "cnn": CNNConfig}


@dataclass
class AdamConfig:
    name: str = "adam"
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    amsgrad: bool = False
    weight_decay: float | None = None
    clipnorm: float | None = None


@dataclass
class SGDConfig:
    name: str = "sgd"
    learning_rate: float = 1e-2
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float | None = None
    clipnorm: float | None = None


@dataclass
class RMSpropConfig:
    name: str = "rmsprop"
    learning_rate: float = 1e-3
    rho: float = 0.9
    momentum: float = 0.0
    epsilon: float = 1e-7
    centered: bool = False
    weight_decay: float | None = None
    clipnorm: float | None = None


OptimizerConfig = AdamConfig | SGDConfig | RMSpropConfig
OPTIMIZERS: dict[str, type] = {"adam": AdamConfig, "sgd": SGDConfig, "rmsprop": RMSpropConfig}


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    monitor: str = "val_loss"
    patience: int = 3
    min_delta: float = 0.0
    restore_best_weights: bool = True


@dataclass
class LRScheduleConfig:
    name: str = "none"  # none | plateau | cosine
    factor: float = 0.5  # plateau: multiply the rate by this ...
    patience: int = 2  # ... after this many epochs without a better val_loss
    min_lr: float = 1e-5  # floor for both


@dataclass
class AugmentConfig:
    max_shift: int = 0  # move each training image by up to this many pixels in x and y
    horizontal_flip: bool = False  # mirror half of them (clothes yes, digits no)


@dataclass
class TrainerConfig:
    epochs: int = 25
    batch_size: int = 32
    seed: int = 42
    deterministic: bool = False
    resume: bool = False
    steps_per_execution: int = 64
    jit_compile: bool = True
    eval_batch_size: int = 1024
    threads: int = 0
    label_smoothing: float = 0.0  # aim at 1 - s (+ s/classes) for the true class, not 1
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrackingConfig:
    uri: str | None = None
    experiment_name: str = "mnist"
    run_name: str | None = None
    log_model: bool = True
    register_model: bool = False
    registered_model_name: str = "mnist-exp"


@dataclass
class Config:
    data: DataConfig
    model: ModelConfig
    optimizer: OptimizerConfig
    trainer: TrainerConfig
    tracking: TrackingConfig


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "trainer": TrainerConfig,
    "tracking": TrackingConfig,
}
_BY_NAME: dict[str, dict[str, type]] = {"model": MODELS, "optimizer": OPTIMIZERS}


def parse_config(cfg: DictConfig | dict) -> Config:
    """Type-check and range-check a composed config; raise ConfigError on the first problem."""
    try:
        raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    except OmegaConfBaseException as e:
        raise ConfigError(f"{_key_of(e) or 'config'}: {first_line(e)}") from None
    raw = dict(raw)
    raw.pop("experiment", None)  # the preset's name, when a preset sets one
    _reject_unknown("", raw, [*_SECTIONS, *_BY_NAME])
    for name in [*_SECTIONS, *_BY_NAME]:
        if not isinstance(raw.get(name), dict):
            raise ConfigError(f"{name}: missing; the config needs a '{name}' section")

    sections = {name: _typed(name, schema, raw[name]) for name, schema in _SECTIONS.items()}
    for name, kinds in _BY_NAME.items():  # the schema depends on the section's `name`
        kind = raw[name].get("name")
        if kind not in kinds:
            raise ConfigError(_choice(f"{name}.name", kind, kinds))
        sections[name] = _typed(name, kinds[kind], raw[name])
    config = Config(**sections)
    _check_ranges(config)
    return config


def to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts and lists, e.g. for YAML or MLflow params."""
    return asdict(config)


def _typed(section: str, schema: type, values: dict) -> Any:
    _reject_unknown_fields(section, values, schema)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = _key_of(e)
        raise ConfigError(f"{section}.{key}: {first_line(e)}" if key else
                          f"{section}: {first_line(e)}") from None


def _reject_unknown_fields(prefix: str, values: dict, schema: type) -> None:
    known = {f.name: f for f in fields(schema)}
    _reject_unknown(prefix, values, list(known))
    for key, value in values.items():
        nested = known[key].default_factory
        if is_dataclass(nested) and isinstance(value, dict):
            _reject_unknown_fields(f"{prefix}.{key}", value, nested)
        elif callable(nested) and isinstance(nested(), list) and not isinstance(value, list):
            raise ConfigError(f"{prefix}.{key}: got {value!r}; allowed: a list, e.g. "
                              f"{prefix}.{key}=[{','.join(map(str, nested()))}]")


def _reject_unknown(prefix: str, values: dict, allowed: list[str]) -> None:
    for key in values:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{where}: unknown key; allowed keys here are {', '.join(allowed)}")


def _check_ranges(c: Config) -> None:
    d, m, o, t, es = c.data, c.model, c.optimizer, c.trainer, c.trainer.early_stopping
    checks: list[tuple[str, Any, bool, str]] = [
        ("data.name", d.name, d.name in DATASETS, _one_of(DATASETS)),
        ("data.validation_split", d.validation_split, 0 < d.validation_split < 1,
         "a fraction strictly between 0 and 1"),
        ("data.normalization", d.normalization, d.normalization in NORMALIZATIONS,
         _one_of(NORMALIZATIONS)),
        ("data.path", d.path, d.path is None or Path(d.path).expanduser().exists(),
         "an existing folder of IDX files or a .npz file (or null to download)"),
        ("data.max_train_samples", d.max_train_samples,
         d.max_train_samples is None or d.max_train_samples >= 10, "null or an integer >= 10"),
        ("data.max_test_samples", d.max_test_samples,
         d.max_test_samples is None or d.max_test_samples >= 1, "null or an integer >= 1"),
        ("model.hidden_units", m.hidden_units,
         len(m.hidden_units) > 0 and all(u >= 1 for u in m.hidden_units),
         "a non-empty list of positive integers, e.g. [128,32]"),
        ("model.activation", m.activation, m.activation in ACTIVATIONS, _one_of(ACTIVATIONS)),
        ("model.dropout", m.dropout, 0 <= m.dropout < 1, "a rate in [0, 1)"),
        ("optimizer.learning_rate", o.learning_rate, _positive(o.learning_rate),
         "a number > 0"),
        ("optimizer.weight_decay", o.weight_decay, o.weight_decay is None or o.weight_decay >= 0,
         "null or a number >= 0"),
        ("optimizer.clipnorm", o.clipnorm, o.clipnorm is None or _positive(o.clipnorm),
         "null or a number > 0"),
        ("trainer.epochs", t.epochs, t.epochs >= 1, "an integer >= 1"),
        ("trainer.batch_size", t.batch_size, t.batch_size >= 1, "an integer >= 1"),
        ("trainer.seed", t.seed, 0 <= t.seed < 2**32, "an integer in [0, 2**32)"),
        ("trainer.steps_per_execution", t.steps_per_execution, t.steps_per_execution >= 1,
         "an integer >= 1 (1: a Python round trip per batch)"),
        ("trainer.eval_batch_size", t.eval_batch_size, t.eval_batch_size >= 1,
         "an integer >= 1"),
        ("trainer.threads", t.threads, t.threads >= 0, "an integer >= 0 (0: TensorFlow's choice)"),
        ("trainer.label_smoothing", t.label_smoothing, 0 <= t.label_smoothing < 1,
         "a number in [0, 1) (0: plain one-hot targets)"),
        ("trainer.lr_schedule.name", t.lr_schedule.name, t.lr_schedule.name in SCHEDULES,
         _one_of(SCHEDULES)),
        ("trainer.lr_schedule.factor", t.lr_schedule.factor, 0 < t.lr_schedule.factor < 1,
         "a number in (0, 1)"),
        ("trainer.lr_schedule.patience", t.lr_schedule.patience, t.lr_schedule.patience >= 0,
         "an integer >= 0"),
        ("trainer.lr_schedule.min_lr", t.lr_schedule.min_lr,
         t.lr_schedule.name == "none" or 0 <= t.lr_schedule.min_lr < o.learning_rate,
         "a number >= 0, below optimizer.learning_rate"),
        ("trainer.early_stopping.monitor", es.monitor, es.monitor in MONITORS, _one_of(MONITORS)),
        ("trainer.early_stopping.patience", es.patience, es.patience >= 0, "an integer >= 0"),
        ("trainer.early_stopping.min_delta", es.min_delta, es.min_delta >= 0, "a number >= 0"),
        ("trainer.augment.max_shift", t.augment.max_shift, 0 <= t.augment.max_shift <= 8,
         "an integer from 0 (off) to 8 pixels"),
        ("trainer.augment.horizontal_flip", t.augment.horizontal_flip,
         d.mirror_invariant or not t.augment.horizontal_flip,
         f"false for {d.name}: a mirrored image changes its class (data.mirror_invariant)"),
        ("tracking.experiment_name", c.tracking.experiment_name,
         bool(c.tracking.experiment_name.strip()), "a non-empty name"),
        ("tracking.register_model", c.tracking.register_model,
         c.tracking.log_model or not c.tracking.register_model,
         "false while tracking.log_model is false (there is no model to register)"),
        ("tracking.registered_model_name", c.tracking.registered_model_name,
         bool(c.tracking.registered_model_name.strip()), "a non-empty name"),
        ("tracking.run_name", c.tracking.run_name,
         c.tracking.run_name is None or bool(c.tracking.run_name.strip()),
         "null or a non-empty name"),
    ]
    if isinstance(m, CNNConfig):
        checks.append(("model.filters", m.filters,
                       len(m.filters) > 0 and all(f >= 1 for f in m.filters),
                       "a non-empty list of positive integers, e.g. [32,64]"))
        checks.append(("model.kernel_size", m.kernel_size, 1 <= m.kernel_size <= 7,
                       "an integer from 1 to 7"))
    for attr, allowed in [("beta_1", "[0, 1)"), ("beta_2", "[0, 1)"), ("rho", "[0, 1)"),
                          ("momentum", "[0, 1)")]:
        if hasattr(o, attr):
            value = getattr(o, attr)
            checks.append((f"optimizer.{attr}", value, 0 <= value < 1, f"a number in {allowed}"))
    if hasattr(o, "epsilon"):
        checks.append(("optimizer.epsilon", o.epsilon, _positive(o.epsilon), "a number > 0"))
    if d.max_train_samples is not None:  # settings that contradict each other
        n_val = round(d.max_train_samples * d.validation_split)
        checks.append(("data.validation_split", d.validation_split,
                       1 <= n_val < d.max_train_samples,
                       f"a split leaving 1 to {d.max_train_samples - 1} of "
                       f"data.max_train_samples={d.max_train_samples} for validation"))
        checks.append(("trainer.batch_size", t.batch_size,
                       t.batch_size <= d.max_train_samples - n_val,
                       f"at most the {d.max_train_samples - n_val} training samples left by "
                       "data.max_train_samples and data.validation_split"))
    for key, value, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"{key}: got {value!r}; allowed: {allowed}")


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def _one_of(options: tuple[str, ...]) -> str:
    return "one of " + ", ".join(options)


def _choice(key: str, value: Any, options: dict) -> str:
    return f"{key}: got {value!r}; allowed: {_one_of(tuple(options))}"


def _key_of(e: OmegaConfBaseException) -> str:
    return str(getattr(e, "full_key", None) or "")


def first_line(e: Exception) -> str:
    """The first line of an exception's message, for one-line error reports."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
