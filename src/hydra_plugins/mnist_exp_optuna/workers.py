"""Trials without a barrier: each of N workers launches one trial at a time through the
Hydra launcher and asks for the next as soon as its trial has ended, so a slow trial holds
up only its own worker (a batch of N waits for its slowest).

A worker is a thread of the launching process that blocks in `launcher.launch([one job])`
while the job runs in the launcher's own process, node or Ray task. That is safe for the
launchers that run jobs elsewhere: joblib's calls share loky's reusable executor (its
creation is locked, and submitting from threads is what an executor is for), submitit's
and Ray's calls each wait for their own jobs. Hydra's basic launcher runs a job in this
very process, and joblib does too with n_jobs=1: those get one worker, in this thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mnist_exp.sweeps.workers import concurrent_jobs

log = logging.getLogger(__name__)
IN_PROCESS = ("BasicLauncher",)  # Hydra's own: one job after the other, in this process


@dataclass(frozen=True)
class Job:
    """One trial's job: its Hydra job number (unique in the sweep: its folder), overrides
    and the Optuna trial it answers."""

    number: int
    overrides: tuple[str, ...]
    trial: Any


def worker_count(launcher: Any, wanted: int) -> int:
    """How many trials may run at once: hydra.sweeper.n_jobs, but never more than the
    launcher runs at once, nor more than one where it runs jobs in this process."""
    name = type(launcher).__name__
    slots = None
    if name in IN_PROCESS:
        slots = 1
    elif name == "JoblibLauncher":
        slots = concurrent_jobs(launcher.joblib.get("n_jobs"))
    if slots is not None and slots < wanted:
        log.warning("hydra.sweeper.n_jobs=%d: %s runs %d job(s) at once%s; %d trial(s) at a "
                    "time", wanted, name, slots,
                    " (hydra.launcher.n_jobs)" if name == "JoblibLauncher" else "", slots)
        return slots
    return wanted


def prepare(launcher: Any) -> None:
    """Ray's launcher starts Ray in its first launch when it is not running yet: two
    workers' first launches at once would both start it. Start it once, before them, as
    the launcher would (hydra_ray_launcher._core.launch)."""
    if type(launcher).__name__ != "RayLauncher":
        return
    from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

    launcher.ray_cfg.init.setdefault("object_store_memory", 78643200)  # the launcher's own
    start_ray(launcher.ray_cfg.init)


def run_workers(next_job: Callable[[], Job | None], finish: Callable[[Job, Any], None],
                launcher: Any, workers: int) -> None:
    """Run jobs until `next_job` has none left, `workers` at a time: each worker launches
    one, hands its JobReturn to `finish`, and asks for the next. The first error a worker
    meets (a launcher that broke, a study that refuses) stops every worker from taking a
    new job and is raised here once those running have ended."""
    if workers <= 1:
        _work(next_job, finish, launcher, threading.Event())
        return
    prepare(launcher)
    stop, errors = threading.Event(), []

    def worker() -> None:
        try:
            _work(next_job, finish, launcher, stop)
        except BaseException as e:  # SystemExit too: it must reach the main thread
            errors.append(e)
            stop.set()

    # Daemon threads: Ctrl-C in the main thread ends the sweep without waiting for them
    # (the launcher's workers get the same Ctrl-C; the callback marks the runs KILLED).
    threads = [threading.Thread(target=worker, name=f"optuna-worker-{i}", daemon=True)
               for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _work(next_job: Callable[[], Job | None], finish: Callable[[Job, Any], None],
          launcher: Any, stop: threading.Event) -> None:
    while not stop.is_set() and (job := next_job()) is not None:
        [ret] = launcher.launch([list(job.overrides)], initial_job_idx=job.number)
        finish(job, ret)
