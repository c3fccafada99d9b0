"""Configs checked before anything heavy starts: a command's overrides (a run's, evaluate's),
every job of a grid sweep, the ends of an Optuna search space. Each is composed by Hydra
and judged by the schema; a mistake is one line (ConfigError), and nothing is made yet.

A sweep's jobs are expanded as Hydra's BasicSweeper expands them (its `split_arguments`),
so job numbers and overrides are the ones the sweep would run. Composing costs a quarter of
a second, too much for each of hundreds of jobs: each distinct set of config-group choices
is composed once, and a job's other overrides are applied to a copy of it the way Hydra's
config loader applies them after composing.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from mnist_exp.cli.search_checks import check_study_storage, search_ends, search_mistake
from mnist_exp.config.kinds import Section
from mnist_exp.config.preflight import check_fits_memory
from mnist_exp.config.schema import Config, EvaluationConfig, parse_config
from mnist_exp.errors import ConfigError, UserError, first_line

S = TypeVar("S", bound=Section)

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA = "hydra_plugins.mnist_exp_optuna.sweeper.OptunaSweeper"
_UNKNOWN = re.compile(r"Could not override '([^']+)'")


def config_dir() -> Path:
    """conf/: inside a built wheel, or at the checkout's root."""
    packaged = Path(__file__).resolve().parents[1] / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "conf"


CONF_DIR = config_dir()


def hydra_mistake(e: Exception, overrides: list[str],
                  again: Callable[[list[str]], Any]) -> ConfigError:
    """Hydra's exception about composing `overrides` as one line. An unknown key is composed
    again (`again`) with a + before it, so that the schema names the keys allowed there."""
    if isinstance(e, MissingConfigException):
        group, _, option = (e.missing_cfg_file or "").rpartition("/")
        allowed = ", ".join(sorted(e.options or []))
        return ConfigError(f"{group}={option}: no such option; allowed: {allowed}")
    if isinstance(e, OverrideParseException):
        return ConfigError(f"cannot read the override {e.override!r}: {first_line(e)} "
                           "(Hydra's override grammar)")
    unknown = _UNKNOWN.search(str(e))
    if unknown:
        key = unknown.group(1)
        retry = [f"+{o}" if o.split("=")[0] == key else o for o in overrides]
        if retry != overrides:
            try:
                again(retry)
            except UserError as named:
                return ConfigError(str(named))
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return ConfigError(" ".join(lines[:2]))


def compose_checked(overrides: list[str], schema: type[S] = Config,
                    config_name: str = "config") -> S:
    """Compose a command's config as Hydra will and validate it (ConfigError, one line)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return _composed(overrides, schema, config_name)


def _composed(overrides: list[str], schema: type[S], config_name: str) -> S:
    try:
        cfg = compose(config_name, overrides=overrides)
    except HydraException as e:
        raise hydra_mistake(e, overrides, lambda o: _composed(o, schema, config_name)
                            ) from None
    return parse_config(cfg, schema)


def check_evaluation(overrides: list[str]) -> EvaluationConfig:
    """The evaluate command's config, composed and validated as a run's is; a missing
    model_uri is named as such."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = compose("evaluate", overrides=overrides)
        except HydraException as e:
            raise hydra_mistake(e, overrides, lambda o: _composed(o, EvaluationConfig,
                                                                  "evaluate")) from None
    if OmegaConf.is_missing(cfg, "model_uri"):
        raise ConfigError("model_uri: missing; name the model to evaluate: model_uri=<a run "
                          "id | a logged-model id m-... | runs:/<run id>/model | "
                          "models:/<name>@<alias>>")
    return parse_config(cfg, EvaluationConfig)


@dataclass
class SweepPlan:
    """What a sweep will run: a grid's jobs, each its overrides, or an Optuna search."""

    sweeper: str
    hydra: DictConfig
    jobs: list[list[str]] = field(default_factory=list)
    searched: dict[str, str] = field(default_factory=dict)  # key -> its sweep, as given
    fixed: list[str] = field(default_factory=list)  # an Optuna search's other overrides
    checked: int = 0  # configs composed and validated

    @property
    def list_jobs(self) -> bool:
        return bool(self.hydra.callbacks.get("mlflow_sweep", {}).get("list_jobs"))

    def lines(self) -> list[str]:
        """One line per job (its number and overrides), or what an Optuna search searches."""
        if self.sweeper != OPTUNA:
            return [f"{n}: {' '.join(job)}" for n, job in enumerate(self.jobs)]
        return [f"Optuna search of {self.hydra.sweeper.n_trials} trials, each sampled once "
                "the earlier ones have ended (so not listed), over:",
                *(f"  {key}={sweep}" for key, sweep in self.searched.items()),
                f"with: {' '.join(self.fixed)}"]


