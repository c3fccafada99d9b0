"""The live side of a run's tracking: each event goes to the run's record and, while the
server answers, straight on to it (replay.py); when it stops answering, training goes on
with one warning, and every few seconds the events held back are tried again. Whether the
server answers is judged by those writes alone: a server whose `/health` answers while its
database is down refuses them, so a `/health` that answers only lets a try go ahead, and
"answers again" (one line) is said once they are uploaded."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from mnist_exp.errors import FolderUnwritable, ServerDown, StoreRefused, UserError, unwritable
from mnist_exp.tracking.record import RunRecord
from mnist_exp.tracking.replay import Uploader
from mnist_exp.tracking.store import check_reachable, redact

log = logging.getLogger("mnist_exp.tracking.upload")  # the name its lines had before the split


class Tracker:
    """A run's recorder: each event goes to the record, then to the server while it
    answers (see the module's docstring). `offline` records only."""

    def __init__(self, record: RunRecord, uri: str, offline: bool = False,
                 probe_every_s: float = 5.0) -> None:
        self.record = record
        self.uri = uri
        self.offline = offline
        self.uploader = Uploader(record, uri)
        self.probe_every_s = probe_every_s
        self._next_probe: float | None = None  # set while the server is away
        self.uploaded = False  # set by tracking.tracked_run at the run's end
        self.refused: StoreRefused | None = None  # the store refused an event: a fix, not a wait
        self.failure: FolderUnwritable | None = None  # a disk that stopped the run (`failed`)

    @property
    def run_id(self) -> str | None:
        return self.uploader.run_id

    def emit(self, op: str, **fields: Any) -> None:
        self.record.append(op, **fields)
        if not self.offline:
            self._upload()

    @property
    def blocked(self) -> bool:
        """Whether events wait behind one the store would not take (not a store that is
        away, nor an offline run's: those are uploaded later as they are)."""
        return (not self.offline and self._next_probe is None and self.run_id is not None
                and self.record.pending > 0)

    def keep_file(self, source: Path, artifact_path: str | None = None) -> None:
        self.emit("artifact", file=self.record.keep(source, artifact_path),
                  artifact_path=artifact_path)

    def written(self, artifact_file: str) -> Path:
        """A path to write an artifact to; `done_writing` records it."""
        return self.record.file_for(artifact_file)

    def done_writing(self, artifact_file: str) -> None:
        parent = os.path.dirname(artifact_file) or None
        self.emit("artifact", file=f"files/{artifact_file}", artifact_path=parent)

    def _upload(self) -> None:
        if self.refused is not None:  # the run goes on into its record; finish says why
            return
        away = self._next_probe is not None
        if away:
            if time.monotonic() < self._next_probe:
                return
            if not self.answers():  # down to its network: no write would get through
                self._next_probe = time.monotonic() + self.probe_every_s
                return
        held_back = self.record.pending
        try:
            self.uploader.upload()
        except StoreRefused as e:
            self.refused = e
            return
        except ServerDown as e:
            self._next_probe = time.monotonic() + self.probe_every_s
            if away or self.failure is not None:  # said once per outage; or the run's line says
                return
            # System metrics are sampled in MLflow's own thread; their failures would
            # warn every interval.
            logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
            log.warning("tracking server %s not answering (%s); the run goes on and is "
                        "recorded in %s", redact(self.uri), e, self.record.folder)
            return
        self._next_probe = None
        if away:
            log.warning("tracking server %s answers again: uploaded the %d events held back",
                        redact(self.uri), held_back)

    def failed(self, error: BaseException) -> BaseException:
        """What ended the run, as its `error` tag and the user's line should tell it: a disk
        that is full or cannot be written (under the record, the folder run from) is one
        line naming the folder (FolderUnwritable); anything else is itself."""
        self.failure = unwritable(error, [self.record.folder.parent, Path.cwd()])
        return self.failure or error

    def answers(self) -> bool:
        """Whether the server's `/health` answers: a cheap first look, not the verdict (a
        server up over a database that is down answers it too)."""
        try:
            check_reachable(self.uri, timeout=2.0)
        except UserError:
            return False
        return True

    def finish(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the server to take what is pending; whether it did.
        StoreRefused if it refused an event: the record is kept whole for sync."""
        if self.refused is not None:
            self.record.let_go()
            raise self.refused
        self.record.drop_unrecorded()  # a file the run did not finish writing
        if self.offline:
            return self._kept(not self.record.pending)
        deadline = time.monotonic() + timeout_s
        while self.record.pending:
            self._next_probe = min(self._next_probe or 0.0, time.monotonic())
            self._upload()
            if not self.record.pending or time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        return self._kept(not self.record.pending)

    def _kept(self, uploaded: bool) -> bool:
        if not uploaded and self.failure is not None:  # its line says where the run is kept
            self.failure.kept_in = self.record.folder
        return uploaded
