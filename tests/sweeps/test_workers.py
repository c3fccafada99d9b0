"""A joblib worker outlives the bounded memory a sweep job keeps for the next (workers.py):
loky itself, with a real worker process, does or does not replace it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from joblib.externals.loky import ProcessPoolExecutor

from helpers import child_env
from mnist_exp.sweeps import workers

KEPT: list[bytes] = []  # in the worker: what a job keeps for the next (datasets, models)


def _job(keep_bytes: int, raise_limit: bool) -> int:
    if raise_limit:
        workers.keep_worker_between_jobs(workers=1)  # this machine's share is >= 1 GB
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
    from joblib.externals.loky import process_executor

    before = process_executor._MAX_MEMORY_LEAK_SIZE
    workers.keep_worker_between_jobs(workers=1)  # the test process is no loky worker
    assert before == process_executor._MAX_MEMORY_LEAK_SIZE


@pytest.mark.parametrize(("total_gib", "n", "limit_gib"), [
    (24, 2, 4),     # this machine: the cap
    (16, 8, 1),     # a laptop's workers share half its memory
    (2, 16, 0.28),  # never below loky's own limit
])
def test_the_limit_leaves_the_machine_room_for_every_worker(total_gib, n, limit_gib):
    assert workers.leak_limit(int(total_gib * 2**30), n) == pytest.approx(limit_gib * 2**30,
                                                                          rel=0.03)


def test_n_jobs_as_joblib_counts_them():
    assert [workers.concurrent_jobs(n, cores=8) for n in (None, 1, 3, -1, -2, -20)] == [
        1, 1, 3, 8, 7, 1]


ORPHANED = """
import os, signal, time
from joblib import Parallel, delayed

def job():
    from mnist_exp.sweeps.workers import keep_worker_between_jobs
    keep_worker_between_jobs(workers=2)
    return os.getpid()

pids = Parallel(n_jobs=2)(delayed(job)() for _ in range(2))
print(" ".join(map(str, sorted(set(pids)))), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the sweep's process killed outright
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; its new parent reaps it when it will


def test_a_kept_worker_ends_once_its_sweeps_process_is_killed_outright(tmp_path):
    """Else it idles on for good, holding what it keeps (GBs). Output goes to a file: a
    worker that got no job idles on, and would hold a pipe."""
    out = tmp_path / "out"
    with out.open("w") as log:
        sweep = subprocess.Popen([sys.executable, "-c", ORPHANED], env=child_env(),
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            assert sweep.wait(timeout=120) == -signal.SIGKILL, out.read_text()[-2000:]
            pids = [int(pid) for pid in out.read_text().split()]
            assert pids and os.getpid() not in pids
            deadline = time.monotonic() + 30  # the thread polls once a second
            while any(map(_alive, pids)) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not any(map(_alive, pids)), [p for p in pids if _alive(p)]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sweep.pid, signal.SIGKILL)  # a worker that got no job
