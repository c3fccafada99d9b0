"""Every error mnist-exp raises on purpose, and the one way any exception reaches the user.

A `UserError` is a mistake the user can fix: it is shown as one line, without a traceback,
and ends the command with its `exit_code` (2, or 3 for a run kept because its server did not
answer). Anything else is a bug: one line naming it and where its traceback went, exit 1.
`describe` makes that line and code for a command, a sweep's job and a sweep's end alike, so
the same mistake reads and exits the same everywhere. Standard library only: every module,
light or heavy, imports its errors from here.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn


class UserError(Exception):
    """A mistake the user can fix: shown as one line, without a traceback."""

    exit_code: int = 2


class ConfigError(UserError):
    """A configuration value that is missing, mistyped or out of range."""


class RequestError(UserError):
    """A setting that the data or the machine cannot meet."""


class DataError(UserError):
    """A dataset that is missing, unreadable or not what it claims to be."""


class ImageError(UserError):
    """A file that is not a usable image."""


class TrackingError(UserError):
    """The tracking store cannot be used as configured."""


class ClusterError(UserError):
    """The cluster cannot take the sweep's jobs as configured."""


class TrainingDiverged(UserError):
    """The loss stopped being a finite number."""


class TrainingStepFailed(UserError):
    """XLA's compiled step raised, and Keras ended the epochs as if the data had run out
    (seen with a damaged compilation cache entry: training/compile_cache.py)."""


class ServerAway(UserError):
    """The tracking server stopped answering before everything was uploaded: nothing is
    lost, the same command (or `python -m mnist_exp.sync`) uploads it once it answers."""

    exit_code = 3


class NotUploaded(ServerAway):
    """A run's end found the server still down: the run is kept in its record."""

    def __init__(self, folder: Path, uri: str, what: str = "the run is") -> None:
        super().__init__(f"tracking server {redact(uri)} not answering; {what} kept in "
                         f"{folder}; upload it with: python -m mnist_exp.sync {folder}")
        self.folder = folder


class StoreRefused(UserError):
    """The tracking store answered and refused a record's event: its credentials, a run or
    experiment it lacks, a value, or it is no MLflow store at all. Sending it again as it is
    would be refused again, so none of it counts as uploaded and the record is kept whole
    until the user has changed what the line says (exit 2: a fix, not a wait as for 3)."""

    def __init__(self, message: str, whole_store: bool = False) -> None:
        super().__init__(message)
        self.whole_store = whole_store  # refused whatever is sent: no other record is tried


class FolderUnwritable(UserError):
    """A folder the run writes to (its output folder, its record, the folder it runs from)
    is full, over quota, read-only or not ours: nothing in the run is wrong, its disk is. Exit
    2: a fix (space, another folder), not a wait. `kept_in`: set when the run's end could
    not reach its store either, so the record on disk is all there is of it."""

    def __init__(self, folder: Path, error: OSError, path: Path | None = None,
                 setting: str = "hydra.run.dir, or the folder run from", role: str = "") -> None:
        self.folder, self.errno, self.kept_in = folder, error.errno, None
        what, doing, advice = DISK_ERRORS[error.errno]
        inside = path.relative_to(folder) if path is not None and path != folder else None
        file = f" ({doing} {inside}{role})" if inside is not None else ""
        super().__init__(f"{what.format(folder=folder)}{file}: {advice} ({setting})")

    def __str__(self) -> str:
        if self.kept_in is None:
            return super().__str__()
        return (f"{super().__str__()}; its tracking store did not get the run's end either: "
                f"its record keeps the run up to there; once there is room, upload it with: "
                f"python -m mnist_exp.sync {self.kept_in}")


class StoreUnwritable(FolderUnwritable):
    """The disk under a SQLite tracking store (its database, or its mlruns/ beside it) is
    full or cannot be written: the store takes nothing more, yet it is not away (no wait
    helps) nor did it refuse the run (nothing in the run is wrong). The run stops as on its
    own full disk (exit 2), its record keeps it, and sync uploads it once there is room."""

    whole_store = True  # takes nothing, whichever record is sent: sync tries no other

    def __init__(self, database: Path, error: OSError, path: Path | None = None,
                 record: Path | None = None) -> None:
        path = path or database
        folder = database.parent if path.is_relative_to(database.parent) else path.parent
        super().__init__(folder, error, path, setting="tracking.uri, or the folder run from",
                         role=", the tracking store")
        self.database, self.record = database, record

    def __str__(self) -> str:
        record = self.record or self.kept_in
        if record is None:
            return UserError.__str__(self)
        return (f"{UserError.__str__(self)}; its record {record} keeps the run: once there is "
                f"room, upload it with: python -m mnist_exp.sync {record}")


