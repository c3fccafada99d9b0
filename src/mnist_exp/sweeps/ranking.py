"""Ranking and comparing runs by validation accuracy: the table, the groups and the plot
that `python -m mnist_exp.report` and a sweep's summary show.

Ranking uses the validation metric only: the test set is for reporting, never for choosing.
Built on MLflow's own query API.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from matplotlib.figure import Figure

from mnist_exp.sweeps.labels import short_labels
from mnist_exp.sweeps.study import PRUNED_TAG

SWEEP_TAG = "mnist_exp.sweep"  # "parent" on a sweep's own run
VALIDATION = "final_val_accuracy"
TEST = "test_accuracy"
_NOT_A_DIFFERENCE = ("tracking.",)  # bookkeeping
TOP = 20  # runs shown one by one in tables and plots; the rest as a distribution


@dataclass(frozen=True)
class Row:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    val_accuracy: float | None
    test_accuracy: float | None
    seconds: float | None
    pruned: bool = False  # stopped early by Optuna's pruner (study.PRUNED_TAG)


def load_rows(client, experiment_ids: list[str], parent_run_id: str | None = None) -> list[Row]:
    """The runs of the experiments (sweep parents left out), or the children of one sweep."""
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'" if parent_run_id else ""
    runs = [r for r in client.search_runs(experiment_ids, filter_string=query,
                                          max_results=50000)
            if r.data.tags.get(SWEEP_TAG) != "parent"]
    return [Row(run_id=r.info.run_id, name=r.info.run_name or r.info.run_id[:8],
                status=r.info.status, params=dict(r.data.params),
                val_accuracy=r.data.metrics.get(VALIDATION),
                test_accuracy=r.data.metrics.get(TEST),
                seconds=(r.info.end_time - r.info.start_time) / 1000 if r.info.end_time else None,
                pruned=r.data.tags.get(PRUNED_TAG) == "true")
            for r in runs]


def ranked(row: Row) -> bool:
    """Whether a run takes a rank: it FINISHED with a score. A run stopped on the way
    (KILLED: Ctrl-C, SLURM's scancel, time limit or preemption) never does, whatever it
    logged before it stopped."""
    return row.status == "FINISHED" and row.val_accuracy is not None


def rank(rows: list[Row]) -> list[Row]:
    """Best validation accuracy first; runs without a rank (failed, stopped, running) last."""
    return sorted(rows, key=lambda r: (not ranked(r), -(r.val_accuracy or 0), r.name))


def differing_params(rows: list[Row]) -> list[str]:
    """The config keys whose values differ between the runs that have them: what the
    comparison is about. (A job that failed before its run started recorded only its
    overrides; the keys it lacks do not make every other key a difference.)"""
    keys = sorted({k for r in rows for k in r.params if not k.startswith(_NOT_A_DIFFERENCE)})
    return [k for k in keys if len({r.params[k] for r in rows if k in r.params}) > 1]


def describe(row: Row, keys: list[str]) -> str:
    return " ".join(f"{k}={row.params.get(k)}" for k in keys) or row.name


def to_markdown(rows: list[Row], keys: list[str], top: int = TOP) -> str:
    """The `top` best runs, one line each; the rest as one line of their distribution."""
    head = ["rank", "run", *keys, "val accuracy", "test accuracy", "seconds", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for i, r in enumerate(rows[:top], 1):
        name = r.run_id[:8] if keys else f"{r.name} ({r.run_id[:8]})"
        cells = [str(i) if ranked(r) else "-", name, *(str(r.params.get(k)) for k in keys),
                 _fmt(r.val_accuracy), _fmt(r.test_accuracy),
                 "" if r.seconds is None else f"{r.seconds:.1f}",
                 f"{r.status} (pruned)" if r.pruned else r.status]
        lines.append("| " + " | ".join(cells) + " |")
    rest = rows[top:]
    if rest:
        scores = sorted(r.val_accuracy for r in rest if ranked(r))
        spread = (f": val accuracy min {scores[0]:.4f}, quartiles "
                  + ", ".join(f"{q:.4f}" for q in statistics.quantiles(scores, n=4))
                  + f", max {scores[-1]:.4f}") if len(scores) > 1 else ""
        lines.append(f"\n... and {len(rest)} more runs ({len(rest) - len(scores)} without a "
                     f"score){spread}; see comparison.png")
    return "\n".join(lines) + "\n"


def group_table(rows: list[Row], key: str) -> str:
    """One line per value of config key `key`: how its finished runs scored, as mean ±
    sample standard deviation, best mean validation accuracy first."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        if r.status == "FINISHED" and r.test_accuracy is not None:
            groups.setdefault(r.params.get(key, "(not set)"), []).append(r)
    head = [key, "runs", "test accuracy", "min - max", "val accuracy", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for value, members in sorted(groups.items(),
                                 key=lambda g: -statistics.mean(_vals(g[1], "val_accuracy"))):
        tests = _vals(members, "test_accuracy")
        cells = [value, str(len(members)), _mean_sd(tests), f"{min(tests):.4f} - {max(tests):.4f}",
                 _mean_sd(_vals(members, "val_accuracy")),
                 f"{statistics.mean(_vals(members, 'seconds')):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _vals(rows: list[Row], field: str) -> list[float]:
    return [getattr(r, field) for r in rows if getattr(r, field) is not None] or [float("nan")]


def _mean_sd(values: list[float]) -> str:
    mean = f"{statistics.mean(values):.4f}"
    return f"{mean} ± {statistics.stdev(values):.4f}" if len(values) > 1 else mean


def plot_comparison(rows: list[Row], keys: list[str], top: int = TOP) -> Figure:
    """The `top` runs' validation (and, for reference, test) accuracy, best at the top,
    pruned trials hatched; beside them, when there are more, every run's validation
    accuracy as a histogram. Drawing stays cheap at thousands of runs: one bar per shown
    run, one histogram. Labels are short (labels.short_labels); the table has exact values."""
    scored = [r for r in rows if ranked(r)]
    shown = scored[:top]
    fig = Figure(figsize=(10 if len(scored) <= top else 14, 1.6 + 0.5 * max(1, len(shown))),
                 layout="constrained")
    ax, *hist = fig.subplots(1, 1 if len(scored) <= top else 2, squeeze=False)[0]
    positions = range(len(shown))[::-1]
    for pruned, style in [(False, {"label": "validation (ranks)"}),
                          (True, {"label": "validation, pruned trial (stopped early)",
                                  "hatch": "///", "alpha": 0.55})]:
        at = [(p, r) for p, r in zip(positions, shown, strict=True) if r.pruned == pruned]
        if at:
            ax.barh([p + 0.2 for p, _ in at], [r.val_accuracy for _, r in at], height=0.4,
                    color="C0", **style)
    ax.barh([p - 0.2 for p in positions], [r.test_accuracy or 0 for r in shown], height=0.4,
            label="test (reported)", color="C1", alpha=0.6)
    ax.set_yticks(list(positions), short_labels(shown, keys), fontsize=8)
    low = min([r.val_accuracy for r in shown] + [r.test_accuracy or 1 for r in shown],
              default=0)
    ax.set_xlim(max(0.0, low - 0.05), 1.0)
    ax.set_xlabel("accuracy")
    ax.set_title(f"Best {len(shown)} of {len(rows)} runs by validation accuracy")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3,
               fontsize=8)
    for axis in hist:
        axis.hist([r.val_accuracy for r in scored], bins=40)
        axis.axvline(shown[-1].val_accuracy, color="black", linestyle="--",
                     label=f"best {len(shown)}")
        axis.set_xlabel("validation accuracy")
        axis.set_ylabel("runs")
        axis.set_title(f"All {len(scored)} scored runs")
        axis.legend()
    return fig


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"

