"""Uploading a run's record (record.py) to its tracking store, live or later.

`Uploader` (replay.py) replays the events the server does not have yet, in order, each safe
to repeat. `Tracker` (tracker.py) is the live side: a run's every event goes to its record
and, while the server answers, straight on to it. Here: the bound on each call to a server,
and the later upload of whole folders of records (`python -m mnist_exp.sync`, a sweep's end).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from mnist_exp.errors import ServerDown, UserError, first_line
from mnist_exp.tracking.record import RunRecord, find_records
from mnist_exp.tracking.replay import LOGGED_MODEL, Uploader, retrying, unreachable
from mnist_exp.tracking.tracker import Tracker

__all__ = [  # importable from here, where their callers look for them
    "HTTP_LIMITS", "LOGGED_MODEL", "Tracker", "Uploader", "bound_http_calls", "retrying",
    "unreachable", "upload_folder",
]

log = logging.getLogger("mnist_exp.tracking.upload")  # the name its lines had before the split

# Bound each call to a server: MLflow's defaults (7 retries with backoff, 120 s timeout)
# keep a run waiting for minutes on a server that went away. The record makes retrying
# here pointless: what fails is uploaded later.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def bound_http_calls() -> None:
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def upload_folder(folder: Path, uri: str | None = None,
                  report: Callable[[RunRecord], None] | None = None,
                  failed: Callable[[RunRecord, Exception], None] | None = None,
                  ) -> list[RunRecord]:
    """Upload every record under `folder` that its server lacks, each to `uri` or else to
    the store it names; the records still pending (server away). A record whose process
    died without ending it (killed, a crash) is ended KILLED; a damaged one (record.py) is
    uploaded up to its damage and ended FAILED. Records of live runs wait. `report` hears of
    each record done (a damaged one too, even with nothing to upload); an error of one
    record goes to `failed`, if given, and the others are still uploaded."""
    bound_http_calls()
    left = []
    for record in find_records([folder]):
        if not record.pending and not record.needs_repair:
            continue
        try:  # a live run's record, or one another sync is uploading, waits
            record.hold()
        except BlockingIOError:
            continue
        try:
            record.reload()
            if _upload_record(record, uri):
                left.append(record)
            elif report is not None:
                report(record)
        except Exception as e:
            if failed is None:
                raise
            failed(record, e)
        finally:
            record.let_go()
    return left


def _upload_record(record: RunRecord, uri: str | None) -> bool:
    """Upload one record; whether its server was away."""
    record.repair()
    if not record.events:  # damaged at its start: nothing to upload
        return False
    target = uri or record.events[0].get("tracking_uri", "")
    if "***" in target:  # redacted when recorded
        target = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not target:
            raise UserError(f"{record.folder}: its tracking URI had a password; give the "
                            "URI with --tracking-uri or MLFLOW_TRACKING_URI")
    if not record.ended:
        last = max((e.get("timestamp") or e.get("start_time") or 0) for e in record.events)
        record.append("end", status="KILLED", end_time=last)
    record.ids  # noqa: B018 - a damaged ids.json stops here, before any event is passed over
    uploader = Uploader(record, target)
    uploader.careful = True
    while record.pending:
        try:
            uploader.upload()
        except ServerDown:
            return True
        except Exception as e:  # that event is passed over; the rest still goes up
            log.warning("%s: one event not uploaded: %s", record.folder, first_line(e))
    return False
