"""Whether a sweep's process still lives, and ending what a dead one left RUNNING.

A sweep killed outright (SIGKILL, the OOM killer, a lost node) runs no handler: its parent
run and the job runs it had open stay RUNNING in MLflow. How long a run has been RUNNING
cannot tell a dead sweep from a long one, nor from one on another machine; so the
launching process holds an exclusive flock on <sweep dir>/sweep.lock for its whole life,
and the kernel lets it go when the process dies, whatever killed it (on NFSv4 the server
frees the locks of a machine that went down once its lease lapses). A sweep whose lock
can be taken is dead; one whose folder is not on this machine, or that has no lock file
(started before there was one), cannot be judged and is left alone. Each job's own
record has a lock of the same kind (tracking/record.py), so a job that outlived its sweep
(a SLURM job) is left alone too.

The runs a dead sweep left open are ended KILLED and tagged mnist_exp.ended_by (resume or
sync), each through a local record (uploaded as any record is): its jobs' own, its
parent's (parent.py), and, for a run with none here, one that writes to it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from mnist_exp.errors import ServerDown, UserError, first_line
from mnist_exp.sweeps.summary import SUMMARY_PENDING
from mnist_exp.tracking.record import find_records
from mnist_exp.tracking.store import SWEEP_FILE, SweepInfo, read_sweep_info

LOCK = "sweep.lock"
ENDED_BY = "mnist_exp.ended_by"  # on a run a dead sweep left open: who ended it (resume, sync)
SWEEP_DIR_TAG = "mnist_exp.sweep_dir"  # on a parent run: its sweep's folder, absolute
STUDY_TAG = "mnist_exp.study"  # on an Optuna search's parent run: its study (study.study_key)
_HELD: list[IO[str]] = []  # this process's sweep locks, open for as long as it lives
# Mount options under which a lock is seen on this machine only (NFS, Lustre).
_LOCAL_LOCKS = {"nolock", "local_lock=all", "local_lock=flock", "localflock"}

log = logging.getLogger(__name__)


def hold_sweep(sweep_dir: Path) -> None:
    """Take the sweep's lock for the rest of this process's life (it says who holds it);
    UserError if a live process holds it already: that sweep is running now."""
    lock = (sweep_dir / LOCK).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise UserError(f"{sweep_dir}: its sweep is running now ({holder}); wait for it to "
                        "end, or stop it, before resuming it") from None
    except OSError as e:  # a file system without locks: left alone by a later resume or sync
        lock.close()
        log.warning("%s: no lock on this file system (%s): a later resume or sync cannot "
                    "tell whether this sweep still runs, and leaves its runs as they are",
                    sweep_dir, e.strerror or e)
        return
    lock.truncate(0)
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    lock.flush()
    _HELD.append(lock)


@contextmanager
def _if_dead(sweep_dir: Path) -> Iterator[bool]:
    """Whether the process that ran the sweep has died (its lock is free); the lock is held
    meanwhile, so a sync and a resume never both end its runs. False while it lives, and
    when it cannot be told: no lock file here, or a lock of another machine's on a file
    system whose locks that machine would not have seen."""
    try:
        lock = (sweep_dir / LOCK).open("r")
    except OSError:
        yield False
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held (BlockingIOError), or no locks on this file system
            yield False
            return
        host = lock.read().strip().rpartition(" on ")[2]
        yield host == socket.gethostname() or locks_shared(sweep_dir)


def locks_shared(path: Path, mounts: str | None = None) -> bool:
    """Whether a lock taken on `path` here is seen by other machines: not on a network file
    system mounted with local locks only (NFS nolock or local_lock, Lustre localflock), as
    /proc/mounts (or `mounts`, its text) says of the mount `path` is on."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:  # not Linux: its locks are taken as they come
            return True
    target, options = str(path.resolve()), ""
    best = ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, options = point, fields[3]
    return not _LOCAL_LOCKS & set(options.split(","))


def end_dead_sweep(sweep_dir: Path, by: str) -> str | None:
    """If the sweep in `sweep_dir` died and left runs open: end them KILLED (end_leftovers)
    and say so in one line; None if it lives, cannot be judged, or left nothing open. A
    sweep kept for its summary (SUMMARY_PENDING) is sync's to finish, not to end. Its
    jobs' records are ended here and uploaded by the caller (upload_folder)."""
    info = _sweep_info(sweep_dir)
    if info is None or (sweep_dir / SUMMARY_PENDING).exists():
        return None
    with _if_dead(sweep_dir) as dead:
        if not dead:
            return None
        jobs, parent = end_leftovers(info, sweep_dir, by)
    if not jobs and not parent:
        return None
    what = [f"its parent run {info.parent_run_id}"] if parent else []
    what += [f"{jobs} job run(s)"] if jobs else []
    return (f"{sweep_dir}: the sweep's process had died; ended KILLED ({ENDED_BY}={by}): "
            f"{' and '.join(what)}")


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
    ended, recorded = _end_records(sweep_dir, tags, sweep_dir / PARENT_DIR)
    client = mlflow.MlflowClient(info.tracking_uri)
    try:
        open_jobs = [r.info.run_id for r in client.search_runs(
            [info.experiment_id], f"tags.`mlflow.parentRunId` = '{info.parent_run_id}' and "
            "attributes.status = 'RUNNING'") if r.info.run_id not in recorded]
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


def reopen_parent(info: SweepInfo, sweep_dir: Path) -> None:
    """A resumed sweep's parent run RUNNING again, through a new record of it (parent.py),
    without the ENDED_BY tag a sync or this resume gave it when its earlier process had
    died (it is not ended any more)."""
    from mnist_exp.sweeps.parent import start_parent

    start_parent(sweep_dir, info.tracking_uri, info.experiment_id, "", "", {},
                 resume_run_id=info.parent_run_id, untag=(ENDED_BY,))


def _end_records(sweep_dir: Path, tags: dict[str, str],
                 skip: Path | None = None) -> tuple[int, set[str]]:
    """End KILLED, with `tags`, each record under `sweep_dir` (but those under `skip`) that
    never ended and that no live process holds; how many, and the run ids of every record
    (their runs are the records' to end, through upload_folder)."""
    ended, recorded = 0, set()
    for record in find_records([sweep_dir]):
        try:
            recorded.add(record.ids.get("run_id"))
        except UserError:  # a damaged ids.json: upload_folder names it
            continue
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


def end_dead_sweeps(folders: list[Path], by: str = "sync") -> list[str]:
    """Every sweep under `folders` (a sweep folder itself, or any folder above) whose
    process died with runs open: ended as end_dead_sweep does; one line for each. One whose
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
            line = end_dead_sweep(sweep_dir, by)
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
