"""One experiment, start to finish: data -> model -> train -> evaluate -> track.

`run_experiment` takes the typed config and plain facts about the invocation, so it
runs the same from the Hydra entry point, a test or a notebook.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mnist_exp.config.preflight import check_fits_data, check_fits_memory
from mnist_exp.config.schema import CNNConfig, Config
from mnist_exp.data.load import load_dataset
from mnist_exp.errors import TrainingStepFailed
from mnist_exp.evaluation import figures
from mnist_exp.evaluation.scoring import evaluate
from mnist_exp.sweeps import pruning
from mnist_exp.sweeps.study import TrialLink
from mnist_exp.tracking import runs
from mnist_exp.tracking.record import RECORD_DIR, records_folder
from mnist_exp.tracking.store import (
    SweepInfo,
    check_reachable,
    check_usable,
    join_experiment,
    prepare_experiment,
    redact,
    resolve_tracking_uri,
)
from mnist_exp.tracking.upload import LOGGED_MODEL
from mnist_exp.training import compile_cache, kept_models
from mnist_exp.training.fit import execution_settings, fit, setup_runtime
from mnist_exp.training.interrupts import DeferredInterrupts
from mnist_exp.training.model import build_model, compile_model
from mnist_exp.training.resume import checkpoint_for

log = logging.getLogger(__name__)

_NAMELESS_OVERRIDES = ("data.path=", "tracking.", "hydra.")


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
    headline numbers (the validation accuracy is the one sweeps should optimise).

    Each phase's wall time is recorded too (metrics time_<phase>_s), so the cost of
    everything around training stays visible.
    """
    check_fits_memory(config)
    clock = _Stopwatch()
    uri = resolve_tracking_uri(config.tracking.uri, context.launch_dir)
    d, t = config.data, config.trainer
    # Opening the store (~0.6 s, more when it is created) overlaps loading the data.
    pool = ThreadPoolExecutor(max_workers=1)
    if config.tracking.offline:  # sync makes the experiment
        check_usable(uri)
        experiment = pool.submit(lambda: None)
    elif context.sweep is None:
        check_reachable(uri)
        experiment = pool.submit(prepare_experiment, uri, config.tracking.experiment_name)
    else:  # the sweep checked the store and made the experiment and parent run before any job
        uri = context.sweep.tracking_uri
        experiment = pool.submit(join_experiment, uri, context.sweep.experiment_id)
    pool.shutdown(wait=False)
    with clock("data"):
        data = load_dataset(d.name, d.path, validation_split=d.validation_split, seed=t.seed,
                            verify_checksums=d.verify_checksums,
                            max_train_samples=d.max_train_samples,
                            max_test_samples=d.max_test_samples)
    log.info("Data: %s from %s: %d train, %d validation, %d test images", data.name, data.source,
             len(data.y_train), len(data.y_val), len(data.y_test))
    check_fits_data(config, data.y_train, data.y_val, data.x_train)

    # Ctrl-C waits for the end of each phase that runs TensorFlow (fit: of the step), so
    # it never lands inside TensorFlow's ops (see interrupts.py).
    with clock("setup"), DeferredInterrupts():
        setup_runtime(t.seed, t.deterministic, t.threads)
        cache = compile_cache.use(compile_cache.folder_for(t.compile_cache, t.compile_cache_dir))
        model = build_model(config.model, num_classes=len(data.class_names),
                            normalization=d.normalization, train_images=data.x_train)
        compile_model(model, config.optimizer, label_smoothing=t.label_smoothing,
                      **execution_settings(t, convolutional=isinstance(config.model, CNNConfig)))
        if t.reuse_model:  # an earlier job's, already traced, holding this one's state
            model = kept_models.adopt(model, fed=(t.batch_size, t.eval_batch_size,
                                                  data.x_train.shape, data.x_val.shape))
    if context.progress_bar:
        model.summary(print_fn=log.info)
    with clock("tracking"):
        experiment_id = experiment.result()

    run_name = config.tracking.run_name or default_run_name(context.overrides)
    with checkpoint_for(config, context.launch_dir, resume=t.resume) as checkpoint:
        resume_id = checkpoint.run_to_resume(t.resume)
        tags = runs.run_tags(context.overrides, config.tracking)
        if context.sweep is not None:  # nests the run under the sweep's, in any process
            tags |= {"mlflow.parentRunId": context.sweep.parent_run_id,
                     "sweep.id": context.sweep.sweep_id, "sweep.job": str(context.job_number)}
        with runs.tracked_run(uri, experiment_id, run_name, tags, _record_dir(context),
                                  config.tracking, resume_run_id=resume_id) as tracker:
            if tracker.run_id is not None:
                checkpoint.claim(tracker.run_id)
            with clock("tracking"):
                splits = runs.datasets(data)
                if resume_id is None:
                    runs.log_config(tracker, config, context.hydra_dir)
                    runs.log_datasets(tracker, splits)
            if config.tracking.log_model:
                threading.Thread(target=runs.warm_up_model_logging, daemon=True).start()
            with clock("train"):
                every = config.tracking.checkpoint_every
                checkpoints = (runs.Checkpoints(tracker, every, splits["validation"],
                                                    data.x_test[:2]) if every else None)
                callbacks = [runs.EpochLogger(tracker, checkpoints),
                             *pruning.callbacks_for(context.trial, tracker)]
                try:
                    history = fit(model, data, t, callbacks=callbacks,
                                  verbose=1 if context.progress_bar else 2,
                                  backup_dir=checkpoint.backup_dir)
                except TrainingStepFailed as e:
                    kept_models.forget()  # nor trust what it traced
                    if cache is None:
                        raise
                    compile_cache.clear(cache)
                    raise TrainingStepFailed(f"{e}; a damaged entry in the compilation cache "
                                             f"does this: {cache} is now emptied, run again "
                                             "(or set trainer.compile_cache=false)") from None
            if resume_id is not None:  # the curves need the epochs from before the interruption
                history = runs.epoch_history(tracker.run_id)
            with clock("evaluate"), DeferredInterrupts():
                # The kept model's validation score (with early stopping, the best epoch's, not
                # the last's) is what sweeps optimise. The test set is touched once, after it.
                val = evaluate(model, data.x_val, data.y_val, data.class_names, t.eval_batch_size)
                test = evaluate(model, data.x_test, data.y_test, data.class_names,
                                t.eval_batch_size)
            # The model is logged before its scores, so they are linked to it (model_id).
            with clock("model_logging"), DeferredInterrupts():
                registered = (config.tracking.registered_model_name
                              if config.tracking.register_model else None)
                model_uri = (runs.log_model(tracker, model, data.x_test[:2],
                                                test.probabilities[:2], registered)
                             if config.tracking.log_model else None)
            with clock("plots"):
                pictures = {"curves.png": figures.plot_curves(history),
                           **figures.test_figures(test, data.x_test, data.class_names)}
            with clock("tracking"):
                runs.log_evaluation(tracker, test, pictures, splits,
                                        LOGGED_MODEL if config.tracking.log_model else None,
                                        final_val={"loss": val.loss, "accuracy": val.accuracy})
            runs.log_timings(tracker, {**clock.seconds, **(
                {"imports": context.import_seconds} if context.import_seconds else {})})
            runs.log_files(tracker, context.log_file)
        checkpoint.release()
    return RunResult(run_id=tracker.run_id, run_name=run_name, experiment_id=experiment_id,
                     tracking_uri=redact(uri), model_uri=model_uri,
                     val_accuracy=val.accuracy, test_accuracy=test.accuracy,
                     test_loss=test.loss,
                     kept_in=None if tracker.uploaded else tracker.record.folder)


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

