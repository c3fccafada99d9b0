"""One experiment, start to finish: data -> model -> train -> evaluate -> track.

`run_experiment` takes the typed config and plain facts about the invocation, so it
runs the same from the Hydra entry point, a test or a notebook.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mnist_exp.config.preflight import check_fits_data, check_fits_memory
from mnist_exp.config.schema import Config
from mnist_exp.data.load import LOCAL_FOLDERS, Dataset, load_dataset
from mnist_exp.evaluation.figures import run_figures
from mnist_exp.evaluation.scoring import score_held_out
from mnist_exp.sweeps import pruning
from mnist_exp.sweeps.study import TrialLink
from mnist_exp.tracking.callbacks import epoch_callbacks
from mnist_exp.tracking.logs import epoch_history, log_files, log_inputs, log_results, log_timings
from mnist_exp.tracking.models import improves_on_sweep, log_trained_model
from mnist_exp.tracking.record import RECORD_DIR, records_folder
from mnist_exp.tracking.runs import open_experiment, run_tags, sweep_tags, tracked_run
from mnist_exp.tracking.store import SweepInfo, redact
from mnist_exp.training.execution import prepare_model
from mnist_exp.training.fit import fit
from mnist_exp.training.interrupts import DeferredInterrupts
from mnist_exp.training.resume import resume_state_for

log = logging.getLogger(__name__)

_NAMELESS_OVERRIDES = ("data.path=", "tracking.", "hydra.")
_LOADED: dict[tuple, Dataset] = {}  # the last dataset this process loaded, by its settings


@dataclass(frozen=True)
class RunContext:
    """What the entry point knows about this invocation."""

    overrides: tuple[str, ...] = ()
    launch_dir: Path = field(default_factory=Path.cwd)
    hydra_dir: Path | None = None  # Hydra's record of the job (.hydra/)
    log_file: Path | None = None
    progress_bar: bool = True
    import_seconds: float | None = None  # the entry point's import of the training stack
    sweep: SweepInfo | None = None  # the sweep this run is a job of
    job_number: int | None = None
    trial: TrialLink | None = None  # the Optuna trial this run is, to report its epochs to

    @property
    def timings(self) -> dict[str, float]:
        """The entry point's own phases, recorded with the run's."""
        return {"imports": self.import_seconds} if self.import_seconds else {}


@dataclass(frozen=True)
class RunResult:
    run_id: str | None  # None: recorded offline, not uploaded yet
    run_name: str
    experiment_id: str | None
    tracking_uri: str
    model_uri: str | None
    val_accuracy: float
    test_accuracy: float
    test_loss: float
    kept_in: Path | None = None  # the record of a run the tracking server has not got (yet)


def run_experiment(config: Config, context: RunContext = RunContext()) -> RunResult:
    """Train, evaluate on the test set once, record everything in MLflow; return the
    headline numbers (the validation accuracy is the one sweeps should optimise). Each
    phase's wall time is recorded too (metrics time_<phase>_s)."""
    check_fits_memory(config)
    t, settings, clock = config.trainer, config.tracking, _Stopwatch()
    opening = open_experiment(settings, context.launch_dir, context.sweep)  # while data loads
    with clock("data"):
        data = _load_data(config)
    # Ctrl-C waits for the end of each phase that runs TensorFlow (fit: of its step).
    with clock("setup"), DeferredInterrupts():
        model, plan = prepare_model(config, data, reuse=t.reuse_model)
    if context.progress_bar:
        model.summary(print_fn=log.info)
    with clock("tracking"):
        experiment = opening.result()
    run_name = settings.run_name or default_run_name(context.overrides)
    tags = run_tags(context.overrides, settings) | sweep_tags(context.sweep, context.job_number)
    with resume_state_for(config, context.launch_dir, resume=t.resume) as state, tracked_run(
            experiment.uri, experiment.id, run_name, tags, _record_dir(context), settings,
            resume_run_id=state.run_to_resume(t.resume)) as tracker:
        state.claim(tracker.run_id)
        with clock("tracking"):
            splits = log_inputs(tracker, config, data, context.hydra_dir, state.resuming)
        with clock("train"):
            history = fit(model, data, t, plan, learning_rate=config.optimizer.learning_rate,
                          callbacks=[*epoch_callbacks(tracker, settings, splits, data.x_test[:2]),
                                     *pruning.callbacks_for(context.trial, tracker)],
                          verbose=1 if context.progress_bar else 2, backup_dir=state.backup_dir)
        if state.resuming:  # the curves need the epochs from before the interruption
            history = epoch_history(tracker.run_id)
        with clock("evaluate"), DeferredInterrupts():
            val, test = score_held_out(model, data, t.eval_batch_size)
        # A sweep's job that does not improve on the best so far keeps neither its model
        # nor its figures (tracking.keep_in_sweeps); its numbers are recorded all the same.
        with clock("tracking"):
            keep = improves_on_sweep(settings, context.sweep, val.accuracy)
        # The model is logged before its scores, so they are linked to it (model_id).
        with clock("model_logging"), DeferredInterrupts():
            model_uri = (log_trained_model(tracker, model, data.x_test, test.probabilities,
                                           settings) if keep else None)
        with clock("plots"):
            pictures = run_figures(history, test, data.x_test, data.class_names) if keep else {}
        with clock("tracking"):
            log_results(tracker, test, val, pictures, splits, keep and settings.log_model)
        log_timings(tracker, clock.seconds | context.timings)
        log_files(tracker, context.log_file)
        state.release()  # the run is done: nothing left to resume
    experiment_id = experiment.id or tracker.record.ids.get("experiment_id")  # made by its upload
    return RunResult(tracker.run_id, run_name, experiment_id, redact(experiment.uri), model_uri,
                     val.accuracy, test.accuracy, test.loss,
                     None if tracker.uploaded else tracker.record.folder)


