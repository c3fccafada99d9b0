"""Sweeps: grid sweeps in parallel processes, submitit, a tracking server, the report
(Optuna searches: test_optuna_sweeps.py)."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from helpers import ONE_EPOCH, run_module, serving, start_module, sweep_runs
from mnist_exp.sweeps.callback import threads_per_job
from mnist_exp.sweeps.ranking import Row, group_table


@pytest.mark.parametrize(("rates", "n_jobs"), [
    ("1e-3,3e-4", 2),
    pytest.param("1e-3,3e-4,1e-4,3e-3", 4, marks=pytest.mark.slow),
], ids=["4 jobs on 2 processes", "8 jobs on 4 processes"])
def test_parallel_grid_sweep_loses_no_run(mini, tmp_path, rates, n_jobs):
    result = run_module("mnist_exp.run", "-m", f"data.path={mini}", *ONE_EPOCH,
                        "model.hidden_units=[128,32],[64,16]", f"optimizer.learning_rate={rates}",
                        "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}",
                        "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = 2 * len(rates.split(","))
    client, [parent], children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert parent.info.status == "FINISHED"
    assert len(children) == jobs
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert sorted(int(r.data.tags["sweep.job"]) for r in children) == list(range(jobs))
    assert {r.data.params["trainer.threads"] for r in children} == {str(max(1, 2 // n_jobs))}
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "sweep_ranking.md", "sweep_comparison.png"}
    best = max(children, key=lambda r: r.data.metrics["final_val_accuracy"])
    assert parent.data.tags["best_run_id"] == best.info.run_id  # chosen on validation
    assert parent.data.metrics["jobs"] == jobs
    assert "Best by validation accuracy" in result.stdout and best.info.run_id in result.stdout


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_same_path(mini, tmp_path):
    result = run_module("mnist_exp.run", "-m", f"data.path={mini}", *ONE_EPOCH,
                        "optimizer.learning_rate=1e-3,3e-4", "hydra/launcher=submitit_local",
                        "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _, [parent], children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 with a temporary SQLite backend and artifacts."""
    with serving([sys.executable, "-m", "mlflow", "server",
                  "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                  "--artifacts-destination", str(tmp_path / "server-artifacts"),
                  "--workers", "1"], ready="/health", cwd=tmp_path, timeout=120) as uri:
        yield uri


@pytest.mark.slow
def test_parallel_sweep_against_a_tracking_server(mini, tmp_path, mlflow_server):
    work = tmp_path / "work"
    work.mkdir()
    result = run_module("mnist_exp.run", "-m", "tracking=server", f"data.path={mini}",
                        *ONE_EPOCH, "optimizer.learning_rate=1e-3,3e-4", "hydra/launcher=joblib",
                        "hydra.launcher.n_jobs=2", "tracking.keep_in_sweeps=all",  # every figure
                        "hydra.sweep.dir=sweep", cwd=work,
                        env={"MLFLOW_TRACKING_URI": mlflow_server})
    failures = [p.read_text() for p in (work / "sweep").glob("*/FAILED")]
    assert result.returncode == 0, (failures, result.stderr[-3000:])
    assert not (work / "mlflow.db").exists()  # everything went to the server
    client, [parent], children = sweep_runs(mlflow_server)
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    for run in children:
        assert "curves.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert (tmp_path / "server-artifacts").is_dir()