# What a disk said, and what to do about it (FolderUnwritable).
_ELSEWHERE = "or choose a folder on another disk"
DISK_ERRORS = {
    errno.ENOSPC: ("no space left on device under {folder}", "writing",
                   f"free some space there, {_ELSEWHERE}"),
    errno.EDQUOT: ("disk quota exceeded under {folder}", "writing",
                   f"free some of your quota there, {_ELSEWHERE}"),
    errno.EROFS: ("{folder} is on a read-only file system", "writing",
                  "choose a folder on a writable disk"),
    errno.EACCES: ("permission denied under {folder}", "at",
                   "make it writable, or choose another folder"),
    errno.EPERM: ("permission denied under {folder}", "at",
                  "make it writable, or choose another folder"),
}
# An OSError that carries its errno in its text only: h5py's (the C error), shutil's Error
# (the copies of a folder that failed, each with its source and target, in that order).
_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]|errno = (\d+)")
_QUOTED_PATH = re.compile(r"'(/[^']+)'")
# SQLite's own words for a disk that cannot take a write (its sqlite3 errors carry the
# result code; SQLAlchemy, MLflow and Optuna wrap them): the file is a database of ours, on
# our disk, not a store that is away. SQLITE_FULL; SQLITE_READONLY (a file or, 1544, a
# folder not writable), not its other kinds (a database file moved or replaced).
_SQLITE_CODES = {13: errno.ENOSPC, 8: errno.EACCES, 1544: errno.EACCES}
_SQLITE_TEXTS = {"database or disk is full": errno.ENOSPC,
                 "attempt to write a readonly database": errno.EACCES}


def disk_error(error: BaseException | None) -> OSError | None:
    """The disk error (DISK_ERRORS) behind `error`: itself, or what it was raised from or
    while handling (Keras and h5py wrap it), with the file it names, if any; or SQLite's
    (_SQLITE_CODES), which names none."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            code, text = error.errno, str(error)
            if code is None and (found := _ERRNO_IN_TEXT.search(text)):
                code = int(found.group(1) or found.group(2))
            if code in DISK_ERRORS:
                if error.errno == code and error.filename:  # a copy's: filename2, the target
                    return OSError(code, error.strerror, error.filename2 or error.filename)
                named = _QUOTED_PATH.findall(text)  # the last: a copy's target
                return OSError(code, os.strerror(code), named[-1] if named else None)
        elif (code := _sqlite_disk_error(error)) is not None:  # names no file
            return OSError(code, os.strerror(code))
        error = error.__cause__ or error.__context__
    return None


def _sqlite_disk_error(error: BaseException) -> int | None:
    """The errno of a SQLite error that says its disk cannot take a write (_SQLITE_CODES)."""
    if type(error).__module__ != "sqlite3":
        return None
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        return _SQLITE_CODES.get(code)
    return next((c for words, c in _SQLITE_TEXTS.items() if words in str(error)), None)


def unwritable(error: BaseException, folders: Sequence[Path] = ()) -> FolderUnwritable | None:
    """A disk error behind `error` as the line that names its folder: the deepest of
    `folders` (the run's, the launch folder) holding the file it names, else that file's
    own folder; for an error that names none, the first of `folders` whose disk is full or
    read-only now, else the first. None for any other error."""
    if isinstance(error, FolderUnwritable):
        return error
    found = disk_error(error)
    if found is None:
        return None
    path = Path(os.fsdecode(found.filename)).absolute() if found.filename else None
    candidates = [Path(f).absolute() for f in folders]
    if path is not None:
        holding = [f for f in candidates if path.is_relative_to(f)]
        folder = max(holding, key=lambda f: len(f.parts)) if holding else path.parent
    else:
        folder = next((f for f in candidates if _cannot_take(f)),
                      candidates[0] if candidates else Path.cwd())
    return FolderUnwritable(folder, found, path)


def _cannot_take(folder: Path) -> bool:
    """Whether the disk under `folder` is full or read-only now."""
    try:
        disk = os.statvfs(folder)
    except OSError:
        return False
    return disk.f_bavail == 0 or bool(disk.f_flag & os.ST_RDONLY)


class JobsFailed(UserError):
    """Jobs of a sweep failed: the sweep ends as its first failed job would have alone."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ServerDown(Exception):
    """The tracking store did not answer (refused, timed out, or a 5xx): not for the user's
    eyes, the uploader retries later or ends in NotUploaded."""


_CREDENTIALS = re.compile(r"(://[^/:@\s]+):[^@/\s]*@")


def redact(text: str) -> str:
    """Hide passwords in URIs (scheme://user:secret@host) before they are logged or shown."""
    return _CREDENTIALS.sub(r"\1:***@", text)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, for one-line error reports."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def describe(error: BaseException, log_file: Path | None = None) -> tuple[str, int]:
    """What the user sees of an error: one line and the exit code. A UserError is its own
    message; anything else is unexpected, and its traceback goes to `log_file`. A disk
    that is full or cannot be written is the user's to fix (FolderUnwritable)."""
    error = unwritable(error, [log_file.parent] if log_file else []) or error
    if isinstance(error, UserError):
        return str(error), error.exit_code
    if log_file is None:
        return f"{type(error).__name__}: {first_line(error)} (unexpected)", 1
    where = f"the traceback is in {log_file}"
    try:
        with log_file.open("a") as f:
            f.write("".join(traceback.format_exception(error)))
    except OSError:
        where = "no log file could be written"
    return (f"{type(error).__name__}: {first_line(error)} (unexpected; {where}; "
            "HYDRA_FULL_ERROR=1 prints it here)"), 1


def report(message: str) -> None:
    """An error line on stderr, for a command that goes on after it (sync: one per record)."""
    print(f"mnist-exp: error: {message}", file=sys.stderr)


def exit_with(error: BaseException, log_file: Path | None = None) -> NoReturn:
    """End a command the way `describe` says: its line on stderr, its exit code."""
    message, code = describe(error, log_file)
    report(message)
    raise SystemExit(code)