def plan_sweep(overrides: list[str]) -> SweepPlan:
    """Expand a sweep's overrides into its jobs and check every one (ConfigError naming the
    job, its overrides, the key and the value); for an Optuna search, each end of each
    range and each choice. Nothing is run."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise hydra_mistake(e, overrides, lambda o: None) from None
    task = [o for o in parsed if not o.is_hydra_override()]
    first = [o.input_line if not o.is_sweep_override()
             else f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"
             for o in task if not o.is_sweep_override() or o.is_discrete_sweep()]
    hydra_part = [o.input_line for o in parsed if o.is_hydra_override()]
    for o in parsed:
        if o.is_hydra_override() and o.is_sweep_override():
            raise ConfigError(f"{o.input_line}: Hydra's own settings are not swept; a search "
                              "space's range goes in quotes: {}='{}'".format(
                                  *o.input_line.split("=", 1)))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        checker = _JobChecker()
        probe = _hydra_config(hydra_part, checker.choices(first))
        sweeper = probe.sweeper.get("_target_", BASIC)
        params = [f"{k}={v}" for k, v in (probe.sweeper.get("params") or {}).items()]
        given = [*params, *(o.input_line for o in task)]
        if sweeper == OPTUNA:
            check_study_storage(probe.sweeper)
            searched, fixed, jobs = search_ends(given)
            plan = SweepPlan(sweeper, probe, searched=searched, fixed=fixed)
            for job in jobs:
                checker.check(job, lambda e, job=job: search_mistake(job, searched, e))
        elif sweeper == BASIC:
            try:
                [jobs] = BasicSweeper.split_arguments(
                    OverridesParser.create().parse_overrides(given), None)
            except HydraException as e:
                raise ConfigError(first_line(e)) from None
            plan = SweepPlan(sweeper, probe, jobs)
            swept = _swept_keys(jobs)
            for n, job in enumerate(jobs):
                checker.check(job, lambda e, n=n, job=job: _job_mistake(n, job, swept, e))
        else:  # another sweeper: its jobs are its own to choose
            plan = SweepPlan(sweeper, probe)
    plan.checked = checker.checked
    return plan


def _hydra_config(hydra_part: list[str], choices: list[str]) -> DictConfig:
    """The sweep's Hydra settings (its sweeper, its search space), which its first job's
    group choices (hparams_search=optuna) may set; a mistake in those is left to the job's
    own check, which names the job."""
    try:
        return compose("config", [*hydra_part, *choices], return_hydra_config=True).hydra
    except HydraException:
        try:
            return compose("config", hydra_part, return_hydra_config=True).hydra
        except HydraException as e:
            raise hydra_mistake(e, hydra_part, lambda o: None) from None


def _swept_keys(jobs: list[list[str]]) -> set[str]:
    """The keys whose value differs between jobs: what tells a job apart."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for o in job:
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    return {k for k, v in values.items() if len(v) > 1}


def _job_mistake(n: int, job: list[str], swept: set[str], e: UserError) -> ConfigError:
    shown = [o for o in job if o.partition("=")[0] in swept] or job
    return ConfigError(f"job {n} ({' '.join(shown)}): {e}; no job was started")


class _JobChecker:
    """Composes each distinct set of config-group choices once (Hydra's compose) and applies
    each job's other overrides to a copy, as Hydra's config loader does after composing."""

    def __init__(self) -> None:
        self.loader = GlobalHydra.instance().config_loader()
        self.parser = OverridesParser.create()
        self.groups: dict[tuple[str, ...], DictConfig | HydraException] = {}
        self.parsed: dict[str, Override] = {}
        self.checked = 0

    def check(self, job: list[str], mistake: Callable[[UserError], ConfigError]) -> None:
        try:
            check_fits_memory(self.config(job))
        except UserError as e:
            raise mistake(e) from None
        self.checked += 1

    def choices(self, job: list[str]) -> list[str]:
        return [o for o in job if self._is_choice(self._parse(o))]

    def config(self, job: list[str]) -> Config:
        overrides = [self._parse(o) for o in job]
        choices = tuple(o.input_line for o in overrides if self._is_choice(o))
        values = [o for o in overrides if not self._is_choice(o)]
        if choices not in self.groups:
            try:
                self.groups[choices] = compose("config", list(choices))
            except HydraException as e:
                self.groups[choices] = e
        base = self.groups[choices]
        if isinstance(base, HydraException):
            raise hydra_mistake(base, job, lambda o: self.config(o))
        cfg = copy.deepcopy(base)
        try:
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        except HydraException as e:
            raise hydra_mistake(e, job, lambda o: self.config(o)) from None
        return parse_config(cfg)

    def _parse(self, override: str) -> Override:
        if override not in self.parsed:
            self.parsed[override] = self.parser.parse_override(override)
        return self.parsed[override]

    def _is_choice(self, override: Override) -> bool:
        """A config-group choice (data=mnist_sample, +experiment=cnn), as Hydra tells them
        from the values it applies after composing."""
        return override.package is not None or (
            self.loader.repository.group_exists(override.key_or_group)
            and not isinstance(override.value(), dict))
