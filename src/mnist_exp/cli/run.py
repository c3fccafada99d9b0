"""Command-line entry point: `python -m mnist_exp.run [group=option] [key=value] ...`.

The only module that knows about Hydra. A single run's overrides are composed and
checked before Hydra creates its output folder and before TensorFlow or MLflow is
imported, so `--help`, `--cfg job` and a typo answer in about a second and leave
nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mnist_exp.cli.checks import CONF_DIR, compose_checked, plan_sweep
from mnist_exp.cli.full_disk import check_room, quiet_disk_errors
from mnist_exp.cli.native_log import quiet_native_startup
from mnist_exp.cli.process_exit import exit_after
from mnist_exp.config.preflight import check_fits_memory
from mnist_exp.config.schema import parse_config
from mnist_exp.errors import ConfigError, NotUploaded, UserError, describe, exit_with
from mnist_exp.sweeps.callback import finished_job, threads_per_job
from mnist_exp.sweeps.cluster import JobStopped
from mnist_exp.sweeps.failures import FAILED, STOPPED, record_failed_job, write_failure
from mnist_exp.sweeps.study import TRIAL_ENV, TrialLink, resolve_storage
from mnist_exp.sweeps.workers import concurrent_jobs, keep_worker_between_jobs
from mnist_exp.tracking.store import (
    check_reachable,
    check_usable,
    read_sweep_info,
    resolve_tracking_uri,
)

log = logging.getLogger("mnist_exp")


# mlflow ui 3.x opens in its GenAI view unless the URL (or the browser's memory of an earlier
# choice) asks for the model-training one: the printed link asks.
TRAINING_VIEW = "workflowType=machine_learning"

HYDRA_FLAGS = ("-m", "--multirun", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info",
               "--shell-completion", "-sc", "-p", "--package", "--resolve")


def main() -> None:
    """`python -m mnist_exp.run`: check the overrides, then hand over to Hydra."""
    args = sys.argv[1:]
    # conf/hydra/launcher/ray.yaml shares the Ray plugin's name, on purpose (one name to
    # type); Hydra 1.3 warns about that on every sweep.
    # (The message starts with a newline, which `.` does not match without (?s).)
    warnings.filterwarnings("ignore", message="(?s).*is validated against ConfigStore schema")
    flags = {a.split("=")[0] for a in args if a.startswith("-")}
    multirun = bool(flags & {"-m", "--multirun"})
    try:
        if not flags & set(HYDRA_FLAGS):
            check_overrides(args)
        elif multirun and not flags & (set(HYDRA_FLAGS) - {"-m", "--multirun"}):
            check_sweep([a for a in args if a not in ("-m", "--multirun")])
        if not flags & (set(HYDRA_FLAGS) - {"-m", "--multirun"}):
            check_output_dir(args, multirun=multirun)
    except UserError as e:
        exit_with(e)
    signal.signal(signal.SIGTERM, interrupt)  # `kill` ends the run like Ctrl-C: KILLED
    try:
        experiment()
    except KeyboardInterrupt:  # outside a job: a sweep's launcher waiting for its workers
        print("mnist-exp: interrupted; the MLflow runs it had open are marked KILLED",
              file=sys.stderr)
        raise SystemExit(130) from None


def check_overrides(overrides: list[str]) -> None:
    """Compose and validate a single run's config, and check that its tracking store can
    be used and its model fits in memory: a mistake costs a second and one line
    (UserError), not TensorFlow's import, and leaves no output folder behind. (A sweep's
    callback checks the store before its jobs; run_experiment checks both again, cheaply,
    for callers that do not come through here.)"""
    config = compose_checked(overrides)
    uri = resolve_tracking_uri(config.tracking.uri, Path.cwd())
    if config.tracking.offline:
        check_usable(uri)
    else:
        check_reachable(uri)
    check_fits_memory(config)


def check_sweep(overrides: list[str]) -> None:
    """Check every job of a sweep (each end of an Optuna search space) before the parent run
    is made or a job starts; with hydra.callbacks.mlflow_sweep.list_jobs=true, print the
    jobs instead of running them and exit 0."""
    plan = plan_sweep(overrides)
    if plan.list_jobs:
        print("\n".join(plan.lines()))
        raise SystemExit(0)


def check_output_dir(overrides: list[str], multirun: bool) -> None:
    """Hydra makes its output folder and writes its own files there only once it starts
    the job, and a folder it cannot make or a disk that cannot take them ends in a
    traceback: try it first, leaving nothing behind."""
    from hydra import compose, initialize_config_dir

    key = "sweep" if multirun else "run"
    placing = [o for o in overrides if o.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        folder = Path(compose("config", placing, return_hydra_config=True).hydra[key].dir)
    made = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        check_room(folder)  # a full disk: FolderUnwritable, its own line
    except OSError as e:
        raise ConfigError(f"hydra.{key}.dir={folder}: cannot write there ({e.strerror}); "
                          f"choose another hydra.{key}.dir") from None
    finally:
        for p in made:
            with contextlib.suppress(OSError):
                p.rmdir()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def experiment(cfg: DictConfig) -> float:
    """Run one experiment; return its validation accuracy for Hydra's sweepers.

    In a sweep, a failing job is reported, recorded (its MLflow run FAILED, a FAILED file
    in its folder) and answers NaN, so the other jobs and the sweep's summary go on; the
    sweep then exits as the job would have alone (sweeps/failures.py).
    """
    hydra_cfg = HydraConfig.get()
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    quiet_disk_errors()  # Hydra has set up the job's log file by now
    started_ms = int(time.time() * 1000)
    if sweeping:
        # a joblib worker's next job reuses what this one keeps
        keep_worker_between_jobs(concurrent_jobs(hydra_cfg.launcher.get("n_jobs")))
        for mark in (FAILED, STOPPED):  # an earlier try's
            Path(hydra_cfg.runtime.output_dir, mark).unlink(missing_ok=True)
        done = _finished_before(hydra_cfg)
        if done is not None:
            return done
    try:
        config = parse_config(cfg)
        if sweeping and not config.trainer.threads:  # parallel jobs share the cores
            config.trainer.threads = threads_per_job(hydra_cfg.launcher)
        start = time.perf_counter()
        with quiet_native_startup(verbose=bool(hydra_cfg.verbose)):
            from mnist_exp.jobs.training import run_experiment  # heavy imports: the config is valid

        result = run_experiment(config, _context(import_seconds=time.perf_counter() - start))
    except Exception as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" and not isinstance(e, UserError):
            raise  # for debugging: Hydra prints the whole traceback
        output_dir = Path(hydra_cfg.runtime.output_dir)
        log_file = output_dir / f"{hydra_cfg.job.name}.log"
        if not sweeping:
            exit_with(e, log_file)
        message, code = describe(e, log_file)
        log.error("job failed: %s", message)
        write_failure(output_dir, message, code)
        _record_failure(hydra_cfg, f"{type(e).__name__}: {e}", started_ms)
        return math.nan
    except KeyboardInterrupt as e:
        if sweeping and isinstance(e, JobStopped):  # by SLURM: the sweep records it, goes on
            log.error("job stopped: %s", e)
            write_failure(Path(hydra_cfg.runtime.output_dir), str(e), e.exit_code, STOPPED)
            return math.nan
        print("mnist-exp: interrupted; the MLflow run (if one had started) is marked KILLED "
              "and its last finished epoch is kept: add trainer.resume=true to the same "
              "command to continue it", file=sys.stderr)
        raise SystemExit(130) from None
    _print_summary(result)
    if result.kept_in is not None and config.tracking.offline:
        print(f"Recorded offline in {result.kept_in}; upload it with: "
              f"python -m mnist_exp.sync {result.kept_in}")
    elif result.kept_in is not None:  # the tracking server was away at the end
        if not sweeping:
            exit_with(NotUploaded(result.kept_in, result.tracking_uri))
        log.warning("%s", NotUploaded(result.kept_in, result.tracking_uri))
    return result.val_accuracy


def _finished_before(hydra_cfg) -> float | None:
    """In a resumed sweep, the validation accuracy of this job's earlier FINISHED run."""
    info = read_sweep_info(Path(hydra_cfg.sweep.dir))
    if info is None or not info.resumed:
        return None
    done = finished_job(info, list(hydra_cfg.overrides.task))
    if done is None:
        return None
    log.info("job %s already finished in MLflow run %s: skipped", hydra_cfg.job.num, done[0])
    return done[1]


