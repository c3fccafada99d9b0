"""Optuna search as a Hydra sweeper, on Optuna's ask/tell API.

Only this process touches the study's trials. Each of n_jobs workers (workers.py) asks the
study for a trial, launches it as one Hydra job and tells its end, then asks for the next:
no worker waits for another's trial. The study never holds more than n_trials (those
running included). A trial that answers NaN, raises, or is refused by the config schema
is told FAIL with its reason and the search goes on; one that the pruner stopped is told
PRUNED. The study is kept in a storage that outlives the search (a SQLite file, a journal
file or PostgreSQL: mnist_exp.sweeps.study), so the same command again continues it:
finished trials count toward n_trials and are not run again.

Each job learns its trial's id from the environment variable MNIST_EXP_OPTUNA_TRIAL, set
through the override hydra.job.env_set.<name>: a Hydra setting, so it reaches a job in any
process or machine, and never enters the job's own config, run name or MLflow params.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.mnist_exp_optuna.workers import Job, run_workers, worker_count
from mnist_exp.errors import ConfigError, exit_with, first_line, redact

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    def __init__(self, direction: str, study_name: str, storage: str | None, n_trials: int,
                 n_jobs: int, sampler: DictConfig, pruner: DictConfig,
                 params: DictConfig | None) -> None:
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs = n_trials, max(1, n_jobs)
        self.sampler, self.pruner = dict(sampler), dict(pruner)
        self.params = dict(params or {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from hydra_plugins.mnist_exp_optuna import results
        from hydra_plugins.mnist_exp_optuna.space import parse_params
        from mnist_exp.sweeps.study import (
            cluster_note,
            fail_abandoned,
            make_pruner,
            make_sampler,
            open_storage,
            resolve_storage,
        )

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # we say what happens, once
        try:
            url = resolve_storage(self.storage, Path.cwd())
            space, fixed = parse_params([*(f"{k}={v}" for k, v in self.params.items()),
                                         *arguments])
            study = optuna.create_study(
                study_name=self.study_name, storage=open_storage(url), direction=self.direction,
                sampler=make_sampler(self.sampler["name"], self.sampler.get("seed")),
                pruner=make_pruner(**self.pruner), load_if_exists=True)
        except Exception as e:  # a bad search space, sampler, pruner or storage: one line
            exit_with(ConfigError(redact(first_line(e))))
        if note := cluster_note(url, self.config.hydra.launcher):
            log.warning(note)
        url = redact(url)  # shown from here on
        for number in fail_abandoned(study):  # left by a search that was stopped
            log.warning("Trial %d was left running by an earlier, stopped search: marked "
                        "failed", number)
        _reseed(study, self.sampler)
        done = _counted(study)
        log.info("Optuna study %r in %s: %d of %d trials done%s", self.study_name, url, done,
                 self.n_trials, "; continuing it" if done else "")
        search = Search(study, space, fixed, self.n_trials,
                        where=f"study {self.study_name!r} in {url}")
        workers = worker_count(self.launcher, self.n_jobs)
        if workers > 1:
            log.info("%d workers: each starts the next trial as soon as its own has ended",
                     workers)
        try:
            run_workers(search.next_job, search.finish, self.launcher, workers)
        except ConfigError as e:
            exit_with(e)
        results.record(study, self.sweep_dir)


class Search:
    """The study's side of a search, shared by its workers: the next trial's job while the
    study holds fewer than n_trials (running ones included), and each trial's end. One lock
    around both: a duplicate's check reads the study, then tells it, and the count of
    running trials must match what the study holds."""

    def __init__(self, study: Any, space: dict[str, Any], fixed: dict[str, str],
                 n_trials: int, where: str) -> None:
        self.study, self.space, self.fixed, self.n_trials = study, space, fixed, n_trials
        self.where = where  # the study and its storage, for an error's line
        self.lock = threading.Lock()
        self.running = 0
        self.jobs = 0  # Hydra job numbers handed out: each job its own folder

    def next_job(self) -> Job | None:
        """The next trial as a job, or None once the study holds n_trials."""
        from hydra_plugins.mnist_exp_optuna.space import as_override
        from mnist_exp.sweeps.study import TRIAL_ENV

        with self.lock:
            while self.n_trials - _counted(self.study) - self.running > 0:
                try:
                    trial = self.study.ask(self.space)
                except ValueError as e:  # e.g. other choices than the study's trials had
                    raise ConfigError(f"{self.where}: {e} (its search space changed: start a "
                                      "new study with hydra.sweeper.study_name=...)") from None
                if _told_as_duplicate(self.study, trial):
                    continue
                overrides = (*(as_override(k, v) for k, v in trial.params.items()),
                             *(f"{k}={v}" for k, v in self.fixed.items()),
                             f"++hydra.job.env_set.{TRIAL_ENV}={trial._trial_id}")
                self.running += 1
                self.jobs += 1
                # joblib's launcher numbers every one-job launch #0: say which job it is
                log.info("Trial %d: job %d", trial.number, self.jobs - 1)
                return Job(self.jobs - 1, overrides, trial)
            return None

    def finish(self, job: Job, ret: JobReturn) -> None:
        with self.lock:
            self.running -= 1
            _tell(self.study, job.trial, ret)


def _tell(study: Any, trial: Any, ret: JobReturn) -> None:
    """End the trial as its job ended: COMPLETE with its value, PRUNED, or FAIL (with the
    reason as the trial's user attribute fail_reason)."""
    from optuna.trial import TrialState

    from mnist_exp.sweeps.failures import read_failure
    from mnist_exp.sweeps.study import PRUNED_ATTR

    try:
        value = float(ret.return_value)
        reason = None if math.isfinite(value) else f"the job answered {value}"
    except Exception as e:  # the job raised (run.py turns most errors into NaN + FAILED)
        value, reason = math.nan, f"{type(e).__name__}: {e}"
    job_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir) if ret.hydra_cfg else None
    failed = read_failure(job_dir) if job_dir is not None else None
    if reason and failed is not None:
        reason = failed[0]
    if reason:
        trial.set_user_attr("fail_reason", reason[:1000])
        study.tell(trial, state=TrialState.FAIL)
        log.warning("Trial %d failed: %s", trial.number, reason.splitlines()[0])
    elif PRUNED_ATTR in _reported(study, trial.number):
        study.tell(trial, state=TrialState.PRUNED)
        log.info("Trial %d pruned (val_accuracy %.4f)", trial.number, value)
    else:
        study.tell(trial, value)
        log.info("Trial %d: %.4f with %s", trial.number, value,
                 " ".join(f"{k}={v}" for k, v in trial.params.items()))


