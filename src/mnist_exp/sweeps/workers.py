"""A sweep job's process, when its launcher keeps it for later jobs (joblib's loky workers).

Such a process keeps, by design and bounded, what the next job can reuse: its last dataset
and up to four traced models (training/kept_models.py), with TensorFlow's allocator pool
behind them. Loky takes any growth of 300 MB since a worker's first task for a leak and
replaces the worker, and the job after that pays a fresh process: TensorFlow's imports,
the data, every trace and compilation. In a 100-trial search on 2 workers that was a new
process every minute or so, a quarter of the workers' time (docs/performance.md,
"Parallel search").

One growth is a true leak, and TensorFlow's: each model a process traces (more so under
XLA) leaves memory that is not freed when the model is gone. So the limit stays: a worker
that has traced enough models is still replaced, at a size the machine can hold for
every worker at once.

A kept worker also outlives its sweep's process if that is killed outright (kill -9, the
OOM killer): loky's workers then finish their job and idle on for good, holding their
memory (loky's idle timeout never ends them). So a worker ends itself, as its sweep would
have ended it, once its sweep's process is gone; what its run had open is ended as a
dead sweep's is (sweeps/leftovers.py).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time

CAP_BYTES = 4 << 30  # well above what the kept objects above add up to
LOKY_DEFAULT_BYTES = 300_000_000
_WATCHED = False  # this process ends with its parent (_end_with_parent)


def leak_limit(total_bytes: int, workers: int) -> int:
    """Growth a worker may keep: half the machine's memory shared by the workers, between
    loky's own limit and CAP_BYTES."""
    share = total_bytes // (2 * max(1, workers))
    return max(LOKY_DEFAULT_BYTES, min(CAP_BYTES, share))


def keep_worker_between_jobs(workers: int) -> None:
    """Raise loky's leak limit in this process, if it is a loky worker (its loop reads the
    limit after every task), and have it end with its sweep's process; elsewhere do
    nothing. `workers`: the jobs run at once."""
    executor = sys.modules.get("joblib.externals.loky.process_executor")
    worker = type(multiprocessing.current_process()).__name__ == "LokyProcess"
    if worker and isinstance(getattr(executor, "_MAX_MEMORY_LEAK_SIZE", None), int):
        executor._MAX_MEMORY_LEAK_SIZE = leak_limit(_memory_bytes(), workers)
    if worker:
        _end_with_parent()


def _end_with_parent(poll_s: float = 1.0) -> None:
    """Once per process: a thread that ends it, outright, when its parent is gone (it is
    then some other process's child)."""
    global _WATCHED
    if _WATCHED:
        return
    _WATCHED = True
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-sweep", daemon=True).start()


def concurrent_jobs(n_jobs: int | None, cores: int | None = None) -> int:
    """joblib's n_jobs as a count (negative: all cores but -n_jobs - 1)."""
    if not n_jobs:
        return 1
    return n_jobs if n_jobs > 0 else max(1, (cores or os.cpu_count() or 1) + 1 + n_jobs)


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
