"""A search without a barrier: each worker starts its next trial as soon as its own has
ended, until the study holds n_trials; and how busy a sweep kept its workers."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from optuna.distributions import FloatDistribution

from helpers import ONE_EPOCH, own_lines, run_module, sweep_runs
from hydra_plugins.mnist_exp_optuna.sweeper import Search
from hydra_plugins.mnist_exp_optuna.workers import run_workers, worker_count
from mnist_exp.sweeps.summary import utilisation

HOOKS = {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                      os.environ.get("PYTHONPATH")]))}
RATE = "optimizer.learning_rate"
SPACE = {RATE: FloatDistribution(1e-3, 1e13, log=True)}


def test_utilisation_is_busy_time_over_workers_times_wall():
    # Two workers, 0-10 s and 0-4 then 5-10 s (ms, as MLflow keeps a run's times): one idle
    # second of 20.
    use = utilisation([(0, 10_000), (0, 4_000), (5_000, 10_000)])
    assert (use.workers, use.busy, use.wall) == (2, 19.0, 10.0)
    assert use.share == pytest.approx(0.95)
    # A batch of two waits for its slowest: the second pair starts at 10 s.
    barrier = utilisation([(0, 10_000), (0, 4_000), (10_000, 14_000), (10_000, 20_000)])
    assert barrier.workers == 2 and barrier.share == pytest.approx(28 / 40)
    sequential = utilisation([(0, 4_000), (4_000, 9_000), (10_000, 12_000)])
    assert sequential.workers == 1 and sequential.share == pytest.approx(11 / 12)
    assert utilisation([(0, None)]) is None and utilisation([]) is None


class Launcher:
    """Stands in for a parallel launcher: job 0 runs until job 2 has been launched (at
    most 30 s), every other job ends at once, answering its learning rate."""

    def __init__(self) -> None:
        self.launched: list[tuple[int, str]] = []
        self.third = threading.Event()
        self.job0_saw_job2 = None

    def launch(self, overrides, initial_job_idx: int) -> list[JobReturn]:
        [job] = overrides
        self.launched.append((initial_job_idx, job[0]))
        if initial_job_idx == 2:
            self.third.set()
        if initial_job_idx == 0:
            self.job0_saw_job2 = self.third.wait(timeout=30)
        rate = float(job[0].split("=")[1])
        if rate > 1e6:
            return [JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("diverged"))]
        return [JobReturn(status=JobStatus.COMPLETED, _return_value=rate)]


def search(study, n_trials: int) -> Search:
    return Search(study, SPACE, {"trainer.epochs": "1"}, n_trials, where="study 's'")


def test_workers_take_the_next_trial_as_soon_as_theirs_ended():
    study = optuna.create_study(direction="maximize")
    for rate in (0.01, 0.02, 1e12, 0.02, 0.03):  # the 4th repeats the 2nd: told, not run
        study.enqueue_trial({RATE: rate})
    launcher, trials = Launcher(), search(study, 5)
    run_workers(trials.next_job, trials.finish, launcher, workers=2)
    assert launcher.job0_saw_job2  # job 2 started while job 0 ran: no batch of two
    assert sorted(n for n, _ in launcher.launched) == [0, 1, 2, 3]  # one folder each
    assert [t.state.name for t in study.trials] == [
        "COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]  # exactly n_trials
    assert study.trials[3].user_attrs["duplicate_of"] == 1
    assert "diverged" in study.trials[2].user_attrs["fail_reason"]


def test_a_launcher_that_breaks_stops_the_search_after_the_running_trials():
    class Broken(Launcher):
        def launch(self, overrides, initial_job_idx):
            if initial_job_idx == 1:
                raise RuntimeError("the launcher's workers died")
            time.sleep(0.2)  # job 0 is still running when job 1 breaks
            self.launched.append((initial_job_idx, overrides[0][0]))
            return [JobReturn(status=JobStatus.COMPLETED, _return_value=0.5)]

    study = optuna.create_study(direction="maximize")
    launcher, trials = Broken(), search(study, 6)
    with pytest.raises(RuntimeError, match="workers died"):
        run_workers(trials.next_job, trials.finish, launcher, workers=2)
    assert [n for n, _ in launcher.launched] == [0]  # none started after the error
    # Job 0 ended and was told; job 1's trial stays RUNNING, as a stopped search leaves it
    # (the next search marks it failed and runs it again).
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]


def test_workers_never_outnumber_what_the_launcher_runs_at_once():
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

    assert worker_count(BasicLauncher(), 4) == 1  # it runs jobs in the sweep's process
    assert worker_count(JoblibLauncher(n_jobs=1), 4) == 1  # so does joblib with one job
    assert worker_count(JoblibLauncher(n_jobs=3), 4) == 3
    assert worker_count(JoblibLauncher(n_jobs=-1), 64) == os.cpu_count()
    assert worker_count(JoblibLauncher(n_jobs=8), 2) == 2


def read_spans(sweep_dir: Path) -> dict[int, dict]:
    """Each job's start, end and process, as parallel_hooks.RecordJobs recorded them."""
    return {int(p.stem): json.loads(p.read_text())
            for p in (sweep_dir / "job_spans").glob("*.json")}


