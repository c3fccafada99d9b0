"""A run's local record: everything it sends to MLflow, written to disk first.

A tracking server can restart, crash or drop off the network mid-run; what a run records
must not depend on it being there. Each event (params, tags, a step's metrics, a dataset
input, an artifact, the model, the end) is appended to `events.jsonl` in the run's own
folder before it is uploaded, with the files it names copied beside it; `uploaded` counts
the events the server has. Uploading (upload.py) replays the events past that count, so
the same replay serves a live run, a server that came back, and `python -m mnist_exp.sync`.
Once everything is uploaded the copies of files are removed; the journal stays.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

RECORD_DIR = "mlflow_record"
EVENTS = "events.jsonl"


class RunRecord:
    """The journal of one run (see the module's docstring). Not shared between processes:
    one run writes it, and sync reads it once the run has ended."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.reload()

    def reload(self) -> None:
        """Read the journal again (another process may have added to it)."""
        self._events: list[dict[str, Any]] = []
        if (self.folder / EVENTS).is_file():
            with (self.folder / EVENTS).open() as f:
                self._events = [json.loads(line) for line in f if line.strip()]

    @classmethod
    def create(cls, folder: Path) -> RunRecord:
        """A new record in `folder`, or, if one is there (a resumed run's), its successor:
        a new numbered sibling, so each record is one run's."""
        candidate, n = folder, 0
        while (candidate / EVENTS).exists():
            n += 1
            candidate = folder.with_name(f"{folder.name}-{n}")
        candidate.mkdir(parents=True, exist_ok=True)
        return cls(candidate)

    def append(self, op: str, **fields: Any) -> dict[str, Any]:
        event = {"op": op, **fields}
        with (self.folder / EVENTS).open("a") as f:
            f.write(json.dumps(event, default=str) + "\n")
        self._events.append(event)
        return event

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self._events)

    @property
    def uploaded(self) -> int:
        """How many events, from the first, the tracking server has."""
        path = self.folder / "uploaded"
        return int(path.read_text()) if path.is_file() else 0

    def set_uploaded(self, count: int) -> None:
        _write_atomic(self.folder / "uploaded", str(count))

    @property
    def pending(self) -> int:
        return len(self._events) - self.uploaded

    @property
    def ended(self) -> bool:
        return any(e["op"] == "end" for e in self._events)

    @property
    def ids(self) -> dict[str, str]:
        """The run's (and its logged model's) ids on the server, once it has them."""
        path = self.folder / "ids.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def set_id(self, key: str, value: str) -> None:
        _write_atomic(self.folder / "ids.json", json.dumps(self.ids | {key: value}))

    def file_for(self, artifact_file: str) -> Path:
        """Where to write an artifact (e.g. "plots/curves.png") before recording it."""
        path = self.folder / "files" / artifact_file
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def keep(self, source: Path, artifact_path: str | None = None) -> str:
        """Copy a file, or a folder's contents, to `artifact_path` in the record; return
        the copy's path inside the record."""
        target = self.folder / "files" / (artifact_path or "")
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            target = target / source.name
            shutil.copy2(source, target)
        return str(target.relative_to(self.folder))

    def hold(self) -> None:
        """Take the record for this process (its run, while it lives, or a sync), or
        BlockingIOError if another has it."""
        self._lock = (self.folder / "lock").open("w")
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def let_go(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()
            self._lock = None

    def discard_copies(self) -> None:
        """After a complete upload: the server has the files; keep only the journal."""
        for name in ("files", "model", "checkpoints"):
            shutil.rmtree(self.folder / name, ignore_errors=True)


def records_folder(launch_dir: Path) -> Path:
    """A new folder for a record made outside Hydra (a notebook, a test): under
    outputs/records/ in the launch folder, where `python -m mnist_exp.sync` looks."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return launch_dir / "outputs" / "records" / f"{stamp}-{os.getpid()}"


def find_records(roots: list[Path]) -> list[RunRecord]:
    """The records under each root (a record folder itself, or any folder above records),
    in the order their runs started."""
    found: dict[Path, RunRecord] = {}
    for root in roots:
        journals = [root / EVENTS] if (root / EVENTS).is_file() else root.rglob(EVENTS)
        for journal in journals:
            found.setdefault(journal.parent.resolve(), RunRecord(journal.parent))
    return sorted(found.values(), key=lambda r: (r.events[0].get("start_time", 0)
                                                 if r.events else 0, str(r.folder)))


def _write_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as f:
        f.write(text)
    os.replace(f.name, path)
