"""An Optuna search checked before it starts (cli/checks.plan_sweep): its study's storage,
and its space as configs to check, the fixed values with each choice and each end of each
range in turn (one key at a time: a clash between two searched values shows only when a
trial samples it, and fails that trial)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnist_exp.errors import ConfigError, UserError, first_line


def check_study_storage(sweeper: Any) -> str:
    """The study's storage (hydra.sweeper.storage) as the sweeper will open it; a string
    that names none, or a database whose driver is missing, is the sweeper's own one-line
    ConfigError, before the sweep's parent run, its folder or a tracking store is made."""
    from mnist_exp.sweeps.study import check_storage

    return check_storage(sweeper.get("storage"), Path.cwd())


def search_mistake(job: list[str], searched: dict[str, str], e: UserError) -> ConfigError:
    """The line for a refused config of a search: the searched value it is about, if any."""
    key = str(e).partition(":")[0]
    value = next((o for o in job if o.partition("=")[0] == key), None)
    where = f"the search space reaches {value}" if key in searched else "every trial"
    return ConfigError(f"hydra.sweeper.params: {where}: {e}; no trial was started")


def search_ends(given: list[str]) -> tuple[dict[str, str], list[str], list[list[str]]]:
    """An Optuna search space (the sweeper's own parsing) as configs to check: the fixed
    values with every searched key at its first choice or low end, then each other choice
    and each high end in turn."""
    from hydra_plugins.mnist_exp_optuna.space import as_override, parse_params

    try:
        space, fixed = parse_params(given)
    except Exception as e:  # e.g. a log range from 0: Optuna's line names the bound
        culprit = next((g for g in given if _refused(g)), "")
        raise ConfigError(f"hydra.sweeper.params: {culprit}: {first_line(e)}") from None
    ends = {key: list(d.choices) if hasattr(d, "choices") else [d.low, d.high]
            for key, d in space.items()}
    pinned = [f"{k}={v}" for k, v in fixed.items()]
    base = [*(as_override(k, v[0]) for k, v in ends.items()), *pinned]
    jobs = [base]
    for key, values in ends.items():
        for value in values[1:]:
            jobs.append([as_override(key, value) if o.partition("=")[0] == key else o
                         for o in base])
    searched = {key: next(g for g in reversed(given) if g.partition("=")[0] == key)
                .partition("=")[2] for key in space}
    return searched, pinned, jobs


def _refused(override: str) -> bool:
    """Whether the sweeper's parsing refuses this one override (the culprit's name)."""
    from hydra_plugins.mnist_exp_optuna.space import parse_params

    try:
        parse_params([override])
    except Exception:
        return True
    return False
