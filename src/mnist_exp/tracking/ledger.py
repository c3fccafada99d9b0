"""What one tracking store holds of a run's record: how many of its events, from the first,
and the ids it gave the run and its models.

A record belongs to the store its run was recorded for (its start's `tracking_uri`): that
store's ledger is `uploaded` and `ids.json` in the record's folder. A sync to another store
copies the run there as a new run, with a ledger of its own under stores/<key>/, and the
record keeps its copies of files until its own store has everything (record.py). Light: no
MLflow here.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from mnist_exp.errors import DataError, redact

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
        if not (self.folder / "ids.json").is_file():
            return 0
        try:
            return int((self.folder / "uploaded").read_text())
        except (OSError, ValueError):  # none yet, or damaged
            return 0

    def set_uploaded(self, count: int) -> None:
        self._write("uploaded", str(count))

    @property
    def ids(self) -> dict[str, str]:
        """The run's (and its logged models') ids in the store, once it has them."""
        path = self.folder / "ids.json"
        if not path.is_file():
            return {}
        try:
            ids = json.loads(path.read_bytes())
        except ValueError:
            ids = None
        if not isinstance(ids, dict):
            raise DataError(f"{path} is damaged: the run's id on the server is lost; upload "
                            f"the record to a new run by removing {path.name}")
        return ids

    def set_id(self, key: str, value: str) -> None:
        self._write("ids.json", json.dumps(self.ids | {key: value}))

    def reset(self) -> None:
        """Forget what the store had: it lost the run, which is uploaded again, anew."""
        for name in ("ids.json", "uploaded"):
            (self.folder / name).unlink(missing_ok=True)

    def _write(self, name: str, text: str) -> None:
        if not self.own:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "uri").write_text(self.copy_of or "")
        write_atomic(self.folder / name, text)


def copies(record_folder: Path) -> list[Ledger]:
    """The ledgers of the other stores a record was copied to."""
    folder = record_folder / STORES
    if not folder.is_dir():
        return []
    return [Ledger(p, (p / "uri").read_text() if (p / "uri").is_file() else p.name)
            for p in sorted(folder.iterdir()) if p.is_dir()]


def write_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as f:
        f.write(text)
    os.replace(f.name, path)
