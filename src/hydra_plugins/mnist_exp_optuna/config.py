"""The sweeper's settings, registered as `hydra/sweeper=optuna` (Hydra imports every module
under hydra_plugins while scanning for plugins, which runs the registration below). No
`from __future__ import annotations`: the scan runs this module outside sys.modules, where
dataclasses cannot resolve string annotations."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe | random | cmaes
    seed: int | None = None


@dataclass
class PrunerConf:
    name: str = "median"  # median | none
    n_startup_trials: int = 2  # trials that run to the end before any is pruned
    n_warmup_steps: int = 0  # epochs of every trial that are never pruned


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mnist_exp_optuna.sweeper.OptunaSweeper"
    direction: str = "maximize"
    study_name: str = "mnist_exp"
    # null: sqlite:///<launch folder>/optuna.db (jobs on one machine); journal:PATH: Optuna's
    # journal file, for jobs on several machines sharing a file system; postgresql://...:
    # a database server. Relative paths: from the launch folder (mnist_exp.sweeps.study)
    storage: str | None = None
    n_trials: int = 20  # in all: trials finished by earlier runs of the study count
    # workers: trials running at once, each worker starting its next trial as soon as its
    # own has ended (needs a parallel launcher: joblib, SLURM, Ray; workers.py)
    n_jobs: int = 1
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    params: dict[str, Any] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf,
                             provider="mnist_exp")
