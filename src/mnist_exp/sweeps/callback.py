"""One MLflow parent run per Hydra sweep, made before any job starts (a Hydra callback).

Parallel jobs racing to create a SQLite store's tables or the same experiment lose runs
(one crashes, or silently lands in another experiment). So the launching process opens
the store, creates the experiment and the sweep's parent run in `on_multirun_start`, and
leaves their ids in <sweep dir>/mlflow_sweep.json; every job, in whatever process or
machine, reads it and nests its run under the parent. `on_multirun_end` uploads what the
jobs could not, sums the sweep up on the parent run (summary.py), and ends the sweep as
its first failed job would have ended alone (failures.py). A sweep stopped by Ctrl-C
leaves its parent and its open jobs KILLED, never RUNNING; one killed outright runs no
handler, so the launching process holds <sweep dir>/sweep.lock for its life, and a later
resume (of the folder, or of the same Optuna study) or sync that finds the lock free ends
what it left RUNNING (liveness.py).

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
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError

from mnist_exp.errors import NotUploaded, ServerDown, TrackingError, UserError, exit_with
from mnist_exp.sweeps.cluster import check_partition, cores_per_job, is_slurm, quiet_submitit
from mnist_exp.sweeps.leftovers import end_leftovers
from mnist_exp.sweeps.liveness import (
    end_dead_searches,
    end_unborn_sweep,
    hold_sweep,
    reopen_parent,
    sweep_tags,
)
from mnist_exp.sweeps.parent import parent_record, start_parent
from mnist_exp.sweeps.study import resolve_storage, study_key
from mnist_exp.sweeps.summary import SUMMARY_PENDING, finish_sweep
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


def _end_if_open(info: SweepInfo, sweep_dir: Path) -> None:
    """After Ctrl-C or a crash skipped on_multirun_end: end the parent run KILLED, and any
    job's run its process could not end (joblib kills its workers as soon as the launching
    process is interrupted), each through its record (leftovers.end_leftovers)."""
    from mnist_exp.sweeps.parent import now, parent_record, upload
    from mnist_exp.tracking.upload import upload_folder

    try:
        end_leftovers(info, sweep_dir, None, parent=False)
        upload_folder(sweep_dir, info.tracking_uri)
        record = parent_record(sweep_dir, info)
        if not record.ended:
            record.append("end", status="KILLED", end_time=now())
        upload(record, info.tracking_uri)
    except Exception as e:  # a server that went away: the records keep their ends
        log.warning("could not mark the sweep's open runs KILLED: %s", str(e)[:200])


def finished_job(info: SweepInfo, overrides: list[str]) -> tuple[str, float] | None:
    """In a resumed sweep: the run id and validation accuracy of a FINISHED job of this
    sweep with exactly these overrides, if there is one."""
    import mlflow

    from mnist_exp.errors import redact

    wanted = redact(" ".join(overrides))
    for run in mlflow.MlflowClient(info.tracking_uri).search_runs(
            [info.experiment_id], f"tags.`mlflow.parentRunId` = '{info.parent_run_id}' and "
            "attributes.status = 'FINISHED'"):
        value = run.data.metrics.get("final_val_accuracy")
        if run.data.tags.get("overrides") == wanted and value is not None:
            return run.info.run_id, value
    return None


def _tracking_uri(config: DictConfig) -> str:
    try:
        configured = config.tracking.uri
    except InterpolationResolutionError as e:  # tracking=team without MLFLOW_TRACKING_URI
        reason = str(e).splitlines()[0].split(": ", 1)[-1].strip('"')
        raise TrackingError(f"tracking.uri: {reason}") from None
    return resolve_tracking_uri(configured, Path.cwd())


def _study(config: DictConfig) -> str | None:
    """An Optuna search's study (study.study_key), by which it finds the earlier searches
    of that study; None for a grid. A storage string that names none is a ConfigError."""
    sweeper = config.hydra.sweeper
    if "study_name" not in sweeper:
        return None
    return study_key(sweeper.study_name, resolve_storage(sweeper.get("storage"), Path.cwd()))


def _end_earlier_searches(info: SweepInfo, study: str) -> None:
    """A search continuing its study ends the earlier searches of it that were killed
    outright (their parent and open trials KILLED): said, but never in this one's way."""
    try:
        for line in end_dead_searches(info, study):
            log.warning("%s", line)
    except Exception as e:
        log.warning("could not end the runs an earlier, killed search of this study left "
                    "open (%s); python -m mnist_exp.sync <its sweep folder> ends them",
                    str(e).splitlines()[0][:200] if str(e) else type(e).__name__)


