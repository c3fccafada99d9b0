"""Where an Optuna study lives: a SQLite file for jobs on one machine, Optuna's journal file
for jobs sharing a file system, PostgreSQL for a team. Real Optuna throughout; the searches
run for real, the PostgreSQL one on a real server (conftest.py's postgres)."""

from __future__ import annotations

import optuna
import psycopg2
import pytest
from optuna.storages.journal import JournalFileOpenLock

from helpers import run_module, sweep_runs
from mnist_exp.errors import ConfigError
from mnist_exp.sweeps.study import cluster_note, open_storage, resolve_storage

SEARCH = ("-m", "hparams_search=optuna", "data=mnist_sample", "data.max_train_samples=300",
          "data.max_test_samples=200", "trainer.epochs=1", "tracking.log_model=false",
          "trainer.batch_size=choice(32,64,128)",  # 240 training samples: no batch of 256
          "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2")
SLURM = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}


def test_storage_strings_resolve_against_the_launch_folder(tmp_path):
    here = tmp_path.resolve()
    assert resolve_storage(None, tmp_path) == f"sqlite:///{here}/optuna.db"
    assert resolve_storage("sqlite:///s/o.db", tmp_path) == f"sqlite:///{here}/s/o.db"
    assert resolve_storage("sqlite:////abs/o.db?timeout=9", tmp_path) == (
        "sqlite:////abs/o.db?timeout=9")
    assert resolve_storage("journal:s/optuna.log", tmp_path) == f"journal:{here}/s/optuna.log"
    assert resolve_storage("journal:/shared/o.log", tmp_path) == "journal:/shared/o.log"
    assert resolve_storage("journal:///shared/o.log", tmp_path) == "journal:/shared/o.log"
    for url in ("postgresql://me:pw@db.internal/optuna", "postgresql+psycopg2://db/optuna"):
        assert resolve_storage(url, tmp_path) == url


@pytest.mark.parametrize("bad", ["optuna.log", "journal:", "journal:///", "sqlite:///",
                                 "mongodb://me:hunter2@db/optuna"])
def test_a_string_that_names_no_storage_is_one_line_naming_those_allowed(tmp_path, bad):
    with pytest.raises(ConfigError) as caught:
        resolve_storage(bad, tmp_path)
    line = str(caught.value)
    assert line.startswith("hydra.sweeper.storage=") and "\n" not in line
    assert all(kind in line for kind in ("sqlite:///", "journal:PATH", "postgresql://"))
    assert "hunter2" not in line


def test_a_job_and_the_sweeper_share_a_study_through_its_journal_file(tmp_path):
    url = resolve_storage("journal:studies/optuna.log", tmp_path)
    storage = open_storage(url)
    assert isinstance(storage._backend._lock, JournalFileOpenLock)  # O_EXCL: NFSv3 honours it
    sweeper = optuna.create_study(study_name="s", storage=storage)
    asked = sweeper.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    job = optuna.load_study(study_name="s", storage=open_storage(url))  # its own reader
    optuna.trial.Trial(job, asked._trial_id).report(0.5, step=0)
    sweeper.tell(asked, 0.7)
    [trial] = optuna.load_study(study_name="s", storage=open_storage(url)).trials
    assert trial.intermediate_values == {0: 0.5} and trial.value == 0.7
    assert (tmp_path / "studies" / "optuna.log").stat().st_size > 0


def test_a_sqlite_study_under_slurm_is_warned_about_in_one_line(tmp_path):
    sqlite, journal = (resolve_storage(s, tmp_path) for s in (None, "journal:o.log"))
    note = cluster_note(sqlite, SLURM)
    assert note is not None and "journal:PATH" in note and "\n" not in note
    assert cluster_note(sqlite, {"_target_": "hydra_plugins.hydra_joblib_launcher."
                                              "joblib_launcher.JoblibLauncher"}) is None
    assert cluster_note(journal, SLURM) is None


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state.name == "COMPLETE"]


@pytest.mark.slow
def test_a_parallel_search_on_a_journal_file_continues_where_it_stopped(tmp_path):
    storage = "hydra.sweeper.storage=journal:shared/optuna.log"
    first = run_module("mnist_exp.run", *SEARCH, storage, "hydra.sweeper.n_trials=4",
                       cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_module("mnist_exp.run", *SEARCH, storage, "hydra.sweeper.n_trials=6",
                       cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 of 6 trials done; continuing it" in again.stderr + again.stdout
    study = optuna.load_study(study_name="mnist_exp",
                              storage=open_storage(f"journal:{tmp_path}/shared/optuna.log"))
    assert len(_finished(study)) == len(study.trials) == 6
    assert all(t.intermediate_values for t in study.trials)  # each job reported its epoch
    assert len({str(t.params) for t in study.trials}) == 6
    assert not (tmp_path / "optuna.db").exists()
    _, parents, children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "mnist_sample")
    per_parent = sorted(sum(c.data.tags["mlflow.parentRunId"] == p.info.run_id
                            for c in children) for p in parents)
    assert per_parent == [2, 4]  # the second search ran only the 2 trials still missing


@pytest.mark.slow
def test_a_parallel_search_keeps_its_study_in_postgresql(tmp_path, postgres):
    server = f"postgresql://{postgres['server']}"
    db = psycopg2.connect(f"{server}/postgres")
    db.autocommit = True  # CREATE DATABASE refuses to run in a transaction
    db.cursor().execute("CREATE DATABASE optuna")
    db.close()
    result = run_module("mnist_exp.run", *SEARCH, f"hydra.sweeper.storage={server}/optuna",
                        "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    password = postgres["server"].split(":")[1].split("@")[0]
    assert password not in result.stdout + result.stderr
    study = optuna.load_study(study_name="mnist_exp",
                              storage=open_storage(f"{server}/optuna"))
    assert len(_finished(study)) == len(study.trials) == 2
    assert all(t.intermediate_values for t in study.trials)  # the jobs wrote there too
    with psycopg2.connect(f"{server}/optuna") as db, db.cursor() as sql:
        sql.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'")
        assert sql.fetchone()[0] == 2
    assert not (tmp_path / "optuna.db").exists()
