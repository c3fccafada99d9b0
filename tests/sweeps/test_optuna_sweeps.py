"""Searches that survive failures and pick up where they stopped: our Optuna sweeper
(failed and pruned trials, a resumable study, parallel trials), resumable grid sweeps and
concurrent sweeps."""

from __future__ import annotations

import shutil
import subprocess
import sys

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from helpers import ONE_EPOCH, TINY, child_env, own_lines, run_module, sweep_runs
from hydra_plugins.mnist_exp_optuna.space import parse_params

SEARCH = ("-m", "hparams_search=optuna")


def study_of(workdir, name="mnist_exp"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}")


def states(study) -> list[str]:
    return [t.state.name for t in study.trials]


def test_sweep_syntax_becomes_optuna_distributions():
    space, fixed = parse_params([
        "a=choice(32,64)", "b=tag(log, interval(1e-4, 1e-2))", "c=interval(0.0, 0.5)",
        "d=range(1, 10, 3)", "e=interval(1, 4)", "optimizer=sgd", "c=0.3"])
    assert space == {"a": CategoricalDistribution([32, 64]),
                     "b": FloatDistribution(1e-4, 1e-2, log=True),
                     "d": IntDistribution(1, 7, step=3), "e": FloatDistribution(1, 4)}
    assert fixed == {"optimizer": "sgd", "c": "0.3"}  # a value on the command line pins a key


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_failed_and_the_search_goes_on(mini, tmp_path):
    result = run_module("mnist_exp.run", *SEARCH, f"data.path={mini}", *ONE_EPOCH,
                        "optimizer=sgd", "optimizer.learning_rate=choice(1e12,0.01)",
                        "hydra.sweeper.n_trials=4", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    study = study_of(tmp_path)
    assert len(study.trials) == 4 and "COMPLETE" in states(study)
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed and all("loss became nan" in t.user_attrs["fail_reason"] for t in failed)
    client, [parent], children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["failed_jobs"] == len(failed)
    assert sorted(r.info.status for r in children) == sorted(
        "FAILED" if s == "FAIL" else "FINISHED" for s in states(study))
    assert f"{len(failed)} failed" in result.stdout
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "optuna_history.png", "optuna_parallel_coordinates.png", "sweep_ranking.md"}


