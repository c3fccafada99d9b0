"""The run configuration's schema: every setting declared once, checked before anything
heavy is imported.

Each setting is one declaration: type, default, allowed range and meaning (pydantic models:
the shared kinds of value in kinds.py, the families of options told apart by `name` in
families.py, the other groups in sections.py). Hydra composes the YAML under conf/;
`parse_config` checks it against these models and reports the first problem as one line
naming the key, the value and what is allowed, in words derived from the same declaration
(explain.py). Only light modules are imported (omegaconf, pydantic), so a typo costs a
fraction of a second, not the ten it takes to import TensorFlow. The settings tables of
docs/configuration.md are generated from these models (scripts/config_table.py).
"""

from __future__ import annotations

from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import Field, StrictInt, ValidationError, model_validator

from mnist_exp.config.explain import conflict, sentence
from mnist_exp.config.families import (
    MODELS,
    OPTIMIZERS,
    AdamConfig,
    AdamWConfig,
    CNNConfig,
    MLPConfig,
    ModelConfig,
    OptimizerConfig,
    RMSpropConfig,
    SGDConfig,
)
from mnist_exp.config.kinds import Name, Section
from mnist_exp.config.sections import (
    AugmentConfig,
    DataConfig,
    EarlyStoppingConfig,
    EvaluationTrackingConfig,
    LRScheduleConfig,
    TrackingConfig,
    TrainerConfig,
)
from mnist_exp.errors import ConfigError, first_line

__all__ = [  # every section stays importable from here, where its callers look for it
    "MODELS", "OPTIMIZERS", "AdamConfig", "AdamWConfig", "AugmentConfig", "CNNConfig", "Config",
    "DataConfig", "EarlyStoppingConfig", "EvaluationConfig", "EvaluationData",
    "EvaluationTrackingConfig",
    "LRScheduleConfig", "MLPConfig", "ModelConfig", "OptimizerConfig", "RMSpropConfig",
    "SGDConfig", "Section", "TrackingConfig", "TrainerConfig", "parse_config", "to_dict",
]


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


DatasetName = DataConfig.model_fields["name"].annotation


class EvaluationData(DataConfig):
    """The data evaluate scores on: a dataset chosen whole (data=fashion_mnist), or, with no
    data= given, the training run's data settings with only the keys given changed
    (data.path=<folder>: that folder, under the training run's dataset name)."""

    name: DatasetName | None = Field(  # type: ignore[valid-type]
        None, description="null: the training run's dataset, with the other keys given changed")

    @model_validator(mode="before")
    @classmethod
    def _only_the_keys_given(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("name") is None:
            return {k: v for k, v in raw.items() if v is not None}
        return raw

    def over(self, trained: DataConfig | None) -> DataConfig | None:
        """The data settings to use, given the training run's (None: no training run)."""
        if self.name is not None:
            return DataConfig.model_validate(self.model_dump())
        if trained is None:
            return None
        return DataConfig.model_validate(
            {**trained.model_dump(), **self.model_dump(include=self.model_fields_set)})


class EvaluationConfig(Section):
    """python -m mnist_exp.evaluate: a logged model scored on a test set."""

    model_uri: Name = Field(description="a run id, a logged-model id (m-...) or a model URI "
                                        "(runs:/<run id>/model, models:/<name>@<alias>)")
    data: EvaluationData = Field(default_factory=EvaluationData, description="none of its "
                                 "keys given: the training run's data settings")
    seed: StrictInt | None = Field(None, ge=0, lt=2**32, description="draws the "
                                   "data.max_*_samples samples; null: the training run's "
                                   "trainer.seed")
    tracking: EvaluationTrackingConfig

    def data_over(self, trained: DataConfig | None) -> DataConfig | None:
        """The data settings to score on, given the training run's (None if neither says)."""
        return self.data.over(trained)


S = TypeVar("S", bound=Section)


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
