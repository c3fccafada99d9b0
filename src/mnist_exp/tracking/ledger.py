"""What one tracking store holds of a run's record: how many of its events, from the first,
and the ids it gave the run and its models.

A record belongs to the store its run was recorded for (its start's `tracking_uri`): that
store's ledger is `uploaded` and `ids.json` in the record's folder. A sync to another store
copies the run there as a new run, with a ledger of its own under stores/<key>/, and the
record keeps its copies of files until its own store has everything (record.py). A count
or an id the disk cannot take (full, read-only) is kept in memory for the rest of the
process: replaying is safe to repeat, so a count on disk that lags only costs a later sync a
few events sent again. Light: no MLflow here.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from mnist_exp.errors import DataError, disk_error, redact

STORES = "stores"


def same_store(a: str, b: str) -> bool:
    """Whether two tracking URIs name one store: equal but for a password (a record keeps
    its URI with *** in its place) and a trailing slash."""
    return _plain(a) == _plain(b)


def _plain(uri: str) -> str:
    return redact(uri).rstrip("/")


class Ledger:
    """One store's share of a record (see the module's docstring); `copy_of` is the other
    store's URI, shown with *** for a password, or None for the record's own store."""

    def __init__(self, folder: Path, copy_of: str | None = None) -> None:
        self.folder = folder
        self.copy_of = copy_of
        self._unsaved: dict[str, str] = {}  # what the disk would not take, by file name

    @classmethod
    def of_copy(cls, record_folder: Path, uri: str) -> Ledger:
        key = hashlib.sha1(_plain(uri).encode()).hexdigest()[:12]
        return cls(record_folder / STORES / key, _plain(uri))

    @property
    def own(self) -> bool:
        return self.copy_of is None

    @property
    def uploaded(self) -> int:
        """How many events, from the first, the store has: none while it has no run of
        ours (ids.json removed uploads the record anew; replaying is safe to repeat)."""
        if self._read("ids.json") is None:
            return 0
        try:
            return int(self._read("uploaded") or "")
        except ValueError:  # none yet, or damaged
            return 0

    def set_uploaded(self, count: int) -> None:
        self._write("uploaded", str(count))

    @property
    def ids(self) -> dict[str, str]:
        """The run's (and its logged models') ids in the store, once it has them."""
        path = self.folder / "ids.json"
        text = self._read(path.name)
        if text is None:
            return {}
        try:
            ids = json.loads(text)
        except ValueError:
            ids = None
        if not isinstance(ids, dict):
            raise DataError(f"{path} is damaged: the run's id on the server is lost; upload "
                            f"the record to a new run by removing {path.name}")
        return ids

    def set_id(self, key: str, value: str) -> None:
        self.set_ids({key: value})

    def set_ids(self, ids: dict[str, str]) -> None:
        """Add `ids` in one write: a run's experiment and run ids appear together, so a
        process killed between two writes cannot leave an ids.json that names no run."""
        self._write("ids.json", json.dumps(self.ids | ids))

    def reset(self) -> None:
        """Forget what the store had: it lost the run, which is uploaded again, anew."""
        for name in ("ids.json", "uploaded"):
            (self.folder / name).unlink(missing_ok=True)
            self._unsaved.pop(name, None)

    def save(self) -> bool:
        """Write what the disk would not take before (it may have room now); whether all of
        it is on disk."""
        for name, text in list(self._unsaved.items()):
            self._write(name, text)
        return not self._unsaved

    def _read(self, name: str) -> str | None:
        if name in self._unsaved:
            return self._unsaved[name]
        try:
            return (self.folder / name).read_text()
        except OSError:  # none yet, or unreadable
            return None

    def _write(self, name: str, text: str) -> None:
        try:
            if not self.own:
                self.folder.mkdir(parents=True, exist_ok=True)
                write_atomic(self.folder / "uri", self.copy_of or "")
            write_atomic(self.folder / name, text)
        except OSError as e:
            if disk_error(e) is None:
                raise
            self._unsaved[name] = text
        else:
            self._unsaved.pop(name, None)


def copies(record_folder: Path) -> list[Ledger]:
    """The ledgers of the other stores a record was copied to."""
    folder = record_folder / STORES
    if not folder.is_dir():
        return []
    return [Ledger(p, (p / "uri").read_text() if (p / "uri").is_file() else p.name)
            for p in sorted(folder.iterdir()) if p.is_dir()]


def write_atomic(path: Path, text: str) -> None:
    """`path` holds `text`, or what it held: a write the disk refuses leaves no temporary
    file behind."""
    fd, name = tempfile.mkstemp(dir=path.parent)
    try:
        with open(fd, "w") as f:
            f.write(text)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def append_line(path: Path, line: str) -> None:
    """Append `line` to `path` whole or not at all: a write the disk cuts short is taken
    back, so a journal never ends in half a line because its disk filled up."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        data = memoryview(line.encode())
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as e:
            os.ftruncate(fd, size)
            e.filename = e.filename or str(path)  # os.write's error names no file
            raise
    finally:
        os.close(fd)