def _load_data(config: Config) -> Dataset:
    """The configured data, split with the run's seed, checked against the settings. The
    jobs of a sweep that share a process load it once: the last dataset is kept, read-only,
    for the next job with the same settings and the same files."""
    d = config.data
    key = (d.name, d.path, d.validation_split, config.trainer.seed, d.verify_checksums,
           d.max_train_samples, d.max_test_samples, _files_state(d.name, d.path))
    data = _LOADED.get(key)
    if data is None:
        _LOADED.clear()
        data = load_dataset(d.name, d.path, validation_split=d.validation_split,
                            seed=config.trainer.seed, verify_checksums=d.verify_checksums,
                            max_train_samples=d.max_train_samples,
                            max_test_samples=d.max_test_samples)
        for array in (data.x_train, data.y_train, data.x_val, data.y_val, data.x_test,
                      data.y_test):
            array.flags.writeable = False  # shared by the next job: nobody may change it
        _LOADED[key] = data
    log.info("Data: %s from %s: %d train, %d validation, %d test images", data.name,
             data.source, len(data.y_train), len(data.y_val), len(data.y_test))
    check_fits_data(config, data.y_train, data.y_val, data.x_train)
    return data


def _files_state(name: str, path: str | None) -> tuple:
    """What the data's files are now (name, size, modification time), so that files
    changed between two jobs are read again."""
    where = Path(path).expanduser() if path else LOCAL_FOLDERS.get(name)
    if where is None or not where.exists():
        return ()
    files = sorted(where.iterdir()) if where.is_dir() else [where]
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files
                 if f.is_file())


def _record_dir(context: RunContext) -> Path:
    """The run's local record, in its Hydra output folder when it has one."""
    folder = (context.hydra_dir.parent if context.hydra_dir is not None
              else records_folder(context.launch_dir))
    return folder / RECORD_DIR


class _Stopwatch:
    """Accumulates wall time per named phase: `with clock("train"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def default_run_name(overrides: tuple[str, ...]) -> str:
    """The overrides that change the experiment, e.g. 'optimizer=sgd trainer.epochs=5'."""
    meaningful = [o for o in overrides if not o.lstrip("+~").startswith(_NAMELESS_OVERRIDES)]
    return " ".join(meaningful)[:250] or "default"

