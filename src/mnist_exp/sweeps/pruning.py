"""Pruning from inside a trial's job: a Keras callback that reports each epoch's validation
accuracy to the trial and stops training when the study's pruner says so.

The job may run in another process than the sweeper (joblib's workers, a SLURM node), so it
opens the study itself, by storage URL and name, and addresses its trial by id
(study.TrialLink, handed over by the sweeper). It only reports; telling the trial's end is
the sweeper's job, which reads the user attribute set here (study.PRUNED_ATTR).
"""

from __future__ import annotations

import logging

import keras

from mnist_exp.sweeps.study import (
    PRUNED_ATTR,
    PRUNED_TAG,
    TrialLink,
    make_pruner,
    open_storage,
)
from mnist_exp.tracking.upload import Tracker

log = logging.getLogger(__name__)
MONITOR = "val_accuracy"


class PruneTrial(keras.callbacks.Callback):
    """Report val_accuracy per epoch to the trial; stop training once it should be pruned,
    tagging the run optuna.pruned=true. Training stops cleanly, so the run
    goes on to evaluate and record what it reached."""

    def __init__(self, link: TrialLink, tracker: Tracker) -> None:
        super().__init__()
        self.tracker = tracker
        import optuna

        study = optuna.load_study(study_name=link.study_name, storage=open_storage(link.storage),
                                  pruner=make_pruner(**link.pruner))
        self.trial = optuna.trial.Trial(study, link.trial_id)
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(MONITOR)
        if value is None:
            return
        self.trial.report(float(value), step=epoch)
        last = epoch + 1 >= self.params.get("epochs", 0)  # nothing left to save: let it finish
        if not last and self.trial.should_prune():
            self.pruned_at = epoch + 1
            self.trial.set_user_attr(PRUNED_ATTR, self.pruned_at)
            self.tracker.emit("tags", values={PRUNED_TAG: "true"})
            log.info("Optuna pruned trial %d after epoch %d (val_accuracy %.4f)",
                     self.trial.number, self.pruned_at, value)
            self.model.stop_training = True


def callbacks_for(link: TrialLink | None, tracker: Tracker) -> list[keras.callbacks.Callback]:
    """The pruning callback for a job that is an Optuna trial; none otherwise."""
    return [PruneTrial(link, tracker)] if link is not None else []
