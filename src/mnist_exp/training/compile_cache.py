"""XLA's persistent compilation cache: a shape compiled once is loaded, not compiled
again, by every later run and sweep job on the machine (trainer.compile_cache).

TensorFlow keys each entry by the compiled function's name, its argument shapes and a
fingerprint of its XLA program, so a changed model, batch size or optimizer never loads
a stale entry; it writes each entry to a temporary file and renames it, so runs that
share the folder never read a half-written one. Loading an entry costs a fraction of
compiling it (docs/performance.md has the measurements).

TensorFlow reads TF_XLA_FLAGS once, at a process's first XLA compilation: the first run
in a process picks the folder for all of its runs. Other XLA flags there are kept.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

_FLAG = "--tf_xla_persistent_cache_directory"
_TYPES = "--tf_xla_persistent_cache_device_types"
_DEVICES = "CPU,XLA_CPU,GPU,XLA_GPU"
MAX_BYTES = 512 * 2**20  # some 3,000 entries of ~0.2 MB: years of sweeps over a few models
_STALE_TMP_S = 3600  # a temporary file this old belongs to a writer that died


def folder_for(enabled: bool, folder: str | None) -> Path | None:
    """trainer.compile_cache(_dir) as a folder; None when off."""
    if not enabled:
        return None
    if folder:
        return Path(folder).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-exp" / "xla"


def use(folder: Path | None) -> Path | None:
    """Point XLA at `folder` (made if missing, trimmed to MAX_BYTES), or at none, in place
    of any folder TF_XLA_FLAGS named; return the folder in use. One that cannot be
    written is a warning, not an error: a cache must never stop a run."""
    flags = re.sub(rf"{_FLAG}=\S*|{_TYPES}=\S*", "", os.environ.get("TF_XLA_FLAGS", ""))
    os.environ["TF_XLA_FLAGS"] = " ".join(flags.split())
    if folder is None:
        return None
    folder = folder.absolute()
    try:
        if any(c.isspace() for c in str(folder)):  # TF_XLA_FLAGS splits at spaces
            raise OSError("its path holds a space")
        folder.mkdir(parents=True, exist_ok=True)
        _trim(folder)
    except OSError as e:
        log.warning("compilation cache off: cannot use %s (%s)", folder, e.strerror or e)
        return None
    os.environ["TF_XLA_FLAGS"] = " ".join([*flags.split(), f"{_FLAG}={folder}",
                                           f"{_TYPES}={_DEVICES}"])
    return folder


def in_use() -> Path | None:
    """The folder XLA was pointed at (by `use`, or TF_XLA_FLAGS), if any."""
    found = re.search(rf"{_FLAG}=(\S+)", os.environ.get("TF_XLA_FLAGS", ""))
    return Path(found.group(1)) if found else None


def clear(folder: Path) -> None:
    """Empty the cache (a damaged entry makes XLA's compiled step fail; see fit.py)."""
    shutil.rmtree(folder, ignore_errors=True)


def _trim(folder: Path) -> None:
    """Delete the oldest entries beyond MAX_BYTES, and temporary files of dead writers."""
    now = time.time()
    entries = []
    for path in folder.iterdir():
        try:
            stat = path.stat()
        except FileNotFoundError:  # another run's trim took it
            continue
        if path.name.endswith(".tmp"):
            if now - stat.st_mtime > _STALE_TMP_S:
                path.unlink(missing_ok=True)
        else:
            entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= MAX_BYTES:
            break
        path.unlink(missing_ok=True)
        total -= size
