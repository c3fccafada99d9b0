"""What a setting accepts, in words, and pydantic's findings as the one line a user reads:
`<dotted.key>: got <value>; allowed: <what>`.

The words come from the declaration itself (its type, bounds, choices; an `Allowed` note
where those would not say it well), so an error message, the docs' settings tables and the
schema cannot disagree. Light: pydantic only, no TensorFlow.
"""

from __future__ import annotations

from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError


class Allowed:
    """Annotated note: what a setting accepts, where its type and bounds would not say it."""

    def __init__(self, phrase: str) -> None:
        self.phrase = phrase


def allowed(field: FieldInfo) -> str:
    """What a setting accepts, e.g. 'an integer >= 1', 'null or a number in [0, 1)'."""
    return _phrase(field.annotation, field.metadata, field.default)


def conflict(key: str, value: Any, allowed: str) -> PydanticCustomError:
    """A cross-field rule's finding, for a model validator to raise: `key` (relative to the
    section validated) got `value`, and `allowed` says what would agree with the rest."""
    return PydanticCustomError("conflict", "{key}: {allowed}",
                               {"key": key, "value": value, "allowed": allowed})


def options(annotation: Any) -> dict[str, type[BaseModel]]:
    """A family's options (a union of models told apart by `name`) by name; {} otherwise."""
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    return {m.model_fields["name"].default: m for m in members
            if isinstance(m, type) and issubclass(m, BaseModel)}


def sentence(error: dict, raw: dict, root: type[BaseModel]) -> str:
    """One of pydantic's errors about `raw`, validated as `root`, as a line that names the
    dotted key, the value given and what is allowed (or the keys allowed, for a typo)."""
    key, section, field = _locate(error["loc"], root)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key; allowed keys here are {', '.join(section.model_fields)}"
    if kind == "missing" and "." not in key:
        return f"{key}: missing; the config needs a '{key}' section"
    if kind == "conflict":
        ctx = error["ctx"]
        where = f"{key}.{ctx['key']}" if key else ctx["key"]
        return f"{where}: got {ctx['value']!r}; allowed: {ctx['allowed']}"
    if kind.startswith("union_tag"):  # no `name`, or an unknown one, in a family of options
        key = f"{key}.name"
        names = ", ".join(options(field.annotation))
        return f"{key}: got {_lookup(raw, key, None)!r}; allowed: one of {names}"
    return f"{key}: got {_lookup(raw, key, error['input'])!r}; allowed: {allowed(field)}"


def _locate(loc: tuple, root: type[BaseModel]) -> tuple[str, type[BaseModel], FieldInfo | None]:
    """An error's location as a dotted key, the section that holds it, and its field
    (None for an unknown key). Union tags in `loc` pick the option; list indices end it."""
    keys: list[str] = []
    section: Any = root
    holder, field = root, None
    for part in loc:
        if isinstance(part, int):  # an item of a list: the value shown is the whole list
            break
        if isinstance(section, dict):  # the option of a family
            section = section[part]
            continue
        holder, field = section, section.model_fields.get(part)
        keys.append(part)
        if field is None:
            break
        section = options(field.annotation) or field.annotation
    return ".".join(keys), holder, field


def _lookup(raw: Any, key: str, default: Any) -> Any:
    for part in key.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return default
        raw = raw[part]
    return raw


def _phrase(annotation: Any, metadata: list, example: Any = None) -> str:
    if get_origin(annotation) is Annotated:  # Field(...) in it holds its bounds as metadata
        base, *more = get_args(annotation)
        more = [m for item in more for m in (item.metadata if isinstance(item, FieldInfo)
                                             else [item])]
        return _phrase(base, [*more, *metadata], example)
    said = [m.phrase for m in metadata if isinstance(m, Allowed)]
    if said:
        return said[0]
    args = get_args(annotation)
    if NoneType in args:
        [rest] = [a for a in args if a is not NoneType]
        return "null or " + _phrase(rest, metadata)
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(map(str, args))
    if options(annotation):
        return "a section named one of " + ", ".join(options(annotation))
    if annotation is bool:
        return "true or false"
    if annotation in (int, float):
        return ("an integer" if annotation is int else "a number") + _bounds(metadata)
    if get_origin(annotation) is list:
        empty = any(isinstance(m, MinLen) and m.min_length for m in metadata) * "non-empty "
        e_g = f", e.g. [{','.join(map(str, example))}]" if example else ""
        return f"a {empty}list, each {_phrase(args[0], [])}{e_g}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a section with keys " + ", ".join(annotation.model_fields)
    return "a string"


def _bounds(metadata: list) -> str:
    low = next((m for m in metadata if isinstance(m, Ge | Gt)), None)
    high = next((m for m in metadata if isinstance(m, Le | Lt)), None)
    lo = low and _number(low.ge if isinstance(low, Ge) else low.gt)
    hi = high and _number(high.le if isinstance(high, Le) else high.lt)
    if low and high:
        opens, closes = "[" if isinstance(low, Ge) else "(", "]" if isinstance(high, Le) else ")"
        return f" in {opens}{lo}, {hi}{closes}"
    if low:
        return f" {'>=' if isinstance(low, Ge) else '>'} {lo}"
    if high:
        return f" {'<=' if isinstance(high, Le) else '<'} {hi}"
    return ""


def _number(x: float) -> str:
    """2**32 rather than 4294967296."""
    if isinstance(x, int) and x > 1024 and x & (x - 1) == 0:
        return f"2**{x.bit_length() - 1}"
    return str(x)
