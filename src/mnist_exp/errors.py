"""Every error mnist-exp raises on purpose, and the one way any exception reaches the user.

A `UserError` is a mistake the user can fix: it is shown as one line, without a traceback,
and ends the command with its `exit_code` (2, or 3 for a run kept because its server did not
answer). Anything else is a bug: one line naming it and where its traceback went, exit 1.
`describe` makes that line and code for a command, a sweep's job and a sweep's end alike, so
the same mistake reads and exits the same everywhere. Standard library only: every module,
light or heavy, imports its errors from here.
"""

from __future__ import annotations

import re
import sys
import traceback
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
    message; anything else is unexpected, and its traceback goes to `log_file`."""
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
