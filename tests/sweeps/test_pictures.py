"""Pictures of a sweep a person can read: short labels in the comparison plot
(labels.short_labels), pruned trials marked there, in sweep_ranking.md and in Optuna's
history, and the exact values kept in the table."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib
import optuna
import pytest

from helpers import run_module, sweep_runs
from hydra_plugins.mnist_exp_optuna.results import plot_history
from mnist_exp.sweeps.labels import short_keys, short_labels, short_value
from mnist_exp.sweeps.ranking import (
    Row,
    differing_params,
    load_rows,
    plot_comparison,
    rank,
    to_markdown,
)

matplotlib.use("Agg")

SEARCH = ("-m", "hparams_search=optuna", "data=mnist_sample", "data.max_train_samples=300",
          "data.max_test_samples=200", "trainer.epochs=2", "hydra.sweeper.n_trials=4",
          # 240 training samples: no batch of 256; one finished trial sets the pruning bar
          "trainer.batch_size=choice(32,64,128)", "hydra.sweeper.pruner.n_startup_trials=1",
          "hydra.sweep.dir=sweep")
KEYS = ["model.dropout", "model.hidden_units", "optimizer.learning_rate", "trainer.batch_size"]


def row(n: int, dropout: str, units: str, rate: str, batch: str, pruned: bool = False) -> Row:
    params = dict(zip(KEYS, [dropout, units, rate, batch], strict=True)) | {"trainer.epochs": "2"}
    return Row(f"run{n:06d}", f"run {n}", "FINISHED", params, 0.9 - n / 100, 0.8, 3.0, pruned)


ROWS = [row(1, "0.24689779818219537", "[512, 128]", "0.0012662938340704346", "64"),
        row(2, "0.07799726016810132", "[64, 32]", "0.00010994335574766199", "128", pruned=True),
        row(3, "0.4", "[64, 32]", "1e-05", "32")]


def test_keys_go_by_their_shortest_suffix_no_other_key_ends_with():
    assert list(short_keys(KEYS).values()) == ["dropout", "hidden_units", "learning_rate",
                                               "batch_size"]
    assert short_keys(["a.x.lr", "b.x.lr", "c.lr", "model.dropout", "lr"]) == {
        "a.x.lr": "a.x.lr", "b.x.lr": "b.x.lr", "c.lr": "c.lr", "model.dropout": "dropout",
        "lr": "lr"}


def test_floats_read_at_three_significant_digits_other_values_as_they_are():
    assert [short_value(v) for v in ["0.24689779818219537", "0.00010994335574766199", "1e-05",
                                     "0.4", "64", "[512, 128]", "adam", "True", None]] == [
        "0.247", "0.00011", "1e-05", "0.4", "64", "[512, 128]", "adam", "True", "-"]


def test_labels_show_every_differing_key_short_and_mark_pruned_trials():
    labels = short_labels(ROWS, differing_params(ROWS))
    assert labels == [
        "#1 dropout=0.247 hidden_units=[512, 128]\nlearning_rate=0.00127 batch_size=64",
        "#2 dropout=0.078 hidden_units=[64, 32]\nlearning_rate=0.00011 batch_size=128 (pruned)",
        "#3 dropout=0.4 hidden_units=[64, 32]\nlearning_rate=1e-05 batch_size=32"]
    assert short_labels([ROWS[0]], []) == ["#1 run 1"]  # nothing differs: the run's name


def test_the_plot_is_given_those_labels_and_hatches_pruned_trials():
    figure = plot_comparison(ROWS, differing_params(ROWS))
    [bars] = figure.axes
    assert [t.get_text() for t in bars.get_yticklabels()] == short_labels(
        ROWS, differing_params(ROWS))
    assert [p.get_hatch() for p in bars.patches].count("///") == 1
    assert "validation, pruned trial (stopped early)" in [
        t.get_text() for t in figure.legends[0].get_texts()]


def test_the_table_keeps_exact_values_and_marks_pruned_trials():
    table = to_markdown(ROWS, differing_params(ROWS))
    assert "| 0.24689779818219537 | [512, 128] | 0.0012662938340704346 | 64 |" in table
    assert [line.endswith("| FINISHED (pruned) |") for line in table.splitlines()[2:]] == [
        False, True, False]


@pytest.mark.slow
def test_a_real_search_leaves_pictures_with_short_labels_and_its_pruned_trials(tmp_path):
    result = run_module("mnist_exp.run", *SEARCH, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client, [parent], children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}",
                                            "mnist_sample")
    pruned = {r.info.run_id[:8] for r in children if r.data.tags.get("optuna.pruned") == "true"}
    assert pruned, "no trial was pruned: the test cannot see how pruned trials are shown"
    table = Path(client.download_artifacts(parent.info.run_id, "sweep_ranking.md",
                                           str(tmp_path))).read_text()
    marked = {line.split(" | ")[1] for line in table.splitlines() if "(pruned)" in line}
    assert marked == pruned

    # The comparison plot the summary drew, drawn again from the same store.
    rows = rank(load_rows(client, [parent.info.experiment_id], parent.info.run_id))
    keys = differing_params(rows)
    assert [key.rsplit(".")[-1] for key in keys] == [
        "dropout", "hidden_units", "learning_rate", "batch_size"]
    labels = [t.get_text() for t in plot_comparison(rows, keys).axes[0].get_yticklabels()]
    assert labels == short_labels(rows, keys) and len(labels) == 4
    for label, r in zip(labels, rows, strict=True):
        assert ("(pruned)" in label) == (r.run_id[:8] in pruned)
        assert "learning_rate=" in label and "batch_size=" in label and "…" not in label
        assert all(len(line) <= 50 for line in label.splitlines())
        assert r.params["model.dropout"] not in label  # 17 digits: the table has them

    # Optuna's history: the pruned trials with a marker of their own, the legend in the picture.
    study = optuna.load_study(study_name="mnist_exp",
                              storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental"
        ax = plot_history(study)
        figure = ax.get_figure()
        figure.canvas.draw()
        legend = ax.get_legend()
        assert "Pruned (last reported value)" in [t.get_text() for t in legend.get_texts()]
        marked = [c for c in ax.collections if c.get_label().startswith("Pruned")]
        assert sorted(x for x, _ in marked[0].get_offsets()) == [
            t.number for t in study.trials if t.state.name == "PRUNED"]
        inside = legend.get_window_extent()
        assert figure.bbox.x0 <= inside.x0 and inside.x1 <= figure.bbox.x1
        assert figure.bbox.y0 <= inside.y0
