"""Ending what a sweep whose process died left RUNNING.

A sweep killed outright (SIGKILL, the OOM killer, a lost node) runs no handler: its parent
run and the job runs it had open stay RUNNING in MLflow. Its process held the sweep's
lock (sweep_lock.py) for its life: a sweep whose lock can be taken is dead; one whose
folder is not on this machine, or that has no lock file (started before there was one),
cannot be judged: sync names it and leaves it alone until the user says its process has
ended (sync --dead-sweeps). Each job's own record has a lock of the same kind
(tracking/record.py), so a job that outlived its sweep (a SLURM job) is left alone too.

What the dead sweep left open (its runs, an Optuna search's trials) is ended by
leftovers.py, tagged mnist_exp.ended_by (resume or sync).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mnist_exp.errors import ServerDown, first_line
from mnist_exp.sweeps.leftovers import ENDED_BY, end_leftovers, end_open_records, fail_trials
from mnist_exp.sweeps.summary import SUMMARY_PENDING
from mnist_exp.sweeps.sweep_lock import LOCK, if_dead
from mnist_exp.sweeps.sweep_lock import hold_sweep as hold_sweep  # the callback's
from mnist_exp.tracking.store import SWEEP_FILE, SweepInfo, read_sweep_info

SWEEP_DIR_TAG = "mnist_exp.sweep_dir"  # on a parent run: its sweep's folder, absolute
STUDY_TAG = "mnist_exp.study"  # on an Optuna search's parent run: its study (study.study_key)

log = logging.getLogger(__name__)


def end_dead_sweep(sweep_dir: Path, by: str, declared: bool = False) -> str | None:
    """If the sweep in `sweep_dir` died and left runs open: end them KILLED (end_leftovers),
    tell its Optuna trials still running FAIL, and say so in one line; None if it lives,
    left nothing open, or cannot be judged (named in a warning) unless the user `declared`
    it dead. A sweep kept for its summary (SUMMARY_PENDING) is sync's to finish, not to
    end. Its jobs' records are ended here and uploaded by the caller (upload_folder)."""
    info = _sweep_info(sweep_dir)
    if info is None:
        return end_unborn_sweep(sweep_dir, by, declared)
    if (sweep_dir / SUMMARY_PENDING).exists():
        return None
    with if_dead(sweep_dir) as dead:
        if dead is False and declared:
            log.warning("%s: its sweep is running now (its lock is held): left as it is",
                        sweep_dir)
        if dead is None and not declared:
            _name_unjudged(info, sweep_dir)
        if not dead and not (dead is None and declared):
            return None
        jobs, parent = end_leftovers(info, sweep_dir, by)
        trials = fail_trials(sweep_dir)
    what = [f"its parent run {info.parent_run_id}"] if parent else []
    what += [f"{jobs} job run(s)"] if jobs else []
    if not what and not trials:
        return None
    ended = [f"ended KILLED ({ENDED_BY}={by}): {' and '.join(what)}"] if what else []
    return "; ".join([f"{sweep_dir}: the sweep's process had died" if dead else
                      f"{sweep_dir}: the sweep's process said to have ended", *ended,
                      *([trials] if trials else [])])


def end_unborn_sweep(sweep_dir: Path, by: str, declared: bool = False) -> str | None:
    """A sweep whose process died as it began, its folder claimed (SWEEP_FILE still empty)
    and no job started: its parent run's record, if it has one, ended KILLED (its upload
    fills in the run the store made, or makes it: replay.py), and the folder freed, so
    the same sweep starts afresh there. One line, or None if it is not such a sweep, lives,
    or cannot be judged (unless `declared` dead)."""
    from mnist_exp.sweeps.parent import PARENT_DIR

    claimed = sweep_dir / SWEEP_FILE
    if not claimed.is_file() or claimed.stat().st_size:
        return None
    with if_dead(sweep_dir) as dead:
        if not (dead or (dead is None and declared)):
            return None
        ended, _ = end_open_records(sweep_dir / PARENT_DIR, {ENDED_BY: by})
        claimed.unlink()
    return (f"{sweep_dir}: the sweep's process had died as it began, before any job; ended "
            f"KILLED ({ENDED_BY}={by}): its parent run" if ended else None)


