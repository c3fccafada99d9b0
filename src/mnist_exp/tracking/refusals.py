"""What a tracking store's error means for a record's upload: the store is away (try again
later: ServerDown), or it answered and refused (StoreRefused: wrong credentials, no such
run, experiment or database, a value it does not take, not an MLflow store at all), told in
the store's own words, or a SQLite store's disk is full or cannot be written
(StoreUnwritable: a fix, like a full run folder, not a wait). An error that is none of
these (a bug of ours) is left as it is. Whichever it is, the event is not counted as
uploaded (replay.py).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sqlite3
from pathlib import Path

from mlflow.exceptions import MlflowException

from mnist_exp.errors import (
    ServerDown,
    StoreRefused,
    StoreUnwritable,
    UserError,
    disk_error,
    first_line,
    redact,
)
from mnist_exp.tracking.store import DEFAULT_ARTIFACTS, STORE_ROOM

DATABASES = ("postgresql", "mysql", "mssql")

# kind: (what the store did, what the user should do, whether it refuses whatever is sent)
VERDICTS = {
    "credentials": ("refused the credentials", "give the right user and password in the URI "
                    "(--tracking-uri or MLFLOW_TRACKING_URI)", True),
    "database": ("has no such database", "create it, or correct the URI", True),
    "not_mlflow": ("is not an MLflow tracking store", "point --tracking-uri at an MLflow "
                   "tracking server or database", True),
    "missing": ("has no such run or experiment", "sync the record to the store it was "
                "recorded for", False),
    "value": ("refused the run's {what}", "change what it names, or use a store that takes "
              "it", False),
}
WHAT = {"start": "start", "params": "params", "tags": "tags", "metrics": "metrics",
        "input": "dataset input", "artifact": "artifact", "model": "model", "end": "end"}


_CONNECTION = {"ConnectionError", "Timeout", "TimeoutError", "ConnectTimeout",
               "EndpointConnectionError", "ConnectionClosedError"}


def unreachable(error: BaseException) -> bool:
    """Whether an error means the store is away (try again later) rather than that it
    refused what was sent, or that the disk under it is full (`store_unwritable`)."""
    if isinstance(error, ServerDown):
        return True
    if isinstance(error, StoreRefused) or _our_disk(error) is not None:
        return False
    if _database_error(error):
        return _database_kind(error) == "away"
    if isinstance(error, MlflowException):
        text = str(error)
        return ("failed with exception" in text or "Max retries exceeded" in text
                or (error.get_http_status_code() >= 500 and "UNIQUE constraint" not in text))
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(status, int) and status >= 500:  # an artifact upload the server failed
        return True
    return bool({cls.__name__ for cls in type(error).__mro__} & _CONNECTION)


def refusal(error: BaseException, uri: str, folder: Path, op: str) -> UserError | None:
    """The line for a store's refusal of a record's `op` event (or for a SQLite store whose
    disk cannot take it: StoreUnwritable); None for an error that is no answer of a
    store's."""
    full = store_unwritable(error, uri, folder)
    if full is not None:
        return full
    verdict = _verdict(error)
    if verdict is None:
        return None
    kind, said = verdict
    did, advice, whole_store = VERDICTS[kind]
    said = redact(" ".join(said.split()))[:300]
    return StoreRefused(
        f"tracking store {redact(uri)} {did.format(what=WHAT.get(op, op))} ({said}); none "
        f"of it counted as uploaded, the run is kept whole in {folder}: {advice}, then "
        f"upload it with: python -m mnist_exp.sync {folder}", whole_store)


def store_unwritable(error: BaseException, uri: str,
                     record: Path | None = None) -> StoreUnwritable | None:
    """A SQLite store's database, or a file under its folder (its mlruns/), that its disk
    would not take (full, over quota, read-only), as the line that names that folder and
    where the run is kept (`record`); None for any other error, or another kind of store
    (a server's disk is not ours to name)."""
    found = _our_disk(error)
    if found is None or not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///").split("?")[0]).absolute()
    path = Path(os.fsdecode(found.filename)).absolute() if found.filename else None
    if path is None and not _sqlite_said(error):  # a copy into mlruns/ that names no file
        if _room(database.parent) >= STORE_ROOM:
            return None  # a disk elsewhere (a temporary folder's)
        path = database.parent / DEFAULT_ARTIFACTS
    if path is not None and not path.is_relative_to(database.parent):
        return None  # not the store's: a temporary file elsewhere, the record's own
    if found.errno == errno.EACCES and _read_only(database.parent):
        found = OSError(errno.EROFS, os.strerror(errno.EROFS), found.filename)
    return StoreUnwritable(database, found, path, record)


