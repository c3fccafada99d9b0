"""The Optuna study of a search: where it is stored, and how its trials are sampled and
pruned. Shared by the sweeper (which asks and tells, in the launching process) and each
trial's job (which reports its epochs to the pruner, in whatever process runs it).

A study lives in an RDB storage under its name, by default sqlite:///<launch
folder>/optuna.db beside the MLflow store, so the same command later continues it and
`optuna-dashboard sqlite:///optuna.db` shows it. Several processes write that file (the
jobs their epochs, the sweeper its trials): write-ahead logging and a generous busy
timeout let them take turns instead of failing with "database is locked".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_exp.errors import ConfigError
from mnist_exp.tracking.store import allow_concurrent_writers

DEFAULT_STORAGE = "optuna.db"
TRIAL_ENV = "MNIST_EXP_OPTUNA_TRIAL"  # set in a trial's job by the sweeper (hydra.job.env_set)
PRUNED_TAG = "optuna.pruned"
SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "none")


@dataclass(frozen=True)
class TrialLink:
    """What a job needs to report to its trial: the study's storage and name, the trial's
    id, and the pruner's settings (a pruner is not stored with the study)."""

    storage: str
    study_name: str
    trial_id: int
    pruner: dict[str, Any]


def resolve_storage(configured: str | None, launch_dir: Path) -> str:
    """The configured storage URL, else sqlite:///<launch_dir>/optuna.db."""
    return configured or f"sqlite:///{(launch_dir / DEFAULT_STORAGE).resolve()}"


def open_storage(url: str) -> Any:
    """An RDB storage that several processes can write at once (see the module's note)."""
    import optuna

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///").split("?")[0]).parent.mkdir(parents=True,
                                                                         exist_ok=True)
        allow_concurrent_writers(url)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def make_sampler(name: str, seed: int | None) -> Any:
    """TPE (the default), random or CMA-ES, seeded when a seed is given."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    raise ConfigError(f"hydra.sweeper.sampler.name={name}: no such sampler; allowed: "
                      f"{', '.join(SAMPLERS)}")


def make_pruner(name: str = "median", n_startup_trials: int = 2,
                n_warmup_steps: int = 0) -> Any:
    """The median rule (stop a trial whose epoch is worse than the median of earlier
    trials' same epoch), or none."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials,
                                           n_warmup_steps=n_warmup_steps)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"hydra.sweeper.pruner.name={name}: no such pruner; allowed: "
                      f"{', '.join(PRUNERS)}")