def _name_unjudged(info: SweepInfo, sweep_dir: Path) -> None:
    """One line for a sweep whose parent run is RUNNING but whose life cannot be judged
    here: how the user, knowing its process has ended, has its runs ended."""
    import mlflow

    try:
        client = mlflow.MlflowClient(info.tracking_uri)
        if client.get_run(info.parent_run_id).info.status != "RUNNING":
            return
    except Exception:  # a store away, or a run it lacks: the upload or resume says so
        return
    why = ("it has no sweep.lock (it started before sweeps held one)"
           if not (sweep_dir / LOCK).exists() else "its lock cannot be judged on this machine")
    log.warning("%s: its parent run %s is RUNNING, and whether its sweep still runs cannot be "
                "told: %s; once its process has ended, python -m mnist_exp.sync --dead-sweeps "
                "%s ends its open runs KILLED", sweep_dir, info.parent_run_id, why, sweep_dir)


def reopen_parent(info: SweepInfo, sweep_dir: Path) -> None:
    """A resumed sweep's parent run RUNNING again, through a new record of it (parent.py),
    without the ENDED_BY tag a sync or this resume gave it when its earlier process had
    died (it is not ended any more)."""
    from mnist_exp.sweeps.parent import start_parent

    start_parent(sweep_dir, info.tracking_uri, info.experiment_id, "", "", {},
                 resume_run_id=info.parent_run_id, untag=(ENDED_BY,))


def end_dead_searches(info: SweepInfo, study: str, by: str = "resume") -> list[str]:
    """Before a search continues study `study`: end the earlier searches of that study, in
    this experiment, that are still RUNNING but whose process died (end_dead_sweep), and
    upload their jobs' records; one line for each."""
    import mlflow

    from mnist_exp.tracking.upload import upload_folder

    lines = []
    for run in mlflow.MlflowClient(info.tracking_uri).search_runs(
            [info.experiment_id], "tags.`mnist_exp.sweep` = 'parent' and "
            "attributes.status = 'RUNNING'"):
        folder = run.data.tags.get(SWEEP_DIR_TAG)
        if (run.info.run_id == info.parent_run_id or run.data.tags.get(STUDY_TAG) != study
                or not folder):
            continue
        earlier = _sweep_info(Path(folder))  # a folder of this path on another machine:
        if earlier is None or earlier.parent_run_id != run.info.run_id:  # not that sweep's
            continue
        if line := end_dead_sweep(Path(folder), by):
            if upload_folder(Path(folder)):
                raise ServerDown(f"the runs of {folder} not uploaded")
            lines.append(line)
    return lines


def end_dead_sweeps(folders: list[Path], by: str = "sync",
                    declared: bool = False) -> list[str]:
    """Every sweep under `folders` (a sweep folder itself, or any folder above) whose
    process died with runs open (or, `declared`, that the user says has ended, where its
    lock cannot tell): ended as end_dead_sweep does; one line for each. One whose
    store does not answer is left for the next sync (its records' upload says so); one its
    store refuses (a parent run deleted there, say) is named in a warning, and the others
    are still ended."""
    found: dict[Path, Path] = {}  # each sweep once, however it was reached
    for folder in folders:
        files = [folder / SWEEP_FILE] if (folder / SWEEP_FILE).is_file() else sorted(
            folder.rglob(SWEEP_FILE))
        for file in files:
            found.setdefault(file.parent.resolve(), file.parent)
    lines = []
    for sweep_dir in found.values():
        try:
            line = end_dead_sweep(sweep_dir, by, declared)
        except ServerDown:
            continue
        except Exception as e:
            log.warning("%s: could not end the runs its dead sweep left open: %s", sweep_dir,
                        first_line(e))
            continue
        lines += [line] if line else []
    return lines


def _sweep_info(sweep_dir: Path) -> SweepInfo | None:
    """The sweep's record, or None: no folder here, or a record its process never wrote
    (killed between claiming the folder and making the parent run)."""
    try:
        return read_sweep_info(sweep_dir)
    except (OSError, ValueError, TypeError):
        return None


def sweep_tags(sweep_dir: Path, study: str | None) -> dict[str, Any]:
    """The tags by which a later resume or sync finds a sweep's folder and its study."""
    return {SWEEP_DIR_TAG: str(sweep_dir.resolve()), **({STUDY_TAG: study} if study else {})}
