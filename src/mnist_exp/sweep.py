"""One MLflow parent run per Hydra sweep, made before any job starts (a Hydra callback).

Parallel jobs racing to create a SQLite store's tables or the same experiment lose runs
(one crashes, or silently lands in another experiment). So the launching process opens
the store, creates the experiment and the sweep's parent run in `on_multirun_start`, and
leaves their ids in <sweep dir>/mlflow_sweep.json; every job, in whatever process or
machine, reads it and nests its run under the parent. `on_multirun_end` ranks the jobs by
validation accuracy, attaches the table and a comparison plot to the parent, prints the
best config, ends the parent run, and makes the sweep exit non-zero if a job failed. A
sweep stopped by Ctrl-C leaves its parent and its open jobs KILLED, never RUNNING.

Registered in conf/hydra/default.yaml; it only acts in multirun mode.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mnist_exp.store import (
    SweepInfo,
    allow_concurrent_writers,
    check_reachable,
    prepare_experiment,
    read_sweep_info,
    resolve_tracking_uri,
)

log = logging.getLogger(__name__)
CHAMPION = "champion"


def threads_per_job(launcher: DictConfig | dict, cores: int | None = None) -> int:
    """TensorFlow threads for one of several jobs sharing this machine (0: no cap)."""
    n_jobs = launcher.get("n_jobs") if launcher else None
    cores = cores or os.cpu_count() or 1
    if not n_jobs or n_jobs == 1:
        return 0
    return max(1, cores // (cores if n_jobs < 0 else n_jobs))


def _end_if_open(info: SweepInfo) -> None:
    """After Ctrl-C or a crash skipped on_multirun_end: end the parent run KILLED, and any
    job's run its process could not end (joblib kills its workers as soon as the launching
    process is interrupted)."""
    import mlflow

    client = mlflow.MlflowClient(info.tracking_uri)
    jobs = client.search_runs(
        [info.experiment_id], "attributes.status = 'RUNNING' and "
        f"tags.mlflow.parentRunId = '{info.parent_run_id}'")
    for run in [*jobs, client.get_run(info.parent_run_id)]:
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")


def _crown(client, name: str, run_id: str) -> None:
    """Give the alias `champion` to the registered version of the sweep's best run."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if versions:
        client.set_registered_model_alias(name, CHAMPION, versions[0].version)
        print(f"models:/{name}@{CHAMPION} is now version {versions[0].version}")


class MlflowSweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        sweep_dir = Path(config.hydra.sweep.dir)
        uri = resolve_tracking_uri(config.tracking.uri, Path.cwd())
        check_reachable(uri)
        experiment_id = prepare_experiment(uri, config.tracking.experiment_name)
        allow_concurrent_writers(uri)
        sweep_id = "/".join(sweep_dir.parts[-2:])  # e.g. 2026-11-24/10-31-07
        parent = mlflow.MlflowClient(uri).create_run(
            experiment_id, run_name=f"sweep {sweep_id}",
            tags={"mnist_exp.sweep": "parent", "sweep.id": sweep_id,
                  "command": " ".join(["python -m mnist_exp.run", *sys.argv[1:]])})
        sweep_dir.mkdir(parents=True, exist_ok=True)
        info = SweepInfo(uri, experiment_id, parent.info.run_id, sweep_id)
        atexit.register(_end_if_open, info)
        info.save(sweep_dir)
        log.info("Sweep %s: MLflow parent run %s", sweep_id, parent.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        from mnist_exp import report

        info = read_sweep_info(Path(config.hydra.sweep.dir))
        if info is None:
            return
        client = mlflow.MlflowClient(info.tracking_uri)
        rows = report.rank(report.load_rows(client, [info.experiment_id], info.parent_run_id))
        keys = report.differing_params(rows[:report.TOP])
        # A job can fail before its run exists (e.g. a bad value in the sweep): each failed
        # job leaves a FAILED file in its folder (run.py).
        failed = sorted(p.parent.name for p in Path(config.hydra.sweep.dir).glob("*/FAILED"))
        client.log_text(info.parent_run_id, report.to_markdown(rows, keys), "sweep_ranking.md")
        client.log_figure(info.parent_run_id, report.plot_comparison(rows, keys),
                          "sweep_comparison.png")
        client.log_metric(info.parent_run_id, "jobs", len(rows) + len(failed)
                          - sum(r.status == "FAILED" for r in rows))
        client.log_metric(info.parent_run_id, "failed_jobs", len(failed))
        best = rows[0] if rows and rows[0].val_accuracy is not None else None
        if best is not None:
            client.log_metric(info.parent_run_id, "best_final_val_accuracy", best.val_accuracy)
            if best.test_accuracy is not None:
                client.log_metric(info.parent_run_id, "best_test_accuracy", best.test_accuracy)
            client.set_tag(info.parent_run_id, "best_run_id", best.run_id)
            client.set_tag(info.parent_run_id, "best_config", report.describe(best, keys))
            if config.tracking.get("register_model"):
                _crown(client, config.tracking.registered_model_name, best.run_id)
        client.set_terminated(info.parent_run_id, "FINISHED" if best else "FAILED")
        atexit.unregister(_end_if_open)
        finished = sum(r.status == "FINISHED" for r in rows)
        print(f"\nSweep {info.sweep_id}: {finished} jobs finished, {len(failed)} failed; "
              f"ranking and plot on MLflow run {info.parent_run_id}")
        if best is not None:
            print(f"Best by validation accuracy ({best.val_accuracy:.4f}; test "
                  f"{best.test_accuracy:.4f}): {report.describe(best, keys)}  [{best.run_id}]")
        if failed:
            print(f"mnist-exp: error: {len(failed)} job(s) failed (see FAILED in the job "
                  f"folders {', '.join(failed)} under {config.hydra.sweep.dir})",
                  file=sys.stderr)
            raise SystemExit(1)
