"""The groups of settings that are not a family of options: data, trainer (with its
schedule, early stopping and augmentation) and tracking, each with the checks among its own
keys."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictFloat, StrictInt, model_validator

from mnist_exp.config.explain import Allowed, conflict
from mnist_exp.config.kinds import (
    Count,
    ExistingPath,
    Fraction,
    Name,
    NonNegative,
    Positive,
    Section,
)


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
    jit_compile: Annotated[Literal["auto", True, False], Allowed("auto, true or false")] = Field(
        "auto", description="compile the training step with XLA; auto: where it is the "
                            "faster path for the model and device (docs/performance.md)")
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
    keep_in_sweeps: Literal["improving", "all"] = Field(
        "improving", description="in a sweep, log a job's model and figures only if it is at "
                                 "least as good as the sweep's best so far (its best job's "
                                 "always are), or every job's")
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


class EvaluationTrackingConfig(TrackingConfig):
    experiment_name: Name | None = Field(None, description="null: the experiment named after "
                                                           "the evaluated data")

