"""A joblib worker outlives the bounded memory a sweep job keeps for the next (workers.py):
loky itself, with a real worker process, does or does not replace it."""

from __future__ import annotations

import os
import time

import pytest
from joblib.externals.loky import ProcessPoolExecutor

from mnist_exp.sweeps import workers

KEPT: list[bytes] = []  # in the worker: what a job keeps for the next (datasets, models)


def _job(keep_bytes: int, raise_limit: bool) -> int:
    if raise_limit:
        workers.keep_worker_between_jobs()
    KEPT.append(b"\x01" * keep_bytes)  # real pages, resident
    time.sleep(1.1)  # loky checks memory at most once a second
    return os.getpid()


@pytest.mark.filterwarnings("ignore:A worker stopped")  # loky's, on replacing it
@pytest.mark.parametrize("raise_limit", [True, False], ids=["kept", "loky's default"])
def test_a_worker_that_keeps_500_mb_between_jobs_is_kept(raise_limit):
    with ProcessPoolExecutor(max_workers=1) as pool:
        pids = [pool.submit(_job, size, raise_limit).result(timeout=60)
                for size in (0, 500 << 20, 0, 0)]
    assert (len(set(pids)) == 1) == raise_limit, pids  # loky's own 300 MB limit replaces it


def test_elsewhere_it_changes_nothing():
    workers.keep_worker_between_jobs()  # the test process is no loky worker
    from joblib.externals.loky import process_executor

    assert process_executor._MAX_MEMORY_LEAK_SIZE in (300_000_000, workers.LEAK_LIMIT_BYTES)
