"""What a user may name a model by (a run id, a logged-model id m-..., any MLflow model URI),
turned into the URI MLflow loads; light, so commands can take a reference before MLflow is
imported."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mnist_exp.errors import UserError, first_line


def model_uri(model: str) -> str:
    """A run id or logged-model id becomes a URI; anything else is taken as one."""
    if re.fullmatch(r"[0-9a-f]{32}", model):
        return f"runs:/{model}/model"
    if re.fullmatch(r"m-[0-9a-f]{32}", model):
        return f"models:/{model}"
    return model


def load_model(model_ref: str, loader: Callable[[str], Any]) -> tuple[Any, str]:
    """The model `model_ref` names (see model_uri), loaded by `loader` (an MLflow flavour's
    load_model), and its URI; one line (UserError) when there is no such model or alias."""
    uri = model_uri(model_ref)
    try:
        return loader(uri), uri
    except Exception as e:
        raise UserError(f"cannot load model {uri!r}: {first_line(e)}") from None