def test_a_search_space_the_schema_refuses_stops_before_any_trial(tmp_path):
    """Each choice and each end of each range is checked before the study or a run is made
    (cli/checks.py); the sweeper's FAIL of a trial is for what only training shows."""
    result = run_module("mnist_exp.run", *SEARCH, "model.dropout=choice(1.5,2.5)",
                        "hydra.sweeper.n_trials=2", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line == ("mnist-exp: error: hydra.sweeper.params: the search space reaches "
                    "model.dropout=1.5: model.dropout: got 1.5; allowed: a number in [0, 1); "
                    "no trial was started")
    assert list(tmp_path.iterdir()) == []  # no study, no tracking store, no sweep folder


@pytest.mark.slow
def test_the_same_search_again_continues_its_study_with_parallel_trials(mini, tmp_path):
    command = (*SEARCH, f"data.path={mini}", *ONE_EPOCH, "hydra/launcher=joblib",
               "hydra.sweeper.n_jobs=2")
    first = run_module("mnist_exp.run", *command, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_module("mnist_exp.run", *command, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    study = study_of(tmp_path)
    assert states(study) == ["COMPLETE"] * 3  # n_trials counts the total
    _, parents, children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    per_parent = sorted(sum(c.data.tags["mlflow.parentRunId"] == p.info.run_id
                            for c in children) for p in parents)
    assert per_parent == [1, 2]  # the second run only ran the trial still missing
    assert {r.info.status for r in children} == {"FINISHED"}
    [pair] = [p for p in parents if p.data.metrics["jobs"] == 2]
    [best] = [c for c in children if c.info.run_id == pair.data.tags["best_run_id"]]
    rate = best.data.params["optimizer.learning_rate"]
    assert f"optimizer.learning_rate={rate}" in pair.data.tags["best_config"]
    # Each search writes Optuna's best so far beside its jobs; the second's is the study's.
    results = sorted(tmp_path.glob("outputs/multirun/*/*/optimization_results.yaml"))
    assert len(results) == 2
    assert OmegaConf.load(results[-1]).best_trial == study.best_trial.number
    sampled = [t.params for t in study.trials]
    assert sampled[0] != sampled[1]  # the parallel trials of one search
    assert sampled[2] not in sampled[:2]  # the continued study proposes anew


@pytest.mark.slow
def test_a_trial_worse_than_the_median_is_pruned_and_keeps_what_it_reached(mini, tmp_path):
    def search(rate: float, trials: int) -> subprocess.CompletedProcess:
        return run_module("mnist_exp.run", *SEARCH, f"data.path={mini}", *TINY,
                          "tracking.log_model=false",
                          f"optimizer.learning_rate=interval({rate},{rate * 1.01})",
                          "hydra.sweeper.pruner.n_startup_trials=1",
                          f"hydra.sweeper.n_trials={trials}", cwd=tmp_path)

    first = search(0.003, 1)  # the median to beat
    assert first.returncode == 0, first.stderr[-3000:]
    result = search(1e-7, 2)  # learns nothing in its first epoch
    assert result.returncode == 0, result.stderr[-3000:]
    assert states(study_of(tmp_path)) == ["COMPLETE", "PRUNED"]
    client, _, children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [pruned] = [r for r in children if r.data.tags.get("optuna.pruned") == "true"]
    assert pruned.info.status == "FINISHED" and "test_accuracy" in pruned.data.metrics
    assert len(client.get_metric_history(pruned.info.run_id, "val_accuracy")) == 1  # of 2
    assert "1 pruned" in result.stdout


def test_a_resumed_grid_sweep_skips_finished_jobs_and_reruns_failed_ones(mini, tmp_path):
    later = tmp_path / "later"  # a folder whose data appears only after the first try
    later.mkdir()
    command = ("-m", f"data.path={mini},{later}", *ONE_EPOCH, "hydra.sweep.dir=sweep")
    first = run_module("mnist_exp.run", *command, cwd=tmp_path)
    assert first.returncode == 2 and "1 job(s) failed" in first.stderr  # a mistake: exit 2
    shutil.copytree(mini, later, dirs_exist_ok=True)
    again = run_module("mnist_exp.run", *command, "hydra.callbacks.mlflow_sweep.resume=true",
                       cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    _, [parent], children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert parent.info.status == "FINISHED" and parent.data.metrics["failed_jobs"] == 0
    by_path = sorted((r.data.params["data.path"], r.info.status) for r in children)
    assert by_path == sorted([(str(mini), "FINISHED"), (str(later), "FAILED"),
                              (str(later), "FINISHED")])  # the finished job ran once
    assert "0 failed" in again.stdout


def test_two_sweeps_started_together_never_collide(mini, tmp_path):
    command = [sys.executable, "-m", "mnist_exp.run", "-m", f"data.path={mini}", *ONE_EPOCH,
               "optimizer.learning_rate=1e-3"]
    sweeps = [subprocess.Popen(command, cwd=tmp_path, env=child_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
              for _ in range(2)]
    for sweep in sweeps:
        _, stderr = sweep.communicate(timeout=600)
        assert sweep.returncode == 0, stderr[-3000:]
    folders = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(folders) == 2
    _, parents, children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    assert sorted(c.data.tags["mlflow.parentRunId"] for c in children) == sorted(
        p.info.run_id for p in parents)

    again = run_module("mnist_exp.run", *command[3:], f"hydra.sweep.dir={folders[0]}",
                       cwd=tmp_path)
    assert again.returncode == 2
    [line] = own_lines(again.stderr)
    assert "already holds a sweep" in line and "resume=true" in line
    assert len(sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")[1]) == 2  # no third parent