def _sqlite_said(error: BaseException | None) -> bool:
    """Whether SQLite raised `error`, or what it was raised from or while handling."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__module__ == "sqlite3":
            return True
        error = error.__cause__ or error.__context__
    return False


def _our_disk(error: BaseException) -> OSError | None:
    """A disk error on this machine (a SQLite file, a local folder), not a connection's."""
    if {cls.__name__ for cls in type(error).__mro__} & _CONNECTION:
        return None
    return disk_error(error)


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _room(folder: Path) -> int:
    """Bytes free for us under `folder` (none if it cannot be told)."""
    try:
        disk = os.statvfs(folder)
    except OSError:
        return 0
    return disk.f_bavail * disk.f_frsize


class _QuietDiskFull(logging.Filter):
    """Drops MLflow's own reports of a write its SQLite store's disk did not take (the
    traceback it logs before raising; the system metrics' warnings, its and ours): the
    run's one line says it (StoreUnwritable)."""

    WORDS = ("database or disk is full", "attempt to write a readonly database")

    def filter(self, record: logging.LogRecord) -> bool:
        errors = [record.exc_info[1] if record.exc_info else None,
                  *(a for a in (record.args if isinstance(record.args, tuple) else ())
                    if isinstance(a, BaseException))]
        if any(disk_error(e) is not None for e in errors if e is not None):
            return False
        return not any(words in str(record.msg) for words in self.WORDS)


for _name in ("mlflow.store.db.utils", "mlflow.system_metrics",
              "mlflow.system_metrics.system_metrics_monitor"):
    logging.getLogger(_name).addFilter(_QuietDiskFull())


def check_store(uri: str, folder: Path) -> None:
    """Open a database store once before MLflow does: MLflow retries a store it cannot
    open for about 100 s before it says why. One that does not answer is away
    (ServerDown); one that answers no (a password, a missing database, a file that is no
    database) is StoreRefused, at once."""
    try:
        if uri.startswith(DATABASES):
            import sqlalchemy

            args = {"connect_timeout": 10} if uri.startswith("postgresql") else {}
            sqlalchemy.create_engine(uri, connect_args=args).connect().close()
        elif uri.startswith("sqlite:///"):
            path = Path(uri.removeprefix("sqlite:///").split("?")[0])
            if path.is_file():
                with sqlite3.connect(path) as db:
                    db.execute("PRAGMA schema_version")
    except Exception as e:
        if unreachable(e):
            raise ServerDown(_said(e)) from None
        refused = refusal(e, uri, folder, "start")
        if refused is None:
            raise
        raise refused from None


def _verdict(error: BaseException) -> tuple[str, str] | None:
    if _database_error(error):
        kind = _database_kind(error)
        return None if kind == "away" else (kind, _said(error))
    if isinstance(error, MlflowException):
        return _mlflow_verdict(error)
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(status, int) and 400 <= status < 500:  # an artifact upload refused
        return ("credentials" if status in (401, 403) else "value"), first_line(error)
    return None


def _mlflow_verdict(error: MlflowException) -> tuple[str, str]:
    code = getattr(error, "error_code", "")
    text = getattr(error, "message", None) or first_line(error)
    status = error.get_http_status_code()
    plain = re.search(r"request to endpoint (\S+) failed with error code (\d+)", text)
    if plain:  # an answer that is not MLflow's JSON: what answered, not its page
        status = int(plain.group(2))
        text = f"HTTP {status} from {plain.group(1)}"
    elif "not in a valid JSON format" in text:
        return "not_mlflow", "its answer is not MLflow's JSON"
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or status in (401, 403):
        return "credentials", text
    if code == "RESOURCE_DOES_NOT_EXIST":
        return "missing", text
    if code == "ENDPOINT_NOT_FOUND" or status in (404, 405):
        return "not_mlflow", text
    return "value", text


def _database_error(error: BaseException) -> bool:
    return any(c.__module__.startswith("sqlalchemy") or c.__name__ == "DatabaseError"
               for c in type(error).__mro__[:-2])


def _database_kind(error: BaseException) -> str:
    text = _said(error).lower()
    if any(s in text for s in ("password", "authentication", "access denied", "role ")):
        return "credentials"
    if "database" in text and ("does not exist" in text or "unknown database" in text):
        return "database"
    if "not a database" in text:
        return "not_mlflow"
    return "away"


def _said(error: BaseException) -> str:
    """A database error's own words, without SQLAlchemy's wrapping and its FATAL:."""
    text = str(getattr(error, "orig", None) or error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(error).__name__]
    return lines[0].split("FATAL:", 1)[-1].strip()
