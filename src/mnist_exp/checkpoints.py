"""Where an interrupted run keeps its state, so the same command can continue it.

The folder is named by a digest of the config (less `trainer.resume`): running the
same command again with trainer.resume=true finds it. It holds the MLflow run id and
Keras' BackupAndRestore state of the last finished epoch, and is removed once the
run finishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from mnist_exp.config import Config, to_dict

ROOT = Path("outputs") / "checkpoints"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    folder: Path

    @property
    def backup_dir(self) -> Path:
        return self.folder / "keras"

    def interrupted_run(self) -> str | None:
        """The MLflow run id of an interrupted run with training state to continue."""
        marker = self.folder / "run_id"
        if marker.is_file() and self.backup_dir.is_dir():
            return marker.read_text().strip() or None
        return None

    def run_to_resume(self, resume: bool) -> str | None:
        """The run to continue: the interrupted one when asked to resume; else its stale
        state is discarded (with a warning) and None says start afresh."""
        run_id = self.interrupted_run()
        if run_id and resume:
            log.info("Resuming run %s from %s", run_id, self.folder)
            return run_id
        if run_id:
            log.warning("Discarding the saved state of interrupted run %s of this config "
                        "(trainer.resume=true would have continued it)", run_id)
            self.discard()
        elif resume:
            log.warning("trainer.resume=true, but no interrupted run of this config is saved "
                        "under %s; starting a new run", self.folder.parent)
        return None

    def claim(self, run_id: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "run_id").write_text(run_id)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def checkpoint_for(config: Config, launch_dir: Path) -> Checkpoint:
    values = to_dict(config)
    values["trainer"].pop("resume")
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode())
    return Checkpoint(launch_dir / ROOT / digest.hexdigest()[:16])