def enqueue(workdir: Path, *rates: float) -> None:
    """The study's next trials, in order, so each job's learning rate is known."""
    study = optuna.create_study(study_name="mnist_exp", direction="maximize",
                                storage=f"sqlite:///{workdir / 'optuna.db'}",
                                load_if_exists=True)
    for rate in rates:
        study.enqueue_trial({RATE: rate})


@pytest.mark.slow
def test_two_joblib_workers_run_trials_back_to_back_and_a_resumed_search_adds_the_rest(
        mini, tmp_path):
    command = ("-m", "hparams_search=optuna", f"data.path={mini}", *ONE_EPOCH,
               "optimizer=sgd", f"{RATE}=tag(log, interval(1e-3, 1e13))",
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",  # two processes, any machine
               "hydra.sweeper.n_jobs=2")
    enqueue(tmp_path, 0.01, 0.02, 1e12, 0.03, 0.04)  # job 2's loss turns NaN
    first = run_module("mnist_exp.run", *command, "hydra.sweeper.n_trials=5",
                       "hydra.sweep.dir=first", "+hydra.callbacks.spans._target_="
                       "parallel_hooks.RecordJobs", "+hydra.callbacks.spans.hold=0",
                       "+hydra.callbacks.spans.until=2", "+hydra.callbacks.spans.timeout=60",
                       cwd=tmp_path, env=HOOKS)
    assert first.returncode == 2, first.stderr[-3000:]  # as its failed trial alone would
    assert "1 job(s) failed" in own_lines(first.stderr)[-1]
    spans = read_spans(tmp_path / "first")
    assert sorted(spans) == [0, 1, 2, 3, 4]  # a folder per job
    # Job 0 ran on while the other worker finished job 1 and started job 2: no barrier.
    assert spans[1]["ended"] <= spans[2]["started"] < spans[0]["ended"]
    assert spans[1]["pid"] == spans[2]["pid"] != spans[0]["pid"]
    study = optuna.load_study(study_name="mnist_exp", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in study.trials] == [  # exactly n_trials; the others went on
        "COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    _, [parent], children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted(r.info.status for r in children) == ["FAILED"] + ["FINISHED"] * 4
    assert parent.data.metrics["failed_jobs"] == 1 and parent.data.metrics["workers"] == 2
    assert 0 < parent.data.metrics["worker_utilisation"] <= 1
    assert f"busy {parent.data.metrics['worker_utilisation']:.0%}" in first.stdout

    enqueue(tmp_path, 0.05, 0.06)
    again = run_module("mnist_exp.run", *command, "hydra.sweeper.n_trials=7",
                       "hydra.sweep.dir=again", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    study = optuna.load_study(study_name="mnist_exp", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == 7 and study.trials[-1].params[RATE] == 0.06
    _, parents, children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [resumed] = [p for p in parents if p.info.run_id != parent.info.run_id]
    assert resumed.data.metrics["jobs"] == 2  # only the trials still missing
    assert sum(c.data.tags["mlflow.parentRunId"] == resumed.info.run_id for c in children) == 2
