"""Whether a sweep's process still lives: the lock it holds on <sweep dir>/sweep.lock.

How long a run has been RUNNING cannot tell a dead sweep from a long one, nor from one on
another machine; so the launching process holds an exclusive flock on the sweep's lock
for its whole life, and the kernel lets it go when the process dies, whatever killed it
(on NFSv4 the server frees the locks of a machine that went down once its lease lapses).
liveness.py ends what a dead one left open.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from mnist_exp.errors import UserError

LOCK = "sweep.lock"
_HELD: list[IO[str]] = []  # this process's sweep locks, open for as long as it lives
# Mount options under which a lock is seen on this machine only (NFS, Lustre).
_LOCAL_LOCKS = {"nolock", "local_lock=all", "local_lock=flock", "localflock"}

log = logging.getLogger(__name__)


def hold_sweep(sweep_dir: Path) -> None:
    """Take the sweep's lock for the rest of this process's life (it says who holds it);
    UserError if a live process holds it already: that sweep is running now."""
    lock = (sweep_dir / LOCK).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise UserError(f"{sweep_dir}: its sweep is running now ({holder}); wait for it to "
                        "end, or stop it, before resuming it") from None
    except OSError as e:  # a file system without locks: left alone by a later resume or sync
        lock.close()
        log.warning("%s: no lock on this file system (%s): a later resume or sync cannot "
                    "tell whether this sweep still runs, and leaves its runs as they are "
                    "(python -m mnist_exp.sync --dead-sweeps ends them once it has ended)",
                    sweep_dir, e.strerror or e)
        return
    lock.truncate(0)
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    lock.flush()
    _HELD.append(lock)


@contextmanager
def if_dead(sweep_dir: Path) -> Iterator[bool | None]:
    """Whether the process that ran the sweep has died (its lock is free): True, False
    while it lives, None when it cannot be told (no lock file here, no locks on this file
    system, or a lock of another machine's on a file system whose locks that machine would
    not have seen). The lock is held meanwhile, so a sync and a resume never both end its
    runs."""
    try:
        lock = (sweep_dir / LOCK).open("r")
    except OSError:
        yield None
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: it runs
            yield False
            return
        except OSError:  # no locks on this file system
            yield None
            return
        host = lock.read().strip().rpartition(" on ")[2]
        yield True if host == socket.gethostname() or locks_shared(sweep_dir) else None


def locks_shared(path: Path, mounts: str | None = None) -> bool:
    """Whether a lock taken on `path` here is seen by other machines: not on a network file
    system mounted with local locks only (NFS nolock or local_lock, Lustre localflock), as
    /proc/mounts (or `mounts`, its text) says of the mount `path` is on."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:  # not Linux: its locks are taken as they come
            return True
    target, options = str(path.resolve()), ""
    best = ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, options = point, fields[3]
    return not _LOCAL_LOCKS & set(options.split(","))
