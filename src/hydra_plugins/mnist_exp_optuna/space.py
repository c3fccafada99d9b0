"""`hydra.sweeper.params` (Hydra's sweep syntax) as Optuna distributions.

    choice(a, b, ...)            -> categorical
    range(start, stop[, step])   -> int (or float) steps; shuffle(range(...)) -> categorical
    interval(low, high)          -> float (Hydra's intervals are always float)
    tag(log, interval(...))      -> the same on a log scale
    anything else                -> a fixed value passed to every trial

Optuna is imported inside the functions: Hydra imports every module under hydra_plugins
whenever it starts, and a plain run should not pay for Optuna.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution


def parse_params(overrides: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """Split `key=value` overrides into a search space and fixed values."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = _distribution(override)
            fixed.pop(key, None)
        else:
            fixed[key] = override.get_value_element_as_str()
            space.pop(key, None)  # a value on the command line pins a searched key
    return space, fixed


def _distribution(override: Override) -> BaseDistribution:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(
            list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():  # Hydra's range excludes stop; Optuna's high is inclusive
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            steps = int((value.stop - value.start) / value.step - 1e-9)
            return FloatDistribution(value.start, value.start + steps * value.step,
                                     step=value.step)
        steps = (int(value.stop) - int(value.start) - 1) // int(value.step)
        return IntDistribution(int(value.start), int(value.start) + steps * int(value.step),
                               step=int(value.step))
    if override.is_interval_sweep():
        return FloatDistribution(float(value.start), float(value.end), log="log" in value.tags)
    raise ValueError(f"{override.input_line}: not a sweep Optuna can search")


def as_override(key: str, value: Any) -> str:
    """A sampled value as a command-line override (categoricals are already encoded)."""
    return f"{key}={value}"
