"""The kinds of value several settings share, and `Section`, the base of every group of
settings: declared once, so a count or a fraction is checked and explained alike everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StringConstraints,
)

from mnist_exp.config.explain import Allowed


def _exists(path: str) -> str:
    if not Path(path).expanduser().exists():
        raise ValueError("no such file or folder")
    return path


# Integers and numbers are strict (2.5 and true are no integer, true no number), as
# OmegaConf's typed configs were.
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
