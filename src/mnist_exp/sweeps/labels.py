"""Short labels for runs in a plot: what sets each run apart, at a glance. The exact values
stay in the ranking table and in the runs' params."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mnist_exp.sweeps.ranking import Row

DIGITS = 3  # significant digits of a float in a label
LINE = 50  # characters per label line; two lines at most, then "…"
PRUNED = "(pruned)"


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its shortest suffix no other key ends with: model.dropout ->
    dropout, but a.lr and b.lr stay a.lr and b.lr."""
    split = {key: key.split(".") for key in keys}
    short = {}
    for key, parts in split.items():
        for n in range(1, len(parts) + 1):
            suffix = parts[-n:]
            if all(other[-n:] != suffix for k, other in split.items() if k != key):
                break
        short[key] = ".".join(suffix)
    return short


def short_value(value: str | None) -> str:
    """A float at DIGITS significant digits (0.24689779818219537 -> 0.247); anything else
    (ints, lists, names) as it is."""
    if value is None:
        return "-"
    try:
        int(value)
        return value
    except ValueError:
        pass
    try:
        return f"{float(value):.{DIGITS}g}"
    except ValueError:
        return value


def short_labels(rows: Sequence[Row], keys: Sequence[str]) -> list[str]:
    """One label per run, in the rows' order: `#rank key=value ...`, `(pruned)` for a trial
    Optuna stopped early, wrapped onto two lines of LINE characters."""
    names = short_keys(keys)
    labels = []
    for rank, row in enumerate(rows, 1):
        items = [f"{names[k]}={short_value(row.params.get(k))}" for k in keys] or [row.name]
        labels.append(wrap([f"#{rank}", *items, *([PRUNED] if row.pruned else [])]))
    return labels


def wrap(items: Sequence[str], width: int = LINE, lines: int = 2) -> str:
    """The items joined by spaces, on at most `lines` lines of `width`; cut with "…"."""
    out = [""]
    for item in items:
        if out[-1] and len(out[-1]) + 1 + len(item) > width:
            out.append("")
        out[-1] = f"{out[-1]} {item}".strip()
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][:width - 2] + " …"
    return "\n".join(line if len(line) <= width else line[:width - 1] + "…" for line in out)
