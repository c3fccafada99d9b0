"""One experiment, start to finish: data -> model -> train -> evaluate -> track.

`run_experiment` takes the typed config and plain facts about the invocation, so it
runs the same from the Hydra entry point, a test or a notebook.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from mnist_exp import plots, tracking
from mnist_exp.checkpoints import checkpoint_for
from mnist_exp.config import Config
from mnist_exp.data import Dataset, load_dataset
from mnist_exp.evaluate import evaluate
from mnist_exp.model import build_model, compile_model
from mnist_exp.store import check_reachable, redact, resolve_tracking_uri
from mnist_exp.train import fit, seed_everything

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


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_name: str
    experiment_id: str
    tracking_uri: str
    model_uri: str | None
    val_accuracy: float
    test_accuracy: float
    test_loss: float


def run_experiment(config: Config, context: RunContext = RunContext()) -> RunResult:
    """Train, evaluate on the test set once, record everything in MLflow; return the
    headline numbers (the validation accuracy is the one sweeps should optimise)."""
    uri = resolve_tracking_uri(config.tracking.uri, context.launch_dir)
    check_reachable(uri)
    experiment_id = tracking.prepare_experiment(uri, config.tracking.experiment_name)
    d, t = config.data, config.trainer
    data = load_dataset(d.name, d.path, validation_split=d.validation_split, seed=t.seed,
                        verify_checksums=d.verify_checksums,
                        max_train_samples=d.max_train_samples,
                        max_test_samples=d.max_test_samples)
    log.info("Data: %s from %s: %d train, %d validation, %d test images", data.name, data.source,
             len(data.y_train), len(data.y_val), len(data.y_test))

    seed_everything(t.seed, t.deterministic)
    model = build_model(config.model, num_classes=len(data.class_names),
                        normalization=d.normalization, train_images=data.x_train)
    compile_model(model, config.optimizer)
    if context.progress_bar:
        model.summary(print_fn=log.info)

    run_name = config.tracking.run_name or default_run_name(context.overrides)
    checkpoint = checkpoint_for(config, context.launch_dir)
    resume_id = checkpoint.run_to_resume(t.resume)

    with tracking.tracked_run(experiment_id, run_name, tracking.run_tags(context.overrides),
                              resume_run_id=resume_id) as run_id:
        checkpoint.claim(run_id)
        if resume_id is None:
            tracking.log_config(config, context.hydra_dir)
            tracking.log_datasets(data)
        fit(model, data, t, callbacks=[tracking.EpochLogger()],
            verbose=1 if context.progress_bar else 2, backup_dir=checkpoint.backup_dir)
        history = tracking.epoch_history(run_id)
        # The kept model's validation score (with early stopping that is the best epoch's,
        # not the last's): what sweeps optimise. The test set is touched once, after it.
        val_loss, val_accuracy = model.evaluate(data.x_val, data.y_val, batch_size=1024,
                                                verbose=0)
        test = evaluate(model, data.x_test, data.y_test, data.class_names)
        tracking.log_evaluation(test, {"loss": val_loss, "accuracy": val_accuracy},
                                _figures(history, test, data))
        model_uri = (tracking.log_model(model, data.x_test[:2]) if config.tracking.log_model
                     else None)
        tracking.log_files(context.log_file)
    checkpoint.discard()
    return RunResult(run_id=run_id, run_name=run_name, experiment_id=experiment_id,
                     tracking_uri=redact(uri), model_uri=model_uri,
                     val_accuracy=float(val_accuracy), test_accuracy=test.accuracy,
                     test_loss=test.loss)


def default_run_name(overrides: tuple[str, ...]) -> str:
    """The overrides that change the experiment, e.g. 'optimizer=sgd trainer.epochs=5'."""
    meaningful = [o for o in overrides if not o.lstrip("+~").startswith(_NAMELESS_OVERRIDES)]
    return " ".join(meaningful)[:250] or "default"


def _figures(history, test, data: Dataset) -> dict:
    picked = plots.pick_samples(test.labels, test.probabilities)
    return {
        "curves.png": plots.plot_curves(history),
        "confusion_matrix.png": plots.plot_confusion_matrix(test.confusion, data.class_names),
        "sample_predictions.png": plots.plot_predictions(
            data.x_test[picked], test.labels[picked], test.probabilities[picked],
            data.class_names),
    }