def _record_failure(hydra_cfg, reason: str, started_ms: int) -> None:
    """A FAILED MLflow run for a sweep's job that failed before its run started."""
    info = read_sweep_info(Path(hydra_cfg.sweep.dir))
    if info is None:
        return
    try:
        record_failed_job(info, hydra_cfg.job.get("num"), list(hydra_cfg.overrides.task),
                          reason, started_ms, Path(hydra_cfg.runtime.output_dir))
    except Exception as e:  # the FAILED file and the sweep's summary still tell
        log.warning("could not record the failed job in MLflow: %s", e)


def interrupt(signum, frame) -> None:
    """SIGTERM handler: `kill` ends a run like Ctrl-C does (KILLED, not RUNNING)."""
    raise KeyboardInterrupt


def _context(import_seconds: float):
    from mnist_exp.jobs.training import RunContext

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = (read_sweep_info(Path(hydra_cfg.sweep.dir))
             if hydra_cfg.mode == RunMode.MULTIRUN else None)
    return RunContext(
        overrides=tuple(hydra_cfg.overrides.task),
        launch_dir=Path(hydra_cfg.runtime.cwd),
        hydra_dir=output_dir / hydra_cfg.output_subdir if hydra_cfg.output_subdir else None,
        log_file=output_dir / f"{hydra_cfg.job.name}.log",
        progress_bar=hydra_cfg.mode == RunMode.RUN,
        import_seconds=import_seconds,
        sweep=sweep,
        job_number=hydra_cfg.job.get("num"),
        trial=_trial_link(hydra_cfg),
    )


