"""A sweep's failed jobs: the FAILED file each leaves in its folder, the FAILED MLflow run
of one that failed before its run existed, and the error the sweep then ends with.

A failed job answers NaN so the other jobs go on; its FAILED file keeps the line and exit
code `errors.describe` gave it, so the sweep ends as that job would have ended alone. A
job its cluster stopped (SLURM: scancel, time limit, preemption; its run KILLED, never
ranked) leaves a STOPPED file instead: it did not fail, yet the sweep is not complete.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path

from mnist_exp.errors import DISK_ERRORS, FolderUnwritable, JobsFailed, redact, unwritable
from mnist_exp.tracking.store import SweepInfo

log = logging.getLogger(__name__)

FAILED = "FAILED"
STOPPED = "STOPPED"
_EXIT_CODE = re.compile(r"^exit code: (\d+)$", re.MULTILINE)


def write_failure(job_dir: Path, message: str, exit_code: int, mark: str = FAILED) -> None:
    """Leave the job's failure (or stop) in its folder: the user's line, then its exit code.
    A disk that cannot take that line (full, over quota) mostly still takes empty files,
    which need no room: the mark, and beside it one named after the disk's error
    (FAILED.ENOSPC), from which `read_failure` tells the line. One that takes nothing
    (read-only) leaves a line in the log, never a traceback."""
    mark_file = job_dir / mark
    try:
        job_dir.mkdir(parents=True, exist_ok=True)  # a job SLURM ended before it started
        for stale in job_dir.glob(f"{mark}.E*"):
            stale.unlink()
        mark_file.write_text(f"{message}\nexit code: {exit_code}\n")
    except OSError as e:
        full = unwritable(e, [job_dir])
        if full is None:
            raise
        try:
            mark_file.write_bytes(b"")  # what a cut write left, if anything: the name tells
            (job_dir / f"{mark}.{errno.errorcode[full.errno]}").touch()
        except OSError:
            log.error("%s: the job's %s file could not be left there either", full, mark)


def read_failure(job_dir: Path) -> tuple[str, int] | None:
    """A failed or stopped job's line and exit code (1 if none was recorded); None if it
    did neither."""
    path = next((job_dir / m for m in (FAILED, STOPPED) if (job_dir / m).is_file()), None)
    if path is None:
        return None
    text = path.read_text().strip()
    if not text and (disk := _disk_mark(path)) is not None:
        return str(FolderUnwritable(job_dir, OSError(disk, os.strerror(disk)),
                                    setting="hydra.sweep.dir")), FolderUnwritable.exit_code
    code = _EXIT_CODE.search(text)
    return (text.splitlines()[0] if text else "no reason recorded",
            int(code.group(1)) if code else 1)


def _disk_mark(path: Path) -> int | None:
    """The disk error an empty mark was left with (write_failure), if any."""
    for name in sorted(p.name for p in path.parent.glob(f"{path.name}.E*")):
        code = getattr(errno, name.removeprefix(f"{path.name}."), None)
        if code in DISK_ERRORS:
            return code
    return None


def jobs_failed(sweep_dir: Path) -> JobsFailed | None:
    """The error a sweep ends with when jobs failed or were stopped: the first one's line
    and exit code, then every such job's folder."""
    failed = sorted(p.parent for p in sweep_dir.glob(f"*/{FAILED}"))
    stopped = sorted(p.parent for p in sweep_dir.glob(f"*/{STOPPED}") if p.parent not in failed)
    if not failed and not stopped:
        return None
    first = (failed or stopped)[0]
    message, code = read_failure(first) or ("no reason recorded", 1)
    counts = " and ".join(f"{len(jobs)} job(s) {what}" for jobs, what in
                          ((failed, "failed"), (stopped, "stopped by the cluster")) if jobs)
    marks = " or ".join(m for jobs, m in ((failed, FAILED), (stopped, STOPPED)) if jobs)
    return JobsFailed(f"{counts}; job {first.name}: {message} (see {marks} in the job "
                      f"folders {', '.join(p.name for p in sorted(failed + stopped))} under "
                      f"{sweep_dir})", code)


def record_failed_job(info: SweepInfo, job: int | None, overrides: list[str], reason: str,
                      since_ms: int, job_dir: Path) -> None:
    """A job that failed before its MLflow run existed (e.g. a sampled value the config
    schema refuses) still gets a FAILED run under the sweep's parent, with its reason: a
    record in its folder, uploaded now or, with the sweep's other records, at its end or by
    sync."""
    import contextlib
    import time

    import mlflow

    from mnist_exp.errors import ServerDown
    from mnist_exp.tracking.record import RECORD_DIR, RunRecord
    from mnist_exp.tracking.replay import Uploader

    client = mlflow.MlflowClient(info.tracking_uri)
    if client.search_runs(
            [info.experiment_id], f"tags.`mlflow.parentRunId` = '{info.parent_run_id}' and "
            f"tags.`sweep.job` = '{job}' and attributes.start_time >= {since_ms}"):
        return  # the run exists and ended FAILED itself
    record = RunRecord.create(job_dir / RECORD_DIR)
    record.hold()
    try:
        now = int(time.time() * 1000)
        experiment = client.get_experiment(info.experiment_id).name
        record.append("start", experiment_id=info.experiment_id, experiment_name=experiment,
                      run_name=redact(" ".join(overrides)), start_time=now,
                      tracking_uri=redact(info.tracking_uri),
                      tags={"mlflow.parentRunId": info.parent_run_id, "sweep.id": info.sweep_id,
                            "sweep.job": str(job), "overrides": redact(" ".join(overrides)),
                            "error": reason})
        record.append("params", values={k.lstrip("+~"): redact(v) for k, _, v in
                                        (o.partition("=") for o in overrides)})
        record.append("end", status="FAILED", end_time=now)
        with contextlib.suppress(ServerDown):  # the sweep's end, or sync, uploads it
            Uploader(record, info.tracking_uri).upload()
    finally:
        record.let_go()