class MlflowSweepCallback(Callback):
    """Hydra turns a callback's exception into a warning and goes on (launching the jobs,
    or ending the sweep with exit 0), so every exception here ends the sweep instead: one
    line and its exit code (errors.describe)."""

    def __init__(self, resume: bool = False, list_jobs: bool = False) -> None:
        self.resume = resume
        self.list_jobs = list_jobs  # answered by cli/run.py before Hydra starts

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Open the store and the parent run. A mistake found here (a server that does not
        answer, a missing database or bucket, an unknown SLURM partition) ends the sweep
        with one line before any job starts."""
        try:
            if self.list_jobs:  # never run the jobs of a sweep that asked for their list
                raise UserError("hydra.callbacks.mlflow_sweep.list_jobs=true: the jobs are "
                                "listed by python -m mnist_exp.run -m ..., and not run")
            self._start(config)
        except Exception as e:
            _end_sweep(e)

    def _start(self, config: DictConfig) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        # Checks first: a sweep that cannot start leaves no folder behind.
        if config.tracking.get("offline"):
            raise UserError("tracking.offline=true: a sweep needs its tracking server (its jobs "
                            "nest under a parent run made before they start); run offline one "
                            "job at a time, or start a local server (docs/tracking.md: "
                            "tracking=server)")
        uri = _tracking_uri(config)
        study = _study(config)
        check_reachable(uri)
        if is_slurm(config.hydra.launcher):
            quiet_submitit()
            check_partition(config.hydra.launcher.partition)
        if self.resume and end_unborn_sweep(sweep_dir, "resume"):
            from mnist_exp.tracking.upload import upload_folder

            upload_folder(sweep_dir)  # its parent run, ended KILLED: this sweep starts afresh
        elif self.resume and (sweep_dir / SWEEP_FILE).is_file():
            self._reopen(sweep_dir)
            return
        if not claim_sweep_dir(sweep_dir):
            raise UserError(f"{sweep_dir} already holds a sweep ({SWEEP_FILE}); choose another "
                            "hydra.sweep.dir, or add hydra.callbacks.mlflow_sweep.resume=true "
                            "to continue that one")
        hold_sweep(sweep_dir)  # for this process's life: a later resume or sync tells it died
        experiment_id = prepare_experiment(uri, config.tracking.experiment_name)
        allow_concurrent_writers(uri)
        sweep_id = "/".join(sweep_dir.parts[-2:])  # e.g. 2026-11-24/10-31-07-123456
        parent_id = start_parent(
            sweep_dir, uri, experiment_id, config.tracking.experiment_name,
            f"sweep {sweep_id}", {"mnist_exp.sweep": "parent", "sweep.id": sweep_id,
                                  "command": " ".join(["python -m mnist_exp.run",
                                                       *sys.argv[1:]]),
                                  **sweep_tags(sweep_dir, study)})
        info = SweepInfo(uri, experiment_id, parent_id, sweep_id)
        try:
            check_artifact_store(uri, parent_id)
            info.save(sweep_dir)
        except Exception:  # no job starts: the parent run ends FAILED, not RUNNING
            _end_failed(info, sweep_dir)
            raise
        atexit.register(_end_if_open, info, sweep_dir)
        log.info("Sweep %s: MLflow parent run %s", sweep_id, parent_id)
        if study is not None:
            _end_earlier_searches(info, study)

    def _reopen(self, sweep_dir: Path) -> None:
        """Continue the sweep recorded in sweep_dir: its parent run RUNNING again, and the
        job runs its earlier, dead process left open ended KILLED (liveness.py)."""
        from mnist_exp.tracking.upload import upload_folder

        hold_sweep(sweep_dir)  # UserError if its earlier process still runs it
        try:
            info = replace(read_sweep_info(sweep_dir), resumed=True)
        except ValueError:  # claimed, never written: end_unborn_sweep could not judge it
            raise UserError(
                f"{sweep_dir}: its sweep's process died as it began ({SWEEP_FILE} is empty), "
                "and whether it still runs cannot be told here; once it has ended, python -m "
                f"mnist_exp.sync --dead-sweeps {sweep_dir} frees the folder") from None
        check_reachable(info.tracking_uri)
        end_leftovers(info, sweep_dir, "resume")
        upload_folder(sweep_dir)  # those runs' records, ended KILLED
        reopen_parent(info, sweep_dir)
        atexit.register(_end_if_open, info, sweep_dir)
        info.save(sweep_dir)
        log.info("Resuming sweep %s: MLflow parent run %s", info.sweep_id, info.parent_run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Upload what the jobs could not (their server was away), then the summary. If the
        server is away, the sweep is kept: one line, exit 3, and `python -m mnist_exp.sync
        <sweep dir>` uploads the jobs and the summary later. A sweep whose jobs failed exits
        as its first failed job would have alone (failures.py); anything unexpected exits 1,
        its traceback in <sweep dir>/sweep.log."""
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            failed = self._end(config, sweep_dir)
        except Exception as e:
            _end_sweep(e, sweep_dir / "sweep.log" if sweep_dir.is_dir() else None)
        if failed is not None:  # the sweep ends as its first failed job would have alone
            exit_with(failed)

    def _end(self, config: DictConfig, sweep_dir: Path) -> UserError | None:
        from mnist_exp.tracking.upload import unreachable, upload_folder

        info = read_sweep_info(sweep_dir)
        if info is None:
            return None
        registered = (config.tracking.registered_model_name
                      if config.tracking.get("register_model") else None)
        try:
            if upload_folder(sweep_dir, info.tracking_uri):
                raise ServerDown("job runs not uploaded")
            failed = finish_sweep(info, sweep_dir, registered)
        except Exception as e:
            if not isinstance(e, ServerDown) and not unreachable(e):
                _end_failed(info, sweep_dir)
                raise
            if not parent_record(sweep_dir, info).ended:  # else sync uploads its record
                (sweep_dir / SUMMARY_PENDING).write_text(json.dumps({"registered": registered}))
            atexit.unregister(_end_if_open)
            return NotUploaded(sweep_dir, info.tracking_uri, "the sweep's runs and summary are")
        atexit.unregister(_end_if_open)
        return failed


def _end_sweep(error: Exception, log_file: Path | None = None) -> NoReturn:
    """End the sweep on a callback's exception, which Hydra would only warn about: one line
    (with HYDRA_FULL_ERROR=1, the traceback first)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" and not isinstance(error, UserError):
        traceback.print_exception(error)
    exit_with(error, log_file)


def _end_failed(info: SweepInfo, sweep_dir: Path) -> None:
    """A summary that failed for an unexpected reason: its parent run FAILED, not KILLED,
    through its record, or, if the store refuses that record's upload, through one that
    ends the run (parent.close_run); the record is kept whole for sync."""
    from mnist_exp.sweeps.parent import close_run, now, parent_record, upload

    atexit.unregister(_end_if_open)
    try:
        record = parent_record(sweep_dir, info)
        if not record.ended:
            record.append("end", status="FAILED", end_time=now())
        try:
            upload(record, info.tracking_uri)
        except Exception:
            upload(close_run(sweep_dir, info, info.parent_run_id, "FAILED"), info.tracking_uri)
    except Exception as e:  # the line about the first error matters more
        log.warning("could not mark the sweep's parent run FAILED: %s", str(e)[:200])
