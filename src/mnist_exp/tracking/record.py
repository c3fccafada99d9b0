"""A run's local record: everything it sends to MLflow, written to disk first.

A tracking server can restart, crash or drop off the network mid-run; what a run records
must not depend on it being there. Each event (params, tags, a step's metrics, a dataset
input, an artifact, the model, the end) is appended to `events.jsonl` in the run's own
folder before it is uploaded, with the files it names copied beside it; `uploaded` counts
the events its store has (ledger.py). Uploading (upload.py) replays the events past that
count, so the same replay serves a live run, a server that came back, and
`python -m mnist_exp.sync`. Once its own store has everything the copies of files are
removed; the journal stays. A value a store would refuse by its nature (a param too long)
is recorded cut to fit, and kept whole as an artifact (limits.py).

A journal cut by a power loss (a half-written last line) or damaged on disk is read up to
its first unreadable line; `repair` keeps the events before it, ends the run FAILED with a
tag naming the line, and keeps the damaged file beside it as events.jsonl.damaged.

A disk that fills up (or turns read-only) stops the run in one line (FolderUnwritable); what
it refused, the run's error and end are kept in memory and uploaded from there, so the store
ends the run FAILED with the reason. The journal keeps whole lines; one the disk cut short
(or its count, ledger.py) is set aside once uploaded, as events.jsonl.uploaded: sync skips it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_exp.errors import FolderUnwritable, unwritable
from mnist_exp.tracking.ledger import Ledger, append_line, copies, same_store, write_atomic
from mnist_exp.tracking.limits import fitted

RECORD_DIR = "mlflow_record"
EVENTS = "events.jsonl"
DAMAGE_TAG = "mnist_exp.record_damaged"  # on a run whose record was damaged: "events.jsonl:<line>"
# The fields each event needs to be replayed (replay.py); an event without them is damage.
FIELDS = {"start": ("experiment_name", "run_name", "tags", "start_time"), "params": ("values",),
          "tags": ("values",), "metrics": ("values", "step", "timestamp"),
          "input": ("context", "dataset"), "artifact": ("file",), "model": ("folder", "name"),
          "alias": ("name", "alias", "version"), "untag": ("keys",),
          "end": ("status", "end_time")}


@dataclass(frozen=True)
class Damage:
    """Where a journal stops being readable: its first unreadable line (from 1), and why."""

    line: int
    reason: str

    @property
    def tag(self) -> str:
        return f"{EVENTS}:{self.line}"


class RunRecord:
    """The journal of one run (see the module's docstring). Not shared between processes:
    one run writes it, and sync reads it once the run has ended."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.own = Ledger(folder)  # what the store the run was recorded for has of it
        self.unwritable: FolderUnwritable | None = None  # the disk refused it: memory only
        self.reload()

    def reload(self) -> None:
        """Read the journal again (another process may have added to it), up to its first
        unreadable line (`damage`)."""
        self._events: list[dict[str, Any]] = []
        self._lines: list[bytes] = []  # the raw lines of those events, for `repair`
        self._damage: Damage | None = None
        try:
            data = (self.folder / EVENTS).read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            self._damage = Damage(1, f"cannot be read ({e.strerror or e})")
            return
        lines = data.split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            event, problem = _parse(line, first=not self._events)
            if event is None:
                cut = number == len(lines)  # the file ends inside this line: its write was cut
                self._damage = Damage(number, "is cut short" if cut else f"is {problem}")
                return
            self._events.append(event)
            self._lines.append(line)

    @property
    def damage(self) -> Damage | None:
        """The journal's damage: found by this read, or recorded by an earlier `repair`."""
        if self._damage is not None:
            return self._damage
        marked = next((e["damage"] for e in self._events if e["op"] == "tags" and "damage" in e),
                      None)
        return Damage(**marked) if isinstance(marked, dict) else None

    @property
    def needs_repair(self) -> bool:
        """Whether this read found damage that `repair` has not dealt with yet."""
        return self._damage is not None

    def repair(self) -> None:
        """Keep the events before the damage, end the run FAILED with the damage as a tag and
        its error, and keep the damaged journal as events.jsonl.damaged. A journal whose first
        line (the run's start) is unreadable has no run to end: it stops being a record."""
        damage = self._damage
        if damage is None:
            return
        journal = self.folder / EVENTS
        kept = b"".join(line + b"\n" for line in self._lines)
        os.replace(journal, journal.with_name(f"{EVENTS}.damaged"))
        for ledger in (self.own, *copies(self.folder)):
            ledger.set_uploaded(min(ledger.uploaded, len(self._lines)))
        if not self._events:
            return
        write_atomic(journal, kept.decode())
        last = max((e.get("timestamp") or e.get("start_time") or 0) for e in self._events)
        self.append("tags", values={
            DAMAGE_TAG: damage.tag,
            "error": f"the run's local record is damaged: line {damage.line} of {EVENTS} "
                     f"{damage.reason}; what it recorded from there on is lost"},
            damage={"line": damage.line, "reason": damage.reason})
        self.append("end", status="FAILED", end_time=last)

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
        """Record an event, fitted to what a store takes (limits.py): a value cut to fit is
        kept whole in an artifact event after it."""
        fields, whole = fitted(op, fields)
        event = self._write({"op": op, **fields})
        for artifact_file, text in whole.items():
            self.file_for(artifact_file).write_text(text)
            self._write({"op": "artifact", "file": f"files/{artifact_file}",
                         "artifact_path": os.path.dirname(artifact_file)})
        return event

    def _write(self, event: dict[str, Any]) -> dict[str, Any]:
        if self.unwritable is None:
            try:
                append_line(self.folder / EVENTS, json.dumps(event, default=str) + "\n")
            except OSError as e:
                self.unwritable = unwritable(e, [self.folder.parent])
                if self.unwritable is None:
                    raise
                self._events.append(event)
                raise self.unwritable from e
        self._events.append(event)
        return event

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self._events)

    @property
    def uploaded(self) -> int:
        """How many events, from the first, its own store has."""
        return self.own.uploaded

    def set_uploaded(self, count: int) -> None:
        self.own.set_uploaded(count)

    @property
    def pending(self) -> int:
        """How many events its own store lacks."""
        return len(self._events) - self.uploaded

    @property
    def own_uri(self) -> str | None:
        """The store the run was recorded for (with *** for a password)."""
        return self._events[0].get("tracking_uri") if self._events else None

    def ledger_for(self, uri: str | None) -> Ledger:
        """What the store at `uri` has of the record: its own store's ledger, or a copy's.
        A record from before stores were told apart belongs to any."""
        own = self.own_uri
        if uri is None or not own or same_store(uri, own):
            return self.own
        return Ledger.of_copy(self.folder, uri)

    @property
    def ended(self) -> bool:
        return any(e["op"] == "end" for e in self._events)

    @property
    def ids(self) -> dict[str, str]:
        """The run's (and its logged model's) ids in its own store, once it has them."""
        return self.own.ids

    def set_id(self, key: str, value: str) -> None:
        self.own.set_id(key, value)

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

    @property
    def keeps_copies(self) -> bool:
        """Whether the record still has its files: until its own store has everything."""
        return not (self.ended and not self.pending)

    def discard_copies(self) -> None:
        """After a complete upload to its own store: it has the files; keep the journal, or
        set it aside if the disk cut it or its count short (see the module's docstring)."""
        for name in ("files", "model", "checkpoints"):
            shutil.rmtree(self.folder / name, ignore_errors=True)
        if (not self.own.save() or self.unwritable) and (self.folder / EVENTS).exists():
            os.replace(self.folder / EVENTS, self.folder / f"{EVENTS}.uploaded")

    def drop_unrecorded(self) -> None:
        """Remove the files no event names: what a full disk cut short (half a figure, a
        model half saved) is no part of the record."""
        named = {Path(e.get("file") or e["folder"]) for e in self._events
                 if e["op"] in ("artifact", "model")}
        for top in ("files", "model", "checkpoints"):
            for path in (self.folder / top).rglob("*"):
                inside = path.relative_to(self.folder)
                if path.is_file() and not named & {inside, *inside.parents}:
                    path.unlink()


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


def _parse(line: bytes, first: bool) -> tuple[dict[str, Any] | None, str]:
    """A journal line's event, or None and why it is not one replay.py can use."""
    try:
        event = json.loads(line)
    except ValueError:  # also UnicodeDecodeError: binary garbage
        return None, "not JSON"
    if not isinstance(event, dict) or event.get("op") not in FIELDS:
        return None, "not an event"
    op = event["op"]
    missing = [name for name in FIELDS[op] if name not in event]
    if missing:
        return None, f"a {op} event without {', '.join(missing)}"
    if any(not isinstance(event.get(name) or {}, dict) for name in ("values", "tags", "dataset")):
        return None, f"a {op} event of the wrong shape"
    if first != (op == "start"):
        return None, "not the run's start" if first else "a second start"
    return event, ""
