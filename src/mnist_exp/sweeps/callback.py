"""One MLflow parent run per Hydra sweep, made before any job starts (a Hydra callback).

Parallel jobs racing to create a SQLite store's tables or the same experiment lose runs
(one crashes, or silently lands in another experiment). So the launching process opens
the store, creates the experiment and the sweep's parent run in `on_multirun_start`, and
leaves their ids in <sweep dir>/mlflow_sweep.json; every job, in whatever process or
machine, reads it and nests its run under the parent. `on_multirun_end` ranks the jobs by
validation accuracy, attaches the table and a comparison plot to the parent, prints the
best config, ends the parent run, and makes the sweep exit non-zero if a job failed. A
sweep stopped by Ctrl-C leaves its parent and its open jobs KILLED, never RUNNING.

A sweep folder holds one sweep: its record is created exclusively, so a second sweep into
the same folder stops with one line, unless it resumes it
(hydra.callbacks.mlflow_sweep.resume=true): then the parent run is reopened, jobs whose
identical overrides already FINISHED in it are skipped (`finished_job`), and the others run
again under the same parent.

Registered in conf/hydra/default.yaml; it only acts in multirun mode.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError

from mnist_exp.errors import NotUploaded, ServerDown, TrackingError, UserError
from mnist_exp.sweeps.cluster import check_partition, cores_per_job, is_slurm, quiet_submitit
from mnist_exp.tracking.store import (
    SWEEP_FILE,
    SweepInfo,
    allow_concurrent_writers,
    check_artifact_store,
    check_reachable,
    claim_sweep_dir,
    prepare_experiment,
    read_sweep_info,
    resolve_tracking_uri,
)

log = logging.getLogger(__name__)
CHAMPION = "champion"
SUMMARY_PENDING = "SUMMARY_PENDING"  # the sweep ended while its server was away


def threads_per_job(launcher: DictConfig | dict, cores: int | None = None) -> int:
    """TensorFlow threads for one of several jobs sharing this machine, or the cores a
    cluster launcher books for each (0: no cap)."""
    if booked := cores_per_job(launcher):
        return booked
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
    try:
        jobs = client.search_runs(
            [info.experiment_id], "attributes.status = 'RUNNING' and "
            f"tags.mlflow.parentRunId = '{info.parent_run_id}'")
        for run in [*jobs, client.get_run(info.parent_run_id)]:
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "KILLED")
    except Exception as e:  # a server that went away: the jobs' records keep their ends
        log.warning("could not mark the sweep's open runs KILLED: %s", str(e)[:200])


def _crown(client, name: str, best) -> None:
    """Give the alias `champion` to the registered version of the sweep's best run (a
    report.Row), only if it beats the current champion's validation accuracy on the same
    dataset; otherwise the alias stays, and the console says why."""
    from mlflow.exceptions import MlflowException

    versions = client.search_model_versions(f"name = '{name}' and run_id = '{best.run_id}'")
    if not versions:
        return
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        current = None
    if current is not None and current.run_id != best.run_id:
        held = client.get_run(current.run_id).data
        its_data, our_data = held.params.get("data.name"), best.params.get("data.name")
        its_score = held.metrics.get("final_val_accuracy")
        if its_data != our_data:
            print(f"models:/{name}@{CHAMPION} stays version {current.version}: it was trained "
                  f"on {its_data}, this sweep on {our_data}, so their scores do not compare")
            return
        if its_score is not None and best.val_accuracy <= its_score:
            print(f"models:/{name}@{CHAMPION} stays version {current.version} (validation "
                  f"accuracy {its_score:.4f}); this sweep's best reached {best.val_accuracy:.4f}")
            return
    client.set_registered_model_alias(name, CHAMPION, versions[0].version)
    was = f" (was version {current.version})" if current is not None else ""
    print(f"models:/{name}@{CHAMPION} is now version {versions[0].version}{was}")


def finished_job(info: SweepInfo, overrides: list[str]) -> tuple[str, float] | None:
    """In a resumed sweep: the run id and validation accuracy of a FINISHED job of this
    sweep with exactly these overrides, if there is one."""
    import mlflow

    from mnist_exp.tracking.store import redact

    wanted = redact(" ".join(overrides))
    for run in mlflow.MlflowClient(info.tracking_uri).search_runs(
            [info.experiment_id], f"tags.`mlflow.parentRunId` = '{info.parent_run_id}' and "
            "attributes.status = 'FINISHED'"):
        value = run.data.metrics.get("final_val_accuracy")
        if run.data.tags.get("overrides") == wanted and value is not None:
            return run.info.run_id, value
    return None


def record_failed_job(info: SweepInfo, job: int | None, overrides: list[str], reason: str,
                      since_ms: int) -> None:
    """A job that failed before its MLflow run existed (e.g. a sampled value the config
    schema refuses) still gets a FAILED run under the sweep's parent, with its reason."""
    import mlflow
    from mlflow.entities import Param

    from mnist_exp.tracking.store import redact

    client = mlflow.MlflowClient(info.tracking_uri)
    if client.search_runs([info.experiment_id],
                          f"tags.`mlflow.parentRunId` = '{info.parent_run_id}' and "
                          f"tags.`sweep.job` = '{job}' and attributes.start_time >= {since_ms}"):
        return  # the run exists and ended FAILED itself
    run = client.create_run(info.experiment_id, run_name=redact(" ".join(overrides))[:250],
                            tags={"mlflow.parentRunId": info.parent_run_id,
                                  "sweep.id": info.sweep_id, "sweep.job": str(job),
                                  "overrides": redact(" ".join(overrides)),
                                  "error": reason[:5000]})
    params = [Param(k.lstrip("+~"), redact(v)[:6000])
              for k, _, v in (o.partition("=") for o in overrides)]
    client.log_batch(run.info.run_id, params=params)
    client.set_terminated(run.info.run_id, "FAILED")


