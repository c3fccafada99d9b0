"""A disk that fills up (or cannot be written) under a command, told in one line: the
FolderUnwritable that errors.py makes of it, and nothing else.

Hydra writes its own files (.hydra/, the job's log) before the job starts, where a full disk
would be a traceback of Hydra's: `check_room` writes that much in the output folder first.
Once the run has stopped on a full disk, logging would print a traceback for each line the
log file (Hydra's run.log) cannot take: `quiet_disk_errors` keeps it quiet about disk errors,
and only about them.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from mnist_exp.errors import disk_error, unwritable

# Twice what Hydra's own files take before the job starts (three small YAML files in .hydra/,
# the log's first lines), a few blocks each on any disk.
HYDRA_ROOM = 32 * 1024


def check_room(folder: Path) -> None:
    """Write HYDRA_ROOM bytes in `folder` and take them back: FolderUnwritable if its disk
    cannot take them (full, over quota, read-only), the OSError for anything else."""
    try:
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(bytes(HYDRA_ROOM))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise unwritable(e, [folder]) or e from None


def quiet_disk_errors() -> None:
    """Let the log file's handlers stay quiet about a disk error (see the module's
    docstring); any other error they still print."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and not hasattr(handler.handleError,
                                                                    "quiet"):
            handler.handleError = _quiet(handler.handleError)  # type: ignore[method-assign]


def _quiet(report: Callable[[logging.LogRecord], None]) -> Callable[[logging.LogRecord], None]:
    def handle_error(record: logging.LogRecord) -> None:
        if disk_error(sys.exc_info()[1]) is None:  # called while handling the error
            report(record)

    handle_error.quiet = True  # type: ignore[attr-defined]
    return handle_error
