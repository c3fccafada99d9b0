"""What a tracking store takes by its nature, and a run's values fitted to it where they are
recorded, so that no store refuses them later.

MLflow 3 refuses a key over 250 characters, and a param value over 6000 or a tag value over
8000 (or cuts it silently, unless MLFLOW_TRUNCATE_LONG_VALUES=false); a PostgreSQL store
also refuses a run name over 250 (mlflow.utils.validation and the runs table;
tests/tracking/test_upload_accepted.py checks these numbers against the installed MLflow).
A value over its limit is recorded cut to fit, ending in a marker that names the artifact
which keeps it whole; a key over its limit is cut with a hash of the whole key, so two long
keys stay two. Light: no MLflow here.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

PARAM_VALUE = 6000  # MAX_PARAM_VAL_LENGTH
TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH
KEY = 250  # MAX_ENTITY_KEY_LENGTH
RUN_NAME = 250  # the runs table's name column
WHOLE_VALUES = "whole_values"  # the artifact folder of values cut to fit


def fitted(op: str, fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """An event's fields fitted to the limits, and each value cut, whole, by the artifact
    file (e.g. whole_values/params/tracking.description.txt) that keeps it."""
    whole: dict[str, str] = {}
    if op in ("params", "tags"):
        limit = PARAM_VALUE if op == "params" else TAG_VALUE
        fields = fields | {"values": _fit(fields["values"], limit, op, whole)}
    elif op == "metrics":
        fields = fields | {"values": {fit_key(k): v for k, v in fields["values"].items()}}
    elif op == "start":
        fields = fields | {"run_name": str(fields["run_name"])[:RUN_NAME],
                           "tags": _fit(fields["tags"], TAG_VALUE, "tags", whole)}
    return fields, whole


def fit_key(key: str) -> str:
    if len(key) <= KEY:
        return key
    return f"{key[:KEY - 9]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _fit(values: dict[str, Any], limit: int, kind: str, whole: dict[str, str]) -> dict[str, Any]:
    fitted_values = {}
    for key, value in values.items():
        text = value if isinstance(value, str) else str(value)  # as the uploader sends it
        if len(text) > limit:
            name = re.sub(r"[^\w.\-]", "_", key)[:100]
            path = f"{WHOLE_VALUES}/{kind}/{name}.txt"
            whole[path] = text
            marker = f" ... [cut to fit: {len(text)} characters in all, whole in {path}]"
            value = text[:limit - len(marker)] + marker
        fitted_values[fit_key(key)] = value
    return fitted_values
