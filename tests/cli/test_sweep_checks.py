"""A sweep is checked whole before anything starts: every job of a grid, each end of an
Optuna search space; one line naming the job, exit 2, no MLflow run and no folder made.
Its jobs can be listed without running them (hydra.callbacks.mlflow_sweep.list_jobs)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from helpers import own_lines, run_module
from mnist_exp.cli.checks import CONF_DIR, _JobChecker, plan_sweep
from mnist_exp.config.schema import parse_config
from mnist_exp.sweeps.study import ALLOWED

# (the sweep's overrides, the line it must end with, after "mnist-exp: error: ")
MISTAKES = [
    (["optimizer.learning_rate=0.001,0.002,0.0o3"],
     "job 2 (optimizer.learning_rate=0.0o3): optimizer.learning_rate: got '0.0o3'; allowed: "
     "a number > 0; no job was started"),
    (["optimizer.learning_rate=0.001,-1", "trainer.epochs=1,2"],
     "job 2 (optimizer.learning_rate=-1 trainer.epochs=1): optimizer.learning_rate: got -1; "
     "allowed: a number > 0; no job was started"),
    (["data=mnist_sample,nope"],
     "job 1 (data=nope): data=nope: no such option; allowed: fashion_mnist, mnist, "
     "mnist_sample; no job was started"),
    (["model=mlp,cnn", "model.kernel_size=3"],
     "job 0 (model=mlp): model.kernel_size: unknown key; allowed keys here are name, "
     "hidden_units, activation, dropout, batch_norm; no job was started"),
    (["hparams_search=optuna", "model.dropout=interval(0.0, 1.5)"],
     "hydra.sweeper.params: the search space reaches model.dropout=1.5: model.dropout: got "
     "1.5; allowed: a number in [0, 1); no trial was started"),
    (["hparams_search=optuna", "trainer.batch_size=choice(32, 0)"],
     "hydra.sweeper.params: the search space reaches trainer.batch_size=0: "
     "trainer.batch_size: got 0; allowed: an integer >= 1; no trial was started"),
    (["hparams_search=optuna", "optimizer.learning_rate=tag(log, interval(0, 0.1))"],
     "hydra.sweeper.params: optimizer.learning_rate=tag(log, interval(0, 0.1)): `low > 0` "
     "must hold for `log=True`, but got (low=0.0, high=0.1)."),
]


@pytest.mark.parametrize(("overrides", "line"), MISTAKES,
                         ids=[" ".join(o)[:40] for o, _ in MISTAKES])
def test_a_mistake_in_any_job_stops_the_sweep_before_it_starts(tmp_path, overrides, line):
    result = run_module("mnist_exp.run", "-m", *overrides, "hydra.sweep.dir=sweep",
                        cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert own_lines(result.stderr) == [f"mnist-exp: error: {line}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no sweep folder, no store


def test_the_jobs_of_a_sweep_are_listed_without_running_any(tmp_path):
    result = run_module("mnist_exp.run", "-m", "data=mnist_sample", "model=mlp,cnn",
                        "optimizer.learning_rate=1e-3,1e-4",
                        "hydra.callbacks.mlflow_sweep.list_jobs=true", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "0: data=mnist_sample model=mlp optimizer.learning_rate=0.001",
        "1: data=mnist_sample model=mlp optimizer.learning_rate=0.0001",
        "2: data=mnist_sample model=cnn optimizer.learning_rate=0.001",
        "3: data=mnist_sample model=cnn optimizer.learning_rate=0.0001"]
    assert list(tmp_path.iterdir()) == []


def test_an_optuna_search_lists_its_space(tmp_path):
    result = run_module("mnist_exp.run", "-m", "hparams_search=optuna", "trainer.epochs=2",
                        "hydra.callbacks.mlflow_sweep.list_jobs=true", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Optuna search of 20 trials")
    assert "  model.dropout=interval(0.0, 0.5)" in lines
    assert lines[-1] == "with: hparams_search=optuna trainer.epochs=2"
    assert list(tmp_path.iterdir()) == []


def test_every_job_of_a_large_grid_is_checked():
    """300 jobs, each checked (how long it takes is the docs' figure, not an assert)."""
    overrides = ["model=mlp,cnn", "optimizer=adam,sgd", "optimizer.learning_rate=range(1,6)",
                 "model.dropout=0.0,0.1,0.2,0.3,0.4", "trainer.batch_size=32,64,128"]
    plan = plan_sweep(overrides)
    assert len(plan.jobs) == plan.checked == 300


@pytest.mark.parametrize("job", [
    ["model=cnn", "model.filters=[8,16]", "optimizer.learning_rate=0.01"],
    ["experiment=cnn", "trainer.epochs=3", "data=mnist_sample"],
    ["experiment=mlp_tuned", "optimizer=sgd", "~trainer.early_stopping"],
    ["+tracking.tags.team=vision", "data.max_train_samples=600", "data=fashion_mnist"],
])
def test_a_checked_job_is_the_config_hydra_composes(job):
    """The shortcut (each set of group choices composed once, the other overrides applied
    to a copy) gives exactly the config Hydra composes for the job."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        assert _JobChecker().config(job) == parse_config(compose("config", job))


def test_a_study_storage_that_names_none_stops_the_search_before_anything_is_made(tmp_path):
    """The sweeper's own line (sweeps.study.resolve_storage), before the sweep's parent run,
    its folder or a tracking store exist: until the check came first, mlflow.db and a
    KILLED parent run were left behind."""
    result = run_module("mnist_exp.run", "-m", "hparams_search=optuna",
                        "hydra.sweeper.storage=mongodb://me:hunter2@db/optuna",
                        "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert own_lines(result.stderr) == [
        f"mnist-exp: error: hydra.sweeper.storage=mongodb://me:***@db/optuna: not a study "
        f"storage; allowed: {ALLOWED}"]
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no sweep folder, no study
