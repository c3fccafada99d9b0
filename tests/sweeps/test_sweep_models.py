"""Which of a sweep's jobs keep their model and figures (tracking.keep_in_sweeps): by default
only a job at least as good as the sweep's best so far, so the best job's model is always
logged and registered, and crowned champion as before; every job records its numbers."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from helpers import TINY, run_module, sweep_runs

FIGURES = {"curves.png", "confusion_matrix.png", "sample_predictions.png"}


@pytest.mark.parametrize("policy", [
    "improving", pytest.param("all", marks=pytest.mark.slow)])
def test_a_sweep_keeps_the_models_and_figures_its_policy_says_and_always_the_best(
        mini, tmp_path, policy):
    # The second job (a rate too small to learn much in 2 epochs) is worse than the first.
    result = run_module("mnist_exp.run", "-m", f"data.path={mini}", *TINY,
                        "optimizer.learning_rate=3e-3,1e-5", "tracking.register_model=true",
                        f"tracking.keep_in_sweeps={policy}", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, [parent], children = sweep_runs(uri)
    first, second = sorted(children, key=lambda r: int(r.data.tags["sweep.job"]))
    assert first.data.metrics["final_val_accuracy"] > second.data.metrics["final_val_accuracy"]
    assert parent.data.tags["best_run_id"] == first.info.run_id

    def models_of(run) -> list:
        return client.search_logged_models([run.info.experiment_id],
                                           f"source_run_id = '{run.info.run_id}'")

    assert len(models_of(first)) == 1
    assert len(models_of(second)) == (1 if policy == "all" else 0)
    versions = {v.run_id for v in client.search_model_versions("name = 'mnist-exp'")}
    assert versions == ({first.info.run_id, second.info.run_id} if policy == "all"
                        else {first.info.run_id})
    assert client.get_model_version_by_alias("mnist-exp", "champion").run_id == \
        first.info.run_id
    for run in children:
        assert "test_accuracy" in run.data.metrics
        assert "classification_report.json" in {a.path for a in
                                                 client.list_artifacts(run.info.run_id)}
    kept = children if policy == "all" else [first]
    for run in children:
        drawn = {a.path for a in client.list_artifacts(run.info.run_id)} & FIGURES
        assert drawn == (FIGURES if run in kept else set())
    png = mlflow.artifacts.download_artifacts(run_id=first.info.run_id, tracking_uri=uri,
                                              artifact_path="curves.png", dst_path=str(tmp_path))
    assert Path(png).read_bytes()[:4] == b"\x89PNG"
