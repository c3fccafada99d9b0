"""Where an interrupted run keeps its state, so the same command can continue it.

The folder is named by a digest of the config (less `trainer.resume`): running the
same command again with trainer.resume=true finds it. It holds the MLflow run id and
Keras' BackupAndRestore state of the last finished epoch, and is removed once the
run finishes.

A run holds a lock on its folder while it lives, so two runs of one config at once (two
terminals, or two sweeps) never write into each other's state: the second takes the next
free slot, <digest>-1, and so on. An interrupted run's folder is free again once its process
has ended, which is how resume finds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import shutil
from pathlib import Path

from mnist_exp.config.schema import Config, to_dict

# The folder keeps its name from when this state was called a checkpoint: a run interrupted
# before the rename still resumes. ("Checkpoints" are now the models a run logs every
# tracking.checkpoint_every epochs: tracking/callbacks.py.)
ROOT = Path("outputs") / "checkpoints"
log = logging.getLogger(__name__)


class ResumeState:
    """One run's claim on a resume-state folder, held (locked) until release()."""

    def __init__(self, folder: Path, lock: int) -> None:
        self.folder = folder
        self.resuming = False  # run_to_resume found a run to continue
        self._lock = lock

    @property
    def backup_dir(self) -> Path:
        return self.folder / "keras"

    def interrupted_run(self) -> str | None:
        """The MLflow run id of an interrupted run with training state to continue."""
        return _interrupted_run(self.folder)

    def run_to_resume(self, resume: bool) -> str | None:
        """The run to continue: the interrupted one when asked to resume; else its stale
        state is discarded (with a warning) and None says start afresh."""
        run_id = self.interrupted_run()
        if run_id and resume:
            log.info("Resuming run %s from %s", run_id, self.folder)
            self.resuming = True
            return run_id
        if run_id:
            log.warning("Discarding the saved state of interrupted run %s of this config "
                        "(trainer.resume=true would have continued it)", run_id)
        elif resume:
            log.warning("trainer.resume=true, but no interrupted run of this config is saved "
                        "under %s; starting a new run", self.folder.parent)
        self._clear()
        return None

    def claim(self, run_id: str | None) -> None:
        """Mark the folder as `run_id`'s (None: a run recorded offline, not resumable)."""
        if run_id is not None:
            (self.folder / "run_id").write_text(run_id)

    def release(self) -> None:
        """The run finished: its state is no longer needed, nor its folder."""
        self._clear()
        with contextlib.suppress(OSError):
            self.folder.rmdir()

    def __enter__(self) -> ResumeState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Unlock (state kept unless released): a later run, or a next job in this same
        process, may take the folder."""
        os.close(self._lock)

    def _clear(self) -> None:
        for entry in self.folder.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def resume_state_for(config: Config, launch_dir: Path, resume: bool = False) -> ResumeState:
    """Claim this config's resume-state folder: with `resume`, a free one holding an
    interrupted run if there is one; else the first free slot."""
    values = to_dict(config)
    values["trainer"].pop("resume")
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode())
    base = launch_dir / ROOT / digest.hexdigest()[:16]
    if resume:
        for folder in _saved(base):
            if (lock := _try_lock(folder)) is not None:
                if _interrupted_run(folder):  # not taken and finished in between
                    return ResumeState(folder, lock)
                os.close(lock)
    for n in itertools.count():
        folder = base if n == 0 else base.with_name(f"{base.name}-{n}")
        if (lock := _try_lock(folder)) is not None:
            return ResumeState(folder, lock)
    raise AssertionError("unreachable")


def _saved(base: Path) -> list[Path]:
    """The config's folders that hold an interrupted run's state."""
    folders = [base, *base.parent.glob(f"{base.name}-*")] if base.parent.is_dir() else []
    return [f for f in folders if _interrupted_run(f)]


def _interrupted_run(folder: Path) -> str | None:
    marker = folder / "run_id"
    if marker.is_file() and (folder / "keras").is_dir():
        return marker.read_text().strip() or None
    return None


def _try_lock(folder: Path) -> int | None:
    """An exclusive lock on `folder` (made if missing), or None if a live run holds it.
    Checks the locked folder is still the one at that path: a finishing run removes its
    folder, and a lock on a removed one would guard nothing."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # removed between mkdir and open: make it again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        try:
            same = os.stat(folder).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