def _trial_link(hydra_cfg) -> TrialLink | None:
    """For an Optuna trial's job: its study and trial, to report epochs to the pruner. The
    sweeper puts the trial's id in the environment (hydra.job.env_set); its own config says
    where the study is."""
    trial_id = os.environ.get(TRIAL_ENV)
    if hydra_cfg.mode != RunMode.MULTIRUN or not trial_id:
        return None
    sweeper = hydra_cfg.sweeper
    return TrialLink(storage=resolve_storage(sweeper.get("storage"), Path(hydra_cfg.runtime.cwd)),
                     study_name=sweeper.study_name, trial_id=int(trial_id),
                     pruner=dict(sweeper.get("pruner") or {}))


def _print_summary(result) -> None:
    print(f"\nTest accuracy {result.test_accuracy:.4f} (loss {result.test_loss:.4f}); "
          f"validation accuracy {result.val_accuracy:.4f}")
    if result.run_id is not None:
        print_run_link(result)


def print_run_link(result) -> None:
    """Which MLflow run a result was recorded in, and the mlflow ui link that opens it."""
    uri = result.tracking_uri
    default_uri = f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"
    if uri.startswith("http"):
        browse, base = f"open {uri}", uri.rstrip("/")
    else:
        browse = "mlflow ui" if uri == default_uri else f"mlflow ui --backend-store-uri {uri}"
        base = "http://127.0.0.1:5000"
    print(
        f"MLflow run '{result.run_name}' ({result.run_id}) in {uri}\n"
        f"Browse: {browse}  ->  {base}/#/experiments/{result.experiment_id}/runs/{result.run_id}"
        f"?{TRAINING_VIEW}"
    )


def cli() -> None:
    """The `mnist-exp` command: main, then the quick exit of process_exit.py."""
    exit_after(main)


if __name__ == "__main__":
    cli()
