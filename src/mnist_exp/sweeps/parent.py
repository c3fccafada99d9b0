"""A sweep's parent run as a local record, like any run: its start, its summary (metrics,
tags, the ranking and figures as files, the champion alias) and its end are events in
<sweep dir>/parent/mlflow_record, uploaded by the one uploader (tracking/replay.py), so a
store away at the sweep's end loses nothing: `python -m mnist_exp.sync <sweep dir>`
uploads what it missed. The launching process holds the record for its life (a sync
leaves it alone meanwhile), and it is kept open (tracking.upload.KEPT_OPEN): a sync ends
it only through the sweep's summary or liveness.py, never KILLED by default.

A run this sweep must end that has no record here (a job run on another machine, a parent
made before parents had records) gets a small record that writes to it (`close_run`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mnist_exp.errors import redact
from mnist_exp.tracking.record import RECORD_DIR, RunRecord, find_records
from mnist_exp.tracking.store import SweepInfo

PARENT_DIR = "parent"
CLOSED_DIR = "closed"  # the records of runs ended without one of their own
_OPEN: dict[Path, RunRecord] = {}  # the parent records this process holds, by sweep folder


def now() -> int:
    return int(time.time() * 1000)


def start_parent(sweep_dir: Path, uri: str, experiment_id: str, experiment_name: str,
                 run_name: str, tags: dict[str, Any], resume_run_id: str | None = None,
                 untag: tuple[str, ...] = ()) -> str:
    """The parent run's record, started (or, with `resume_run_id`, that run reopened,
    without the tags `untag`), held by this process and uploaded; its run id. ServerDown
    if the store does not answer."""
    from mnist_exp.tracking.upload import KEPT_OPEN

    record = RunRecord.create(sweep_dir / PARENT_DIR / RECORD_DIR)
    record.hold()
    (record.folder / KEPT_OPEN).touch()
    _OPEN[sweep_dir.resolve()] = record
    record.append("start", experiment_id=experiment_id, experiment_name=experiment_name,
                  run_name=run_name, tags=tags, start_time=now(), tracking_uri=redact(uri),
                  resume_run_id=resume_run_id)
    if untag:
        record.append("untag", keys=list(untag))
    upload(record, uri)
    return record.ids["run_id"]


def parent_record(sweep_dir: Path, info: SweepInfo) -> RunRecord:
    """The parent run's record: the one this process holds, else its latest (a sync's,
    after the sweep ended), else a new one that writes to the parent run (a sweep from
    before parents had records). Held by this process from here on."""
    held = _OPEN.get(sweep_dir.resolve())
    if held is not None:
        return held
    found = [r for r in find_records([sweep_dir / PARENT_DIR]) if r.events]
    record = found[-1] if found else _adopting(sweep_dir / PARENT_DIR, info,
                                               info.parent_run_id)
    record.hold()
    _OPEN[sweep_dir.resolve()] = record
    return record


def let_go(sweep_dir: Path) -> None:
    """Let the parent's record go (a sync that finished the sweep)."""
    record = _OPEN.pop(sweep_dir.resolve(), None)
    if record is not None:
        record.let_go()


def close_run(sweep_dir: Path, info: SweepInfo, run_id: str, status: str,
              tags: dict[str, str] | None = None) -> RunRecord:
    """End a run of the sweep that has no record here: a record that writes to it (its
    tags, its end), left for the caller to upload (tracking.upload.upload_folder)."""
    record = _adopting(sweep_dir / CLOSED_DIR / run_id, info, run_id)
    if tags:
        record.append("tags", values=tags)
    record.append("end", status=status, end_time=now())
    return record


def _adopting(folder: Path, info: SweepInfo, run_id: str) -> RunRecord:
    """A new record whose events go to run `run_id`, already on the sweep's store."""
    record = RunRecord.create(folder / RECORD_DIR)
    record.append("start", experiment_id=info.experiment_id, experiment_name="",
                  run_name="", tags={}, start_time=now(), run_id=run_id,
                  tracking_uri=redact(info.tracking_uri))
    return record


def add_file(record: RunRecord, name: str, write: Any) -> None:
    """An artifact of the parent run: `write(path)` writes it into the record first."""
    write(record.file_for(name))
    record.append("artifact", file=f"files/{name}", artifact_path=None)


def upload(record: RunRecord, uri: str) -> None:
    """Upload what the store lacks of `record`: ServerDown if it does not answer,
    StoreRefused (one line) if it refuses."""
    from mnist_exp.tracking.replay import Uploader
    from mnist_exp.tracking.upload import bound_http_calls

    bound_http_calls()
    uploader = Uploader(record, uri)
    uploader.careful = True  # a try before may have reached the store
    uploader.upload()