def _reseed(study: Any, sampler: dict[str, Any]) -> None:
    """A continued study's sampler is seeded with the seed plus the trials it already holds:
    seeded alike, a second command's sampler would propose the first command's trials again,
    and still the same command on the same study proposes the same trials."""
    from mnist_exp.sweeps.study import make_sampler

    if sampler.get("seed") is not None and study.trials:
        study.sampler = make_sampler(sampler["name"], sampler["seed"] + len(study.trials))


def _told_as_duplicate(study: Any, trial: Any) -> bool:
    """A proposal equal to a finished trial is not trained again: it is told that trial's
    value (user attribute duplicate_of), as Optuna's FAQ advises for repeated samples."""
    from optuna.trial import TrialState

    for done in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if done.params == trial.params:
            trial.set_user_attr("duplicate_of", done.number)
            study.tell(trial, done.value)
            log.info("Trial %d repeats trial %d's parameters: told its value, not run again",
                     trial.number, done.number)
            return True
    return False


def _reported(study: Any, number: int) -> dict[str, Any]:
    """A running trial's user attributes as its job left them in the storage (a Trial
    object keeps the ones it read when it was asked for)."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return next((t.user_attrs for t in running if t.number == number), {})


def _counted(study: Any) -> int:
    """Trials that count toward n_trials: finished ones, failures included (a failure is a
    data point), but not those an interrupted earlier run left behind."""
    from optuna.trial import TrialState

    from mnist_exp.sweeps.study import ABANDONED

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and ABANDONED not in t.user_attrs)
               for t in study.get_trials(deepcopy=False))
