"""A sweep job's process, when its launcher keeps it for later jobs (joblib's loky workers).

Such a process keeps, by design and bounded, what the next job can reuse: its last dataset
and up to four traced models (training/kept_models.py), with XLA's compiled programs and
TensorFlow's allocator pool behind them. Loky takes any growth of 300 MB since a worker's
first task for a leak and replaces the worker, and the job after that pays a fresh
process: TensorFlow's imports, the data, every trace and compilation. In a 100-trial
search on 2 workers that was a new process every minute or so, a quarter of the workers'
time (docs/performance.md, "Parallel search").
"""

from __future__ import annotations

import sys

# Growth loky still takes for a leak: well above what the kept objects above add up to.
LEAK_LIMIT_BYTES = 4 << 30


def keep_worker_between_jobs() -> None:
    """Raise loky's leak limit in this process, if it is a loky worker (its loop reads the
    limit after every task); elsewhere do nothing."""
    executor = sys.modules.get("joblib.externals.loky.process_executor")
    limit = getattr(executor, "_MAX_MEMORY_LEAK_SIZE", None)
    if isinstance(limit, int) and limit < LEAK_LIMIT_BYTES:
        executor._MAX_MEMORY_LEAK_SIZE = LEAK_LIMIT_BYTES