def _superseded(client, info: SweepInfo) -> set[str]:
    """In a resumed sweep, the earlier runs of jobs that ran again (same overrides)."""
    runs = client.search_runs([info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{info.parent_run_id}'",
                              order_by=["attributes.start_time DESC"])
    seen: set[str | None] = set()
    older: set[str] = set()
    for run in runs:  # newest first
        key = run.data.tags.get("overrides")
        if key in seen:
            older.add(run.info.run_id)
        seen.add(key)
    return older


def _tracking_uri(config: DictConfig) -> str:
    try:
        configured = config.tracking.uri
    except InterpolationResolutionError as e:  # tracking=team without MLFLOW_TRACKING_URI
        reason = str(e).splitlines()[0].split(": ", 1)[-1].strip('"')
        raise TrackingError(f"tracking.uri: {reason}") from None
    return resolve_tracking_uri(configured, Path.cwd())


class MlflowSweepCallback(Callback):
    def __init__(self, resume: bool = False) -> None:
        self.resume = resume

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Open the store and the parent run. A mistake found here (a server that does not
        answer, a missing database or bucket, an unknown SLURM partition) ends the sweep
        with one line before any job starts: Hydra turns a callback's exception into a
        warning and launches the jobs anyway, so this exits instead."""
        try:
            self._start(config)
        except UserError as e:
            print(f"mnist-exp: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    def _start(self, config: DictConfig) -> None:
        import mlflow

        sweep_dir = Path(config.hydra.sweep.dir)
        # Checks first: a sweep that cannot start leaves no folder behind.
        if config.tracking.get("offline"):
            raise UserError("tracking.offline=true: a sweep needs its tracking server (its jobs "
                            "nest under a parent run made before they start); run offline one "
                            "job at a time, or start a local server (README: tracking=server)")
        uri = _tracking_uri(config)
        check_reachable(uri)
        if is_slurm(config.hydra.launcher):
            quiet_submitit()
            check_partition(config.hydra.launcher.partition)
        if self.resume and read_sweep_info(sweep_dir) is not None:
            self._reopen(sweep_dir)
            return
        if not claim_sweep_dir(sweep_dir):
            print(f"mnist-exp: error: {sweep_dir} already holds a sweep ({SWEEP_FILE}); choose "
                  "another hydra.sweep.dir, or add hydra.callbacks.mlflow_sweep.resume=true "
                  "to continue that one", file=sys.stderr)
            raise SystemExit(2)
        experiment_id = prepare_experiment(uri, config.tracking.experiment_name)
        allow_concurrent_writers(uri)
        sweep_id = "/".join(sweep_dir.parts[-2:])  # e.g. 2026-11-24/10-31-07-123456
        parent = mlflow.MlflowClient(uri).create_run(
            experiment_id, run_name=f"sweep {sweep_id}",
            tags={"mnist_exp.sweep": "parent", "sweep.id": sweep_id,
                  "command": " ".join(["python -m mnist_exp.run", *sys.argv[1:]])})
        try:
            check_artifact_store(uri, parent.info.run_id)
        except TrackingError:
            mlflow.MlflowClient(uri).set_terminated(parent.info.run_id, "FAILED")
            raise
        info = SweepInfo(uri, experiment_id, parent.info.run_id, sweep_id)
        atexit.register(_end_if_open, info)
        info.save(sweep_dir)
        log.info("Sweep %s: MLflow parent run %s", sweep_id, parent.info.run_id)

    def _reopen(self, sweep_dir: Path) -> None:
        """Continue the sweep recorded in sweep_dir: its parent run RUNNING again."""
        import mlflow

        info = replace(read_sweep_info(sweep_dir), resumed=True)
        check_reachable(info.tracking_uri)
        mlflow.MlflowClient(info.tracking_uri).update_run(info.parent_run_id, "RUNNING")
        atexit.register(_end_if_open, info)
        info.save(sweep_dir)
        log.info("Resuming sweep %s: MLflow parent run %s", info.sweep_id, info.parent_run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Upload what the jobs could not (their server was away), then the summary. If the
        server is still away, the sweep is kept: one line, exit 3, and `python -m
        mnist_exp.sync <sweep dir>` uploads the jobs and the summary later."""
        from mnist_exp.tracking.upload import upload_folder

        sweep_dir = Path(config.hydra.sweep.dir)
        info = read_sweep_info(sweep_dir)
        if info is None:
            return
        registered = (config.tracking.registered_model_name
                      if config.tracking.get("register_model") else None)
        try:
            if upload_folder(sweep_dir, info.tracking_uri):
                raise ServerDown("job runs not uploaded")
            code = summarize(info, sweep_dir, registered)
        except ServerDown:
            (sweep_dir / SUMMARY_PENDING).write_text(json.dumps({"registered": registered}))
            atexit.unregister(_end_if_open)
            kept = NotUploaded(sweep_dir, info.tracking_uri, "the sweep's runs and summary are")
            print(f"mnist-exp: error: {kept}", file=sys.stderr)
            raise SystemExit(NotUploaded.exit_code) from None
        atexit.unregister(_end_if_open)
        if code:
            raise SystemExit(code)


def summarize(info: SweepInfo, sweep_dir: Path, registered: str | None) -> int:
    """Rank the sweep's jobs by validation accuracy, attach the table and a comparison plot
    to the parent run, crown the best model, end the parent run, and print the outcome;
    1 if a job failed, else 0. ServerDown if the store does not answer."""
    import mlflow

    from mnist_exp.sweeps import ranking as report
    from mnist_exp.tracking.upload import unreachable

    client = mlflow.MlflowClient(info.tracking_uri)
    try:
        rows = report.rank(report.load_rows(client, [info.experiment_id], info.parent_run_id))
    except Exception as e:
        if unreachable(e):
            raise ServerDown(str(e)) from e
        raise
    if info.resumed:  # a job that ran again counts once, as it ended now
        rows = [r for r in rows if r.run_id not in _superseded(client, info)]
    keys = report.differing_params(rows[:report.TOP])
    # A job can fail before its run exists (e.g. a bad value in the sweep): each failed
    # job leaves a FAILED file in its folder (run.py).
    failed = sorted(p.parent.name for p in sweep_dir.glob("*/FAILED"))
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
        if registered:
            _crown(client, registered, best)
    client.set_terminated(info.parent_run_id, "FINISHED" if best else "FAILED")
    (sweep_dir / SUMMARY_PENDING).unlink(missing_ok=True)
    finished = sum(r.status == "FINISHED" for r in rows)
    pruned = len(client.search_runs(
        [info.experiment_id], f"tags.`mlflow.parentRunId` = '{info.parent_run_id}' and "
        "tags.`optuna.pruned` = 'true'"))
    print(f"\nSweep {info.sweep_id}: {finished} jobs finished"
          f"{f' ({pruned} pruned by Optuna)' if pruned else ''}, {len(failed)} failed; "
          f"ranking and plot on MLflow run {info.parent_run_id}")
    if best is not None:
        print(f"Best by validation accuracy ({best.val_accuracy:.4f}; test "
              f"{best.test_accuracy:.4f}): {report.describe(best, keys)}  [{best.run_id}]")
    if failed:
        first = Path(sweep_dir, failed[0], "FAILED").read_text().strip()
        print(f"mnist-exp: error: {len(failed)} job(s) failed; job {failed[0]}: "
              f"{first.splitlines()[0] if first else 'no reason recorded'} (see FAILED "
              f"in the job folders {', '.join(failed)} under {sweep_dir})", file=sys.stderr)
        return 1
    return 0
