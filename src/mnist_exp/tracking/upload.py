"""Uploading a run's record (record.py) to its tracking store, live or later.

`Uploader` (replay.py) replays the events the server does not have yet, in order, each safe
to repeat. `Tracker` (tracker.py) is the live side: a run's every event goes to its record
and, while the server answers, straight on to it. Here: the bound on each call to a server,
and the later upload of whole folders of records (`python -m mnist_exp.sync`, a sweep's end):
each to its own store, or as a copy to another (ledger.py), and only what a store took
counts as uploaded (refusals.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mnist_exp.errors import ServerDown, UserError, redact
from mnist_exp.tracking.record import RunRecord, find_records
from mnist_exp.tracking.replay import LOGGED_MODEL, Uploader, retrying, unreachable
from mnist_exp.tracking.tracker import Tracker

__all__ = [  # importable from here, where their callers look for them
    "HTTP_LIMITS", "KEPT_OPEN", "LOGGED_MODEL", "Tracker", "Uploaded", "Uploader",
    "bound_http_calls", "retrying", "unreachable", "upload_folder",
]

# Bound each call to a server: MLflow's defaults (7 retries with backoff, 120 s timeout)
# keep a run waiting for minutes on a server that went away. The record makes retrying
# here pointless: what fails is uploaded later.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# In a record's folder: its run is ended by another step (a sweep's parent: by its summary,
# or by ending its dead sweep), never KILLED by an upload that finds it open.
KEPT_OPEN = "kept_open"


def bound_http_calls() -> None:
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


@dataclass(frozen=True)
class Uploaded:
    """What the upload of one record did, for the line sync prints about it."""

    events: int  # how many the store took now
    run_id: str | None  # the run's id in that store
    status: str | None  # how the run ended, as recorded
    copy_to: str | None = None  # another store, which got a copy; None: its own store


def upload_folder(folder: Path, uri: str | None = None,
                  report: Callable[[RunRecord, Uploaded], None] | None = None,
                  failed: Callable[[RunRecord, Exception], None] | None = None,
                  ) -> list[RunRecord]:
    """Upload every record under `folder` that the store lacks, each to `uri` or else to
    its own store; the records still pending (server away). A record whose process died
    without ending it (killed, a crash) is ended KILLED; a damaged one (record.py) is
    uploaded up to its damage and ended FAILED. Records of live runs wait. `report` hears
    of each record done (a damaged one too, even with nothing to upload); an error of one
    record goes to `failed`, if given, and the others are still uploaded, unless the store
    refuses whatever is sent (its credentials, not an MLflow store): that ends it all."""
    bound_http_calls()
    left = []
    for record in find_records([folder]):
        if not _to_do(record, uri):
            continue
        try:  # a live run's record, or one another sync is uploading, waits
            record.hold()
        except BlockingIOError:
            continue
        try:
            record.reload()
            done = _upload_record(record, uri)
            if done is None:
                left.append(record)
            elif report is not None:
                report(record, done)
        except Exception as e:
            if failed is None or getattr(e, "whole_store", False):
                raise
            failed(record, e)
        finally:
            record.let_go()
    return left


def _to_do(record: RunRecord, uri: str | None) -> bool:
    """Whether the store at `uri` (its own if None) lacks some of the record: a copy to
    another store is made only while the record keeps its files. A run killed outright
    after its last upload lacks only its end, which sync adds (KILLED)."""
    ledger = record.ledger_for(uri)
    missing = len(record.events) > ledger.uploaded and (ledger.own or record.keeps_copies)
    unended = ledger.own and not record.ended and not (record.folder / KEPT_OPEN).exists()
    return missing or record.needs_repair or unended


def _upload_record(record: RunRecord, uri: str | None) -> Uploaded | None:
    """Upload one record; None if its server was away."""
    record.repair()
    if not record.events:  # damaged at its start: nothing to upload
        return Uploaded(0, None, None)
    target = uri or record.own_uri or ""
    if "***" in target:  # redacted when recorded
        target = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not target:
            raise UserError(f"{record.folder}: its tracking URI had a password; give the "
                            "URI with --tracking-uri or MLFLOW_TRACKING_URI")
    if not record.ended and not (record.folder / KEPT_OPEN).exists():
        last = max((e.get("timestamp") or e.get("start_time") or 0) for e in record.events)
        record.append("end", status="KILLED", end_time=last)
    uploader = Uploader(record, target)
    uploader.careful = True
    try:
        uploader.upload()
    except ServerDown:
        return None
    end = next((e for e in reversed(record.events) if e["op"] == "end"), None)
    ledger = uploader.ledger
    return Uploaded(uploader.taken, ledger.ids.get("run_id"), end and end["status"],
                    None if ledger.own else redact(target))