def test_report_ranks_a_sweep_from_the_store(mini, tmp_path):
    swept = run_module("mnist_exp.run", "-m", f"data.path={mini}", *ONE_EPOCH,
                       "optimizer.learning_rate=1e-3,1e-4", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr[-3000:]
    _, [parent], _ = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = run_module("mnist_exp.report", "--sweep", parent.info.run_id, "--out", "report",
                        "--group-by", "optimizer.learning_rate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("| 1 |")]
    assert len(lines) == 1 and "optimizer.learning_rate" in result.stdout
    assert (tmp_path / "report" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    groups = (tmp_path / "report" / "groups.md").read_text().splitlines()
    assert [line.split(" | ")[:2] for line in groups[2:]] in (
        [["| 0.001", "1"], ["| 0.0001", "1"]], [["| 0.0001", "1"], ["| 0.001", "1"]])


def test_groups_are_summarized_over_their_finished_runs():
    def row(preset, val, test, status="FINISHED"):
        return Row("id", preset, status, {"tracking.run_name": preset}, val, test, 10.0)
    rows = [row("a", 0.90, 0.88), row("a", 0.92, 0.90), row("b", 0.95, 0.93),
            row("b", None, None, status="FAILED")]
    table = group_table(rows, "tracking.run_name").splitlines()
    assert table[2] == "| b | 1 | 0.9300 | 0.9300 - 0.9300 | 0.9500 | 10 |"
    assert table[3] == "| a | 2 | 0.8900 ± 0.0141 | 0.8800 - 0.9000 | 0.9100 ± 0.0141 | 10 |"


def test_threads_are_shared_between_parallel_jobs():
    assert threads_per_job({"n_jobs": 4}, cores=16) == 4
    assert threads_per_job({"n_jobs": 4}, cores=2) == 1
    assert threads_per_job({"n_jobs": -1}, cores=8) == 1
    assert threads_per_job({}, cores=8) == 0 and threads_per_job({"n_jobs": 1}, cores=8) == 0
    # cluster launchers: the cores booked for each job (SLURM cpus_per_task, Ray num_cpus)
    assert threads_per_job({"cpus_per_task": 4}, cores=2) == 4
    assert threads_per_job({"ray": {"remote": {"num_cpus": 2}}}, cores=16) == 2


@pytest.mark.parametrize("launcher", [(), pytest.param(
    ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"), marks=pytest.mark.slow)],
                         ids=["jobs in turn", "jobs in 2 joblib workers"])
def test_an_interrupted_sweep_leaves_nothing_running(mini, tmp_path, launcher):
    """Ctrl-C reaches the whole process group, as from a terminal; joblib then kills its
    workers at once, so the launching process ends their runs."""
    jobs = 2 if launcher else 1  # running when the interrupt comes
    process = start_module("mnist_exp.run", "-m", f"data.path={mini}", "trainer.epochs=50",
                           "optimizer.learning_rate=1e-3,3e-4", "hydra.sweep.dir=sweep",
                           *launcher, cwd=tmp_path)
    started = 0
    for line in process.stdout:
        started += "Epoch 2/50" in line
        if started == jobs:
            break
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    _, [parent], children = sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert parent.info.status == "KILLED"
    assert [r.info.status for r in children] == ["KILLED"] * jobs
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr


def test_a_job_that_failed_before_its_run_does_not_make_every_key_a_difference():
    from mnist_exp.sweeps.ranking import Row, describe, differing_params

    full = {"optimizer.learning_rate": "0.001", "trainer.epochs": "10", "model.dropout": "0.1"}
    rows = [Row("a", "a", "FINISHED", full, 0.9, 0.9, 1.0),
            Row("b", "b", "FINISHED", full | {"optimizer.learning_rate": "0.01"}, 0.8, 0.8, 1.0),
            Row("c", "c", "FAILED", {"optimizer.learning_rate": "1e12"}, None, None, None)]
    assert differing_params(rows) == ["optimizer.learning_rate"]
    assert describe(rows[0], differing_params(rows)) == "optimizer.learning_rate=0.001"


def test_a_report_over_thousands_of_runs_stays_readable():
    """The best 20 one by one, with labels short enough to leave room for their bars (the
    table has them whole), the rest as a histogram; the table as many lines as that."""
    from mnist_exp.sweeps.ranking import TOP, plot_comparison, to_markdown

    rows = [Row(f"id{i}", f"run {i}", "FINISHED", {f"p.{k}": str(i % (k + 2)) for k in range(60)},
                1 - i / 10_000, 0.9, 1.0) for i in range(2000)]
    keys = sorted(rows[0].params)
    figure = plot_comparison(rows, keys)
    bars, histogram = figure.axes
    labels = [label.get_text() for label in bars.get_yticklabels()]
    assert len(labels) == TOP and labels[0].startswith("#1 ")  # shown at the top
    rows_of_text = [line for label in labels for line in label.splitlines()]  # 2 per label
    assert max(map(len, rows_of_text)) <= 70 and len(rows_of_text) <= 2 * TOP
    assert labels[0].endswith("…")
    assert sum(patch.get_height() for patch in histogram.patches) == 2000
    lines = to_markdown(rows, keys).splitlines()
    assert len(lines) <= 2 + TOP + 2 and "1980 more runs" in lines[-1]
    assert "quartiles" in lines[-1]
