"""Ending, once a sweep's process has died (liveness.py judges that), what it left open:
the runs it had started, each ended KILLED through a local record (uploaded as any record
is: its jobs' own, its parent's, parent.py, and, for a run with none here, one that
writes to it), and an Optuna search's trials still running, told FAIL, or their finished
jobs' results.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mnist_exp.errors import ServerDown, UserError, first_line
from mnist_exp.tracking.record import find_records
from mnist_exp.tracking.store import SweepInfo

ENDED_BY = "mnist_exp.ended_by"  # on a run a dead sweep left open: who ended it (resume, sync)

log = logging.getLogger(__name__)


def fail_trials(sweep_dir: Path) -> str | None:
    """A dead search's trials still running told FAIL (study.fail_dead_trials), but those
    whose job still runs (its record held: a SLURM job outliving its sweep), left, and
    those whose job has finished since (a SLURM job goes on without its search), told its
    result: a phrase naming them, or None; a study that cannot be opened is named in a
    warning, and the same search run again ends them."""
    from mnist_exp.sweeps.study import fail_dead_trials, trial_jobs

    try:
        jobs = trial_jobs(sweep_dir)
        if not jobs:
            return None  # a grid sweep
        live, finished = [], {}
        for record in find_records([sweep_dir]):
            try:
                if not record.ended:
                    record.hold()
            except BlockingIOError:
                live.append(record.folder.parent)
            finally:
                record.let_go()
            value = _finished_value(record)
            trial = next((t for file, t in jobs if file.parent.parent == record.folder.parent),
                         None)
            if value is not None and trial is not None:
                finished[trial] = value
        return fail_dead_trials([(file, trial) for file, trial in jobs
                                 if not any(job in file.parents for job in live)], finished)
    except Exception as e:
        log.warning("%s: could not end the Optuna trials its dead search left running (%s); "
                    "the same search run again ends them", sweep_dir, first_line(e))
        return None


def _finished_value(record: Any) -> float | None:
    """The validation accuracy a FINISHED job's run recorded (what its job answered the
    sweeper, cli/run.py), or None."""
    from mnist_exp.sweeps.ranking import VALIDATION  # not at the top: it draws (matplotlib)

    if not record.ended or record.events[-1].get("status") != "FINISHED":
        return None
    return next((e["values"][VALIDATION] for e in reversed(record.events)
                 if e["op"] == "metrics" and VALIDATION in e["values"]), None)


def end_leftovers(info: SweepInfo, sweep_dir: Path, by: str | None,
                  parent: bool = True) -> tuple[int, bool]:
    """End KILLED, tagged ENDED_BY=by (if given), what the dead process of a sweep left
    open, each through a record (parent.py) the caller uploads (upload_folder): its jobs'
    records that never ended (unless a live job holds them), its RUNNING job runs that
    have no record here, and (`parent`) its parent run. How many job runs, and whether the
    parent, were ended. ServerDown if the store does not answer."""
    import mlflow

    from mnist_exp.sweeps.parent import PARENT_DIR, close_run
    from mnist_exp.tracking.upload import unreachable

    tags = {ENDED_BY: by} if by else {}
    ended, recorded = end_open_records(sweep_dir, tags, sweep_dir / PARENT_DIR)
    client = mlflow.MlflowClient(info.tracking_uri)
    try:
        open_jobs = [r.info.run_id for r in client.search_runs(
            [info.experiment_id], f"tags.`mlflow.parentRunId` = '{info.parent_run_id}' and "
            "attributes.status = 'RUNNING'") if r.info.run_id not in recorded
            and run_key(r.info.run_name, r.info.start_time) not in recorded]
        for run_id in open_jobs:
            close_run(sweep_dir, info, run_id, "KILLED", tags)
        ends_parent = parent and _end_parent(info, sweep_dir, tags, client)
    except Exception as e:
        if unreachable(e):
            raise ServerDown(str(e)) from e
        raise
    return ended + len(open_jobs), ends_parent


def _end_parent(info: SweepInfo, sweep_dir: Path, tags: dict[str, str], client: Any) -> bool:
    """End the parent's record KILLED, with `tags`, unless it ended; whether it did. A
    parent from before parents had records is ended only if the store holds it RUNNING."""
    from mnist_exp.sweeps.parent import PARENT_DIR, let_go, now, parent_record

    if (not any(r.events for r in find_records([sweep_dir / PARENT_DIR]))
            and client.get_run(info.parent_run_id).info.status != "RUNNING"):
        return False
    record = parent_record(sweep_dir, info)
    try:
        if record.ended:
            return False
        if tags:
            record.append("tags", values=tags)
        record.append("end", status="KILLED", end_time=now())
        return True
    finally:
        let_go(sweep_dir)  # the caller uploads it


def run_key(run_name: str | None, start_time: int | None) -> str:
    """How a record knows its run before it has heard the run's id: a process killed
    between the store's creating the run and the record's noting its id leaves a RUNNING
    run of the record's name and start time, which the record's upload fills in
    (replay.py), so it is not a run without a record."""
    return f"{run_name}@{int(start_time or 0)}"


def end_open_records(folder: Path, tags: dict[str, str],
                     skip: Path | None = None) -> tuple[int, set[str]]:
    """End KILLED, with `tags`, each run record under `folder` (but those under `skip`)
    that never ended (SIGKILL runs no handler) and that no live process holds (a job that
    may still run is left to it); how many, and each record's run, by its id or, while it
    has none, its run_key (their runs are the records' to end: the caller uploads them,
    upload_folder)."""
    ended, recorded = 0, set()
    for record in find_records([folder]):
        try:
            run_id = record.ids.get("run_id")
        except UserError:  # a damaged ids.json: upload_folder names it
            continue
        start = record.events[0] if record.events else {}
        recorded.add(run_id or run_key(start.get("run_name"), start.get("start_time")))
        # A damaged record is repaired (ended FAILED) by upload_folder.
        if (record.ended or record.needs_repair or not record.events
                or (skip is not None and skip in record.folder.parents)):
            continue
        try:
            record.hold()
        except BlockingIOError:  # its job still runs (a SLURM job outliving its sweep)
            continue
        try:
            record.reload()
            if not record.ended:
                last = max((e.get("timestamp") or e.get("start_time") or 0)
                           for e in record.events)
                if tags:
                    record.append("tags", values=tags)
                record.append("end", status="KILLED", end_time=last)
                ended += 1
        finally:
            record.let_go()
    return ended, recorded
